"""Every paper preset resolves its full training recipe by itself, every method its official
per-dataset values (conf/recipe/), and every model option has one home (model.*)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import asgml  # noqa: F401  (registers resolvers)
from asgml.run.config import validate_config
from asgml.run.feedback import recipe_lines

CONF = Path(__file__).resolve().parents[2] / "conf"

# Sources of the table below:
#   OGM  = GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d main.py: epochs 100 (l.34), batch 64 (l.33),
#          SGD lr 1e-3 (l.37, 246) momentum 0.9 wd 1e-4 (l.246), StepLR(70, 0.1) (l.38-39, 247)
#   DD   = docs/asgml_v2_design.md 5.1 (frames per table, seeds 42,0,1,2,3 / 42,123,456,789,1024)
#   MMSA = no official recipe for the MMSA sets: the presets keep the A/V recipe (see preset)
#   DEMO = the synthetic demo's own short schedule (conf/experiment/synthetic_table.yaml)
#   select_on: val everywhere (the official code selects on test; the presets keep test clean)
AV = {"epochs": 100, "opt": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9, "wd": 1e-4}
AV |= {"step": 70, "decay": 0.1, "batch": 64, "select_on": "val"}
S5 = "42,0,1,2,3"
EXPECTED: dict[str, dict[str, Any]] = {
    "cremad_1f_table": {**AV, "frames": 1, "seeds": S5},  # OGM + DD
    "cremad_3f_table": {**AV, "frames": 3, "seeds": "42,123,456,789,1024"},  # OGM + DD
    "cremad_alpha_sweep": {**AV, "frames": 1, "seeds": S5},  # OGM + DD section 8
    "cremad_boost_cggm": {**AV, "frames": 1, "seeds": S5},
    "cremad_ema": {**AV, "frames": 1, "seeds": S5},
    "cremad_eval_freq_sweep": {**AV, "frames": 1, "seeds": S5},
    "cremad_probe_type": {**AV, "frames": 1, "seeds": S5},
    "cremad_scale_max_sweep": {**AV, "frames": 1, "seeds": S5},
    "cremad_split_batch": {**AV, "frames": 1, "seeds": S5},
    "ave_table": {**AV, "frames": 3, "seeds": S5},  # OGM dataset/dataset.py:95 pick_num 3
    "mosei_table": {**AV, "frames": None, "seeds": S5},  # MMSA
    "sims_table": {**AV, "frames": None, "seeds": S5},  # MMSA
    "synthetic_table": {**AV, "epochs": 10, "lr": 2e-2, "frames": None, "seeds": S5},  # DEMO
    # ReconBoost's pre-trained start: step 1 (unimodal, OGM) and step 2, huacong/ReconBoost
    # @ 14ab57a README.md:47-66 (lr 0.01, batch 64), train.py:296,371 (momentum 0.9, wd 5e-4),
    # train.py:449-451 (x0.1 every 30 stages of 8 epochs), 100 stages (cache/ckpt/CREMAD stage 99)
    "cremad_unimodal_pretrain": {**AV, "frames": 1, "seeds": "42"},
    # the boost toolkit's presets (docs/asgml_v2_design.md section 10), OGM-GE main.py schedule
    "cremad_boost_signal": {**AV, "frames": 1, "seeds": S5},
    "cremad_boost_x_methods": {**AV, "frames": 1, "seeds": S5},
    "cremad_reconboost_pretrained": {
        **AV,
        **{"epochs": 800, "lr": 1e-2, "wd": 5e-4, "step": 240, "frames": 1, "seeds": "42"},
    },
}

# (preset, method) -> {dotted key: value} the official per-dataset recipe must resolve
#   AGM: lihongcs/AGM issues #3, #5, #10 (CREMA-D alpha 1.5, modulation over the whole run)
#   ARL: shicaiwei123/ICCV2025-ARL @ 358af4f cramed_arl.sh:3 (gamma 4.0, T 8.0)
#   OGM-GE: README.md:151 (CREMA-D alpha 0.8); generalized variant for 3 modalities
#   CGGM: zrguo/CGGM @ 21e428c run/food_run.py:55,63,64 (two-modality setting)
#   InfoReg: GeWu-Lab/InfoReg_CVPR2025 @ 939b2ed main.py:465,468,476 (0.05, 0.95, 0.1)
#   MMPareto: GeWu-Lab/MMPareto_ICML2024 @ a339db3 code/MMPareto.py:178 (gamma 1.5)
METHOD_VALUES: dict[tuple[str, str], dict[str, Any]] = {
    ("cremad_3f_table", "agm"): {
        "method.agm.alpha": 1.5,
        "method.agm.modulation_starts": 0,
        "method.agm.modulation_ends": 100,
    },
    ("cremad_1f_table", "agm"): {"method.agm.alpha": 1.5, "method.agm.modulation_ends": 100},
    # huacong/ReconBoost @ 14ab57a README.md:54-63 (CREMA-D command), train.py:77 (alpha)
    ("cremad_1f_table", "reconboost"): {
        "method.reconboost.epochs_per_stage": 4,
        "method.reconboost.correct_epoch": 4,
        "method.reconboost.weight1": 5.0,
        "method.reconboost.weight2": 1.0,
        "method.reconboost.alpha": 0.5,
        "method.reconboost.warm_start": True,
    },
    ("cremad_3f_table", "reconboost"): {"method.reconboost.weight1": 5.0},
    ("cremad_3f_table", "arl"): {"method.arl.gamma": 4.0, "method.arl.temperature": 8.0},
    ("cremad_1f_table", "arl"): {"method.arl.gamma": 4.0},
    ("cremad_1f_table", "ogm"): {"method.ogm.alpha": 0.8, "method.ogm.variant": "official"},
    ("cremad_3f_table", "boost_ogm"): {"method.ogm.alpha": 0.8, "method.boost.alpha": 0.75},
    ("cremad_1f_table", "boost"): {"method.boost.alpha": 0.5},  # DD 5.1
    ("cremad_boost_cggm", "cggm"): {
        "method.cggm.rou": 1.3,
        "method.cggm.lamda": 0.05,
        "method.cggm.cls_lr": 5e-4,
    },
    ("cremad_boost_cggm", "boost_cggm"): {"method.cggm.lamda": 0.05},
    ("cremad_3f_table", "inforeg"): {
        "method.inforeg.threshold": 0.05,
        "method.inforeg.beta_scales": [0.95, 0.1],
        "model.gamma": 1.0,
    },
    ("cremad_3f_table", "mmpareto"): {
        "method.mmpareto.gamma": 1.5,
        "model.gamma": 1.0,
        "model.unimodal_heads": True,
    },
    ("mosei_table", "ogm"): {"method.ogm.variant": "generalized"},
    ("sims_table", "boost_ogm"): {"method.ogm.variant": "generalized"},
    ("ave_table", "ogm"): {"method.ogm.variant": "official", "method.ogm.alpha": 0.8},
    ("cremad_3f_table", "sample_valuation"): {
        "method.valuation.mode": "sample",
        "method.valuation.warmup": 5,
    },
}


def _compose(overrides: list[str], hydra_cfg: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra_cfg)


def _get(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def test_every_preset_is_in_the_table() -> None:
    assert sorted(EXPECTED) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_resolves_its_full_recipe(preset: str) -> None:
    want = EXPECTED[preset]
    cfg = _compose([f"experiment={preset}"], hydra_cfg=True)
    assert cfg.trainer.max_epochs == want["epochs"]
    assert cfg.model.optimizer._target_ == want["opt"]
    assert cfg.model.optimizer.lr == pytest.approx(want["lr"])
    assert cfg.model.optimizer.momentum == pytest.approx(want["momentum"])
    assert cfg.model.optimizer.weight_decay == pytest.approx(want["wd"])
    assert cfg.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert cfg.model.scheduler.step_size == want["step"]
    assert cfg.model.scheduler.gamma == pytest.approx(want["decay"])
    assert cfg.dataset.datamodule.batch_size == want["batch"]
    assert cfg.dataset.get("frames") == want["frames"]
    assert cfg.select_on == want["select_on"]
    assert cfg.optimized_metric == "val/acc_best"
    assert str(cfg.hydra.sweeper.params.seed) == want["seeds"]


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_sets_every_recipe_key_itself(preset: str) -> None:
    """Not inherited from conf/trainer, conf/model or conf/train.yaml: a change of the global
    defaults must not change a paper preset."""
    text = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())
    assert "max_epochs" in text["trainer"]
    assert {"lr", "momentum", "weight_decay"} <= set(text["model"]["optimizer"])
    assert {"step_size", "gamma"} <= set(text["model"]["scheduler"])
    assert "batch_size" in text["dataset"]["datamodule"]
    assert "select_on" in text and "optimized_metric" in text
    if EXPECTED[preset]["frames"] is not None:
        assert text["dataset"]["frames"] == EXPECTED[preset]["frames"]


@pytest.mark.parametrize(("preset", "method"), sorted(METHOD_VALUES))
def test_official_method_values_per_dataset(preset: str, method: str) -> None:
    cfg = _compose([f"experiment={preset}", f"method={method}"])
    for key, value in METHOD_VALUES[(preset, method)].items():
        got = _get(cfg, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key


def test_recipe_values_are_overridable_on_the_command_line() -> None:
    cfg = _compose(["experiment=cremad_3f_table", "method=agm", "method.agm.alpha=2.0"])
    assert cfg.method.agm.alpha == 2.0
    cfg = _compose(["experiment=cremad_3f_table", "method=agm", "trainer.max_epochs=30"])
    assert _get(cfg, "method.agm.modulation_ends") == 30  # "the whole run" follows the epochs


def test_paper_presets_use_the_official_visual_pipeline() -> None:
    for preset, frames_dir in (
        ("cremad_1f_table", "Image-01-FPS"),
        ("cremad_3f_table", "Image-03-FPS"),
    ):
        dm = _compose([f"experiment={preset}"]).dataset.datamodule
        assert (dm.visual_dir, dm.frame_sampling, dm.decode_size) == (frames_dir, "first", "native")
    dm = _compose(["experiment=ave_table"]).dataset.datamodule
    assert (dm.frame_sampling, dm.decode_size) == ("even", "native")


def test_table_presets_carry_reference_numbers() -> None:
    cfg = _compose(["experiment=cremad_3f_table"])
    assert cfg.reference.metric == "test/acc"
    assert cfg.reference.results.boost_ogm.mean == 71.45  # docs/asgml_v2_design.md 5.1
    assert cfg.reference.results.baseline.std == 0.80
    cfg = _compose(["experiment=synthetic_table"], hydra_cfg=True)
    assert set(cfg.reference.results) == set(cfg.hydra.sweeper.params.method.split(","))


# ------------------------------------------------------------ one home per model option
def test_explicit_model_option_beats_the_method_default(tmp_path: Path) -> None:
    cfg = _compose(["method=inforeg"])
    assert cfg.model.gamma == 1.0  # InfoReg's own value, through method.model_defaults
    cfg = _compose(["method=inforeg", "model.gamma=0.5"])
    assert cfg.model.gamma == 0.5
    lines = recipe_lines(cfg)
    assert any("gamma=0.5" in line for line in lines)


def test_explicit_model_option_is_what_trains_and_is_saved(make_cfg) -> None:
    from asgml.train import run

    cfg = make_cfg(["method=inforeg", "model.gamma=0.5"])
    out = run(cfg)
    assert out["config"]["model"]["gamma"] == 0.5
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["config"]["model"]["gamma"] == 0.5
    ckpt = Path(cfg.paths.output_dir) / saved["best_checkpoint"]
    import torch

    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hp["gamma"] == 0.5  # the module was built with 0.5


def test_retired_method_module_block_fails_naming_both_keys() -> None:
    cfg = _compose(["+method.module.gamma=1.0"])
    with pytest.raises(ValueError, match="method.module .*method.model_defaults"):
        validate_config(cfg)
    cfg = _compose(["+method.model_defaults.nonsense=1"])
    with pytest.raises(ValueError, match="method.model_defaults has unknown option"):
        validate_config(cfg)


def test_every_model_config_reads_every_method_model_default() -> None:
    """A method's model_defaults only take effect if conf/model/*.yaml reads them."""
    keys = set()
    for path in (CONF / "method").glob("*.yaml"):
        keys |= set((yaml.safe_load(path.read_text()) or {}).get("model_defaults") or {})
    for path in (CONF / "recipe").rglob("*.yaml"):
        node = (yaml.safe_load(path.read_text()) or {}).get("method") or {}
        keys |= set(node.get("model_defaults") or {})
    assert keys >= {"gamma", "unimodal_heads"}
    default = (CONF / "model" / "default.yaml").read_text()
    for k in sorted(keys):
        assert f"method.model_defaults.{k}," in default, f"conf/model/default.yaml ignores {k}"
    for path in (CONF / "model").glob("*.yaml"):
        if path.stem != "default":  # other model configs build on default.yaml
            assert "/model/default" in path.read_text() or "- default" in path.read_text()


# ------------------------------------------------- combinations that cannot work fail early
def test_sims_with_boost_ogm_composes_the_generalized_variant() -> None:
    cfg = _compose(["dataset=sims", "method=boost_ogm"])
    assert cfg.method.ogm.variant == "generalized"
    validate_config(cfg)  # no error


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["dataset=sims", "method=ogm", "method.ogm.variant=official"], "method.ogm.variant"),
        (["dataset=mosei", "model.fusion=film", "model.unimodal_heads=true"], "model.fusion"),
        (["optimized_metric=test/acc"], "optimized_metric"),
    ],
)
def test_impossible_combination_fails_before_data_loads(
    make_cfg, overrides: list[str], match: str
) -> None:
    from asgml.train import run

    # the MMSA sets need data_dir: a data error would come first if the check ran late
    cfg = make_cfg(overrides, fast=False)
    with pytest.raises(ValueError, match=match):
        run(cfg)


def test_optimized_metric_is_the_best_validation_value(make_cfg) -> None:
    from asgml.train import run

    out = run(make_cfg([]))
    assert out["optimized_metric"] == "val/acc_best"
    assert out["optimized_value"] == pytest.approx(out["val_acc_best"])
