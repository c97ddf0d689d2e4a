"""Where ``ckpt_path`` comes from (:mod:`asgml.run.ckpt_source`): a remote checkpoint is
refused unless ``allow_remote_ckpt=true`` (then downloaded and loaded with
``weights_only=True``), and the stored config of a local one is screened on the resume and
``train=false`` paths as ``asgml.eval`` screens it."""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from asgml.run.ckpt_source import RemoteCheckpointError, remote_scheme
from asgml.run.trust import StoredInterpolationError, UntrustedTargetError
from asgml.train import run
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (3 steps); its ``last.ckpt``."""
    out = tmp_path_factory.mktemp("first")
    run(compose_cfg(["trainer.max_epochs=1", "test=false"], output_dir=out))
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www``: ``(folder, base URL)``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_schemes() -> None:
    assert remote_scheme("http://h/x.ckpt") == "http"
    assert remote_scheme("S3://bucket/x.ckpt") == "s3"
    assert remote_scheme("file:///tmp/x.ckpt") == "file"
    assert remote_scheme("/tmp/x.ckpt") is None and remote_scheme("last") is None
    assert remote_scheme("runs/a:b/x.ckpt") is None


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x.ckpt", "https://example.org/x.ckpt", "s3://b/x.ckpt"]
)
def test_remote_ckpt_path_is_refused_by_default(tmp_path: Path, url: str) -> None:
    out = tmp_path / "run"
    for train in ("true", "false"):
        cfg = compose_cfg([f"ckpt_path={url}", f"train={train}"], output_dir=out)
        with pytest.raises(RemoteCheckpointError, match="allow_remote_ckpt=true"):
            run(cfg)
    assert not out.exists()  # refused before the run wrote anything


def test_opt_in_downloads_and_resumes_exactly(
    first: Path, server: tuple[Path, str], tmp_path: Path
) -> None:
    www, base = server
    (www / "last.ckpt").write_bytes(first.read_bytes())
    common = ["trainer.max_epochs=2", "test=false"]
    run(compose_cfg(common, output_dir=tmp_path / "full"))
    cfg = compose_cfg(
        [*common, f"ckpt_path={base}/last.ckpt", "allow_remote_ckpt=true"],
        output_dir=tmp_path / "resumed",
    )
    run(cfg)
    a, b = (
        torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)
        for d in ("full", "resumed")
    )
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_opt_in_refuses_a_pickle_that_runs_code(
    server: tuple[Path, str], tmp_path: Path, scheme: str
) -> None:
    www, base = server
    marker = tmp_path / "pwned"
    (www / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    url = f"{base}/evil.ckpt" if scheme == "http" else (www / "evil.ckpt").as_uri()
    cfg = compose_cfg([f"ckpt_path={url}", "allow_remote_ckpt=true"], output_dir=tmp_path / "r")
    with pytest.raises(RemoteCheckpointError, match="weights_only=True"):
        run(cfg)
    assert not marker.exists()


@pytest.mark.parametrize("train", ["true", "false"])
@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        (
            "model.encoders.audio.extra",
            {"_target_": "asgml.run.evaluate.logging.FileHandler", "filename": "VICTIM"},
            UntrustedTargetError,
        ),
        ("method.extra", "${oc.create:{_target_: numpy.save, file: VICTIM, arr: [0]}}", None),
    ],
)
def test_a_local_checkpoint_with_a_crafted_config_is_refused(
    first: Path, tmp_path: Path, train: str, key: str, value: Any, error: type | None
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt = torch.load(first, weights_only=True)
    node = ckpt["asgml_config"]
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    fill = str(victim)
    node[leaf] = (
        {k: (fill if v == "VICTIM" else v) for k, v in value.items()}
        if isinstance(value, dict)
        else value.replace("VICTIM", fill)
    )
    crafted = tmp_path / "crafted.ckpt"
    torch.save(ckpt, crafted)
    cfg = compose_cfg([f"ckpt_path={crafted}", f"train={train}"], output_dir=tmp_path / "run")
    with pytest.raises(error or StoredInterpolationError, match=key.replace(".", r"\.")):
        run(cfg)
    assert victim.read_text() == "precious" and not (tmp_path / "run").exists()
