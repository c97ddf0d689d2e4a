"""Foundation: configs, the module's shapes and unimodal logits, training end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from asgml.core.module import MultimodalModule
from asgml.models.encoders import MLPEncoder, ResNet18Encoder, masked_mean
from asgml.models.fusion import ConcatFusion, SumFusion
from asgml.run.config import method_callback_configs
from asgml.train import run
from tests.conftest import compose_cfg
from tests.helpers import tiny_mlp_module

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_composes_and_instantiates(method, tmp_path):
    cfg = compose_cfg([f"method={method}"], output_dir=tmp_path)
    assert cfg.method.name == method
    for key, c in method_callback_configs(cfg.method):
        if method in NEEDS_CHECKPOINT:  # refused without its checkpoint, naming the key
            with pytest.raises(Exception, match=NEEDS_CHECKPOINT[method]):
                instantiate(c)
            continue
        cb = instantiate(c)
        assert cb is not None, key


# methods that start from trained checkpoints given by path
NEEDS_CHECKPOINT = {
    "umt": "method.umt.teachers",
    "linear_probe": "method.linear_probe.checkpoint",
}


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks", "model"])
def test_other_groups_compose(group, tmp_path):
    for p in sorted((CONF / group).glob("*.yaml")):
        cfg = compose_cfg([f"{group}={p.stem}"], output_dir=tmp_path)
        assert cfg[group] is not None


def test_default_model_and_trainer_instantiate(tmp_path):
    cfg = compose_cfg([], output_dir=tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model, MultimodalModule)
    assert model.modalities == ["audio", "visual"]
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == 1


@pytest.mark.parametrize("n", [2, 3])
def test_concat_unimodal_logits_are_weight_blocks(n):
    dims = {f"m{i}": 5 + i for i in range(n)}
    fusion = ConcatFusion(dims, num_classes=4)
    torch.manual_seed(0)
    feats = {m: torch.randn(3, d) for m, d in dims.items()}
    uni = fusion.unimodal_logits(feats)
    w, b = fusion.fc_out.weight, fusion.fc_out.bias
    start = 0
    for m, d in dims.items():
        expected = feats[m] @ w[:, start : start + d].T + b / n
        torch.testing.assert_close(uni[m], expected)
        start += d
    # the fused logits are exactly the sum of the derived unimodal logits
    torch.testing.assert_close(fusion(feats), sum(uni.values()))


def test_sum_unimodal_logits_are_branches():
    fusion = SumFusion({"a": 4, "v": 6}, num_classes=3)
    feats = {"a": torch.randn(2, 4), "v": torch.randn(2, 6)}
    uni = fusion.unimodal_logits(feats)
    torch.testing.assert_close(uni["a"], fusion.fc["a"](feats["a"]))
    torch.testing.assert_close(fusion(feats), uni["a"] + uni["v"])


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_module_shapes(fusion):
    heads = fusion in ("film", "gated")
    module = tiny_mlp_module(num_classes=3, fusion=fusion, unimodal_heads=heads)
    logits, uni, feats = module({"audio": torch.randn(5, 7, 4), "visual": torch.randn(5, 4)})
    assert logits.shape == (5, 3)
    assert set(uni) == {"audio", "visual"} and uni["audio"].shape == (5, 3)
    assert feats["audio"].shape == (5, 8)


def test_film_without_unimodal_heads_names_the_key():
    with pytest.raises(ValueError, match="model.unimodal_heads"):
        tiny_mlp_module(fusion="film")


def test_resnet_encoders_shapes():
    audio = ResNet18Encoder(in_channels=1, width=8)
    visual = ResNet18Encoder(in_channels=3, temporal=True, width=8)
    assert audio(torch.randn(2, 1, 33, 40)).shape == (2, 64)
    assert visual(torch.randn(2, 3, 3, 32, 32)).shape == (2, 64)
    full = ResNet18Encoder(in_channels=1)
    assert full.feature_dim == 512
    with pytest.raises(ValueError, match="expects"):
        visual(torch.randn(2, 3, 32, 32))


def test_temporal_resnet_is_mean_over_frames():
    torch.manual_seed(0)
    enc = ResNet18Encoder(in_channels=3, temporal=True, width=4).eval()
    x = torch.randn(2, 3, 3, 16, 16)
    pooled = enc(x)
    enc.temporal = False  # the same weights as a per-frame 2-D network
    per_frame = torch.stack([enc(x[:, :, t]) for t in range(3)], dim=1)
    torch.testing.assert_close(pooled, per_frame.mean(1), rtol=1e-5, atol=1e-6)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [2.0], [2.0]]])
    out = masked_mean(x, torch.tensor([2, 3]))
    torch.testing.assert_close(out, torch.tensor([[2.0], [2.0]]))
    enc = MLPEncoder(input_dim=1, hidden_dim=4, feature_dim=4)
    assert enc(x, lengths=torch.tensor([2, 3])).shape == (2, 4)


def test_ogm_weight_init():
    enc = MLPEncoder(input_dim=6, hidden_dim=4, feature_dim=4)
    assert torch.all(enc.net[0].bias == 0)
    res = ResNet18Encoder(in_channels=1, width=4)
    assert torch.all(res.bn1.weight == 1) and torch.all(res.bn1.bias == 0)


def test_param_groups_per_encoder():
    module = tiny_mlp_module()
    groups = module.param_groups()
    assert [g["name"] for g in groups] == ["encoder.audio", "encoder.visual", "head"]
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(module.parameters()))
    assert set(map(id, groups[0]["params"])) == set(map(id, module.encoder_parameters("audio")))


def test_gamma_adds_unimodal_losses(tmp_path):
    from tests.helpers import fit, vector_loader

    seen = {}

    class Spy(__import__("asgml.core.base", fromlist=["x"]).BalancingCallback):
        def on_train_losses(self, trainer, module, out):
            losses = out.losses
            seen.update({k: float(v) for k, v in losses.items()})
            import torch.nn.functional as F

            expect = 0.5 * F.cross_entropy(out.unimodal_logits["audio"], out.labels)
            assert torch.allclose(losses["unimodal_audio"], expect)

    fit(tiny_mlp_module(gamma=0.5), vector_loader(), [Spy()], max_steps=1)
    assert set(seen) == {"fused", "unimodal_audio", "unimodal_visual"}


def test_bad_config_fails_naming_the_key(tmp_path):
    cfg = compose_cfg([], output_dir=tmp_path)
    encoders = OmegaConf.to_container(cfg.model.encoders, resolve=True)
    encoders["depth"] = {"_target_": "asgml.models.encoders.MLPEncoder", "input_dim": 3}
    cfg.model.encoders = encoders
    with pytest.raises(ValueError, match="model.encoders.depth"):
        run(cfg)
    cfg = compose_cfg(["model.num_classes=7"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="num_classes"):
        run(cfg)
    cfg = compose_cfg(["dataset.num_modalities=1"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="model.encoders|num_modalities"):
        run(cfg)
    cfg = compose_cfg(["+method.module.nonsense=1"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="method.module"):
        run(cfg)
    with pytest.raises(ValueError, match="model.encoders"):
        MultimodalModule({"a": MLPEncoder(4)}, num_classes=3)


def test_short_training_run_writes_metrics(tmp_path):
    cfg = compose_cfg([], output_dir=tmp_path)
    out = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for k in ("test/acc", "test/f1", "test/acc_audio", "test/acc_visual"):
        assert 0.0 <= saved["metrics"][k] <= 1.0
    assert saved["config"]["method"]["name"] == "baseline"
    assert (tmp_path / saved["best_checkpoint"]).exists()
    assert (tmp_path / "csv" / "metrics.csv").exists()
    assert out["metrics"] == saved["metrics"]


def test_three_modalities_train(tmp_path):
    cfg = compose_cfg(["dataset.num_modalities=3"], output_dir=tmp_path)
    out = run(cfg)
    assert {"test/acc_audio", "test/acc_visual", "test/acc_text"} <= set(out["metrics"])


@pytest.mark.slow
def test_cli_default_entry_point(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "asgml.train",
        f"hydra.run.dir={tmp_path}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test accuracy" in res.stdout and "unimodal acc" in res.stdout
    assert (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_configs_ship_with_a_regular_install(tmp_path):
    """A non-editable install carries conf/ as the package asgml.conf."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # build from a copy: a regular install writes build/ in its source
    ignore = shutil.ignore_patterns(".git", ".venv", "logs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(root, src, ignore=ignore)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    code = (
        "import asgml, hydra; from hydra import compose, initialize_config_module\n"
        "assert 'site' in asgml.__file__, asgml.__file__\n"
        "with initialize_config_module('asgml.conf', version_base='1.3'):\n"
        "    c = compose('train', overrides=['method=boost_ogm'])\n"
        "print(c.method.name)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "boost_ogm"


DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
# dataset configs whose encoders read a local file this machine does not have
NEEDS_LOCAL_FILES = {"ucf101_pretrained": "resnet18-f37072fd.pth", "food101_bert": "model_dir"}


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_composes_and_its_model_instantiates(dataset, tmp_path):
    cfg = compose_cfg([f"dataset={dataset}"], output_dir=tmp_path, fast=False)
    model_cfg = cfg.model
    mlp = {m: e for m, e in cfg.dataset.encoders.items() if e._target_.endswith("MLPEncoder")}
    if mlp:  # MMSA dims come from the pickle at run time (encoder_overrides)
        model_cfg = OmegaConf.merge(model_cfg, {"encoders": {m: {"input_dim": 7} for m in mlp}})
    if dataset in NEEDS_LOCAL_FILES:  # nothing is downloaded: the error names what is missing
        with pytest.raises(Exception, match=NEEDS_LOCAL_FILES[dataset]):
            instantiate(model_cfg)
        return
    model = instantiate(model_cfg)
    assert model.modalities == list(cfg.dataset.encoders)
    assert model.num_classes == cfg.dataset.num_classes
    if dataset != "synthetic":
        with pytest.raises(Exception, match="data_dir"):
            instantiate(cfg.dataset.datamodule)
