"""Where ``ckpt_path`` comes from, settled before anything of the run is built.

* A **remote** ``ckpt_path`` (any ``scheme://``: ``http://``, ``https://``, ``s3://``,
  ``file://``) is refused by default. Lightning loads ``http*`` paths with
  ``torch.hub.load_state_dict_from_url(weights_only=False)`` when it is not told otherwise
  (``lightning/fabric/utilities/cloud_io.py`` ``_load``), i.e. it unpickles whatever the
  server sends, and the resume checks (`asgml.run.resume`) only read local files.
  With ``allow_remote_ckpt=true`` the file is downloaded to a local temporary file
  (``urllib`` for ``http``/``https``/``file``, ``fsspec`` for other schemes), loaded with
  ``torch.load(weights_only=True)`` (a pickle that would run code fails there), and
  ``ckpt_path`` then names the local copy, so every local check applies to it.
* A **local** checkpoint file (resume, ``train=false``) is read with ``weights_only=True``
  and its stored config (``asgml_config``) screened as ``asgml.eval`` screens it
  (`asgml.run.trust.screen_stored_config`: no interpolation; ``_target_`` classes
  exactly allowed, where this run's own targets and ``allow_targets`` count as allowed:
  the composed config is the user's own code).
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from asgml.run.moved import upgrade_targets
from asgml.run.trust import check_no_interpolations, config_targets, screen_stored_config

# stored-config sections a resumed or evaluation-only run never instantiates
NOT_BUILT = ("callbacks", "logger")

log = logging.getLogger("asgml")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class RemoteCheckpointError(ValueError):
    """A remote ``ckpt_path`` without ``allow_remote_ckpt=true``, or one that does not load."""


def remote_scheme(path: object) -> str | None:
    """The URL scheme of ``path`` (``http``, ``s3``, ``file``...), ``None`` for a local path."""
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else None


def download(url: str, dest: Path) -> Path:
    """Copy ``url`` to ``dest``: ``urllib`` for ``http``/``https``/``file``, else ``fsspec``."""
    scheme = remote_scheme(url)
    if scheme in ("http", "https", "file"):
        with urllib.request.urlopen(url, timeout=60) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    else:
        import fsspec  # a Lightning dependency; a scheme needs its own package (s3fs, gcsfs)

        with fsspec.open(url, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest


def fetch_remote(url: str) -> Path:
    """Download ``url`` to a temporary file (removed at exit) and check that it loads with
    ``weights_only=True``; the local path."""
    folder = Path(tempfile.mkdtemp(prefix="asgml-ckpt-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    name = Path(urllib.parse.urlparse(url).path).name or "remote.ckpt"
    local = folder / name
    try:
        download(url, local)
    except Exception as e:
        raise RemoteCheckpointError(f"ckpt_path={url}: download failed: {e!r}") from e
    try:
        torch.load(local, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise RemoteCheckpointError(
            f"ckpt_path={url}: does not load with torch.load(weights_only=True) ({e}); "
            "checkpoints written by asgml.train do, so this file is refused"
        ) from e
    log.info("ckpt_path=%s downloaded to %s (allow_remote_ckpt=true)", url, local)
    return local


def settle_ckpt_path(cfg: DictConfig) -> None:
    """Refuse or fetch a remote ``cfg.ckpt_path`` (the local copy replaces it) and screen the
    stored config of a local checkpoint file; see the module docstring.

    Raises:
        RemoteCheckpointError: a remote path without ``allow_remote_ckpt=true``.
        asgml.run.trust.UntrustedConfigError: the checkpoint's stored config does not pass.
    """
    path = cfg.get("ckpt_path")
    if not path:
        return
    scheme = remote_scheme(path)
    if scheme is not None:
        if not cfg.get("allow_remote_ckpt", False):
            raise RemoteCheckpointError(
                f"ckpt_path={path} is a remote ({scheme}://) checkpoint: refused by default, "
                "since a checkpoint from elsewhere is loaded as a pickle. Download it and pass "
                "the local file, or pass allow_remote_ckpt=true to download it and load it "
                "with torch.load(weights_only=True)"
            )
        local = fetch_remote(str(path))
        with open_dict(cfg):
            cfg.ckpt_path = str(local)
        path = local
    path = Path(str(path))
    if not path.is_file():  # Lightning's "last"/"hpc" keys, or a missing file: its error
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    stored = ckpt.get("asgml_config") if isinstance(ckpt, dict) else None
    if stored:
        upgrade_targets(stored)
        allow = [*config_targets(cfg), *(cfg.get("allow_targets") or [])]
        source = f"the config stored in ckpt_path={path}"
        # The run builds its Lightning callbacks and loggers from its own config; the stored
        # ones are never instantiated on this path, so only their interpolations are refused
        # (a resume without the killed run's own test or user callback is not refused).
        check_no_interpolations(stored, source)
        built = {k: v for k, v in stored.items() if k not in NOT_BUILT}
        screen_stored_config(built, allow, source)
