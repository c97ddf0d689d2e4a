"""Protocols: every ``dataset=<real> method=<m>`` resolves the training schedule its source
gives (``protocol=official``, the default) or the dataset's reference (``protocol=shared``),
with the precedence command line > preset > protocol > method defaults, and the start-up
block says where each value came from.

The expected values below are written from the official code (file:line @ commit), not read
from ``asgml/run/protocols.py``: changing one value of the table, of a generated config or
of the composition breaks a test here.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from asgml.run import protocols
from asgml.run.build import model_config
from tests.conftest import compose_cfg

CONF = Path(__file__).resolve().parents[2] / "conf"
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if p.stem != "synthetic")

# (optimizer, lr, momentum, weight decay, (scheduler, args) | None, epochs, batch, frames)
Row = tuple[str, float, float | None, float, tuple[str, dict[str, Any]] | None, int, int, Any]


def step(step_size: int, gamma: float = 0.1) -> tuple[str, dict[str, Any]]:
    return ("StepLR", {"step_size": step_size, "gamma": gamma})


def multistep(*milestones: int) -> tuple[str, dict[str, Any]]:
    return ("MultiStepLR", {"milestones": list(milestones), "gamma": 0.1})


# GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d main.py:33 batch 64, :34 epochs 100, :37 lr 1e-3,
# :38-39,247 StepLR(70, 0.1), :246 SGD(momentum 0.9, wd 1e-4), :28 fps 1;
# dataset/dataset.py:95 pick_num 3 (AVE, KS). MMSA sets: no reference, the A/V one is kept.
OGM = ("SGD", 1e-3, 0.9, 1e-4, step(70), 100, 64)
REFERENCE: dict[str, Row] = {
    "cremad": (*OGM, 1),
    "cremad_3f": (*OGM, 3),
    "ave": (*OGM, 3),
    "ks": (*OGM, 3),
    "mosei": (*OGM, None),
    "mosi": (*OGM, None),
    "sims": (*OGM, None),
    # GeWu-Lab/BalanceBenchmark @ 4c1482f configs/global_config.yaml:4,27,29,42-48 (its own
    # datasets; frames: the dataset configs')
    **{d: ("AdamW", 1e-3, None, 0.01, step(10), 30, 32, 3) for d in ("vggsound", "balancedav")},
    **{
        d: ("AdamW", 1e-3, None, 0.01, step(10), 30, 32, 3) for d in ("ucf101", "ucf101_pretrained")
    },
    **{d: ("AdamW", 1e-3, None, 0.01, step(10), 30, 32, None) for d in ("food101", "food101_bert")},
    # nyukat/greedy_multimodal_learning @ a190e03 configs/training.gin (ReduceLROnPlateau and
    # early stopping not reproduced: constant LR)
    "modelnet40": ("SGD", 0.1, 0.0, 0.0, None, 300, 8, None),
}
# GeWu-Lab/BalanceBenchmark @ 4c1482f configs/global_config.yaml:4,27,29,42-48,
# configs/dataset_config.yaml:55; balancemm/utils/optimizer.py:17 (lr = base_lr, unscaled)
BB: Row = ("AdamW", 1e-3, None, 0.01, step(10), 30, 32, 2)
OFFICIAL_CREMAD: dict[str, Row] = {
    "ogm": REFERENCE["cremad"],
    # Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ ab6c184
    # main.py:26,32-34,749,760, README.md:62
    "mla": ("SGD", 1e-3, 0.9, 1e-4, step(70), 100, 64, 1),
    # GeWu-Lab/Diagnosing_Relearning_ECCV2024 @ 025085e code/ours.py:34,38,368 (no
    # scheduler), code/script/ours.sh:10 (90 epochs), code/dataset/av_dataset.py:101
    "relearning": ("SGD", 2e-3, 0.9, 1e-4, None, 90, 64, 2),
    # fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48 bash.sh:217, main_Prototype_grad.py:36,466-468
    "pmr": ("Adagrad", 1e-3, None, 0.0, None, 130, 64, 3),
    # GeWu-Lab/MMCosine_ICASSP23 @ 00ba0a9 main_CD.py:60-66,262,265; dataset/dataset.py:230
    "mmcosine": ("SGD", 1e-3, 0.9, 1e-4, step(100), 200, 32, 1),
    # njustkmg/NeurIPS24-LFM @ ad44fa0 data/crema.json:16-35, Crema_epoch.py:186-196 (StepLR(70)
    # stepped before each epoch = milestones 69, 139 stepped after), dataset/CREMA.py:27
    "lfm": ("SGD", 1e-2, 0.9, 1e-4, multistep(69, 139), 200, 64, 1),
    # shicaiwei123/ICCV2025-ARL @ 358af4f main_arl_variance.py:36,43-49,80,271-272
    "arl": ("SGD", 1e-3, 0.9, 1e-4, multistep(69, 149), 100, 64, 1),
    # GeWu-Lab/InfoReg_CVPR2025 @ 939b2ed main.py:34,39-45,601,714-715
    "inforeg": ("SGD", 2e-3, 0.9, 1e-4, step(30), 50, 64, 3),
    # GeWu-Lab/MMPareto_ICML2024 @ a339db3 code/MMPareto.py:28-32,296,301 (never stepped),
    # code/dataset/av_dataset.py:92
    "mmpareto": ("SGD", 2e-3, 0.9, 1e-4, None, 50, 64, 2),
    # huacong/ReconBoost @ 14ab57a README.md:53-60, train.py:296,371,449-451, utils.py:6,
    # loaders/CramedDataset.py:30: 1001 stages of 4 + 4 epochs, lr x0.1 every 30 stages
    "reconboost": ("SGD", 1e-2, 0.9, 5e-4, step(240), 8008, 64, 1),
    **{m: BB for m in ("amco", "gblending", "umt", "mbsd", "cml")},
}


# GeWu-Lab/BML_TPAMI2024 @ 4b3aa4f code/config.py:14,22-29, code/main.py:174,267-268 (its
# only dataset is Kinetics-Sounds)
# GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation @ 7ed12b0 code/sample_level.py:41-58,
# 287-296,340, code/datasets/dataloader.py:228 (Kinetics-Sounds only)
OFFICIAL_KS: dict[str, Row] = {
    "opm": ("AdamW", 5e-5, None, 0.01, step(40), 100, 32, 3),
    "sample_valuation": ("Adam", 5e-5, None, 1e-4, step(30), 60, 64, 3),
}


def expected(protocol: str, method: str, dataset: str) -> Row:
    if protocol == "official" and dataset.startswith("cremad") and method in OFFICIAL_CREMAD:
        row = OFFICIAL_CREMAD[method]
        return (*row[:-1], 3) if dataset == "cremad_3f" else row  # the variant's 3 frames
    if protocol == "official" and dataset == "ks" and method in OFFICIAL_KS:
        return OFFICIAL_KS[method]
    return REFERENCE[dataset]


def table_row(s: protocols.Schedule) -> Row:
    sched = None if s.scheduler is None else (s.scheduler, dict(s.scheduler_args))
    return (s.optimizer, s.lr, s.momentum, s.weight_decay, sched, s.epochs, s.batch, s.frames)


def resolved(cfg: DictConfig) -> Row:
    opt, sched = cfg.model.optimizer, cfg.model.scheduler
    sched_row = None
    if sched is not None:
        args = {k: v for k, v in sched.items() if not str(k).startswith("_") and v is not None}
        sched_row = (sched._target_.rsplit(".", 1)[-1], _plain(args))
    return (
        opt._target_.rsplit(".", 1)[-1],
        opt.lr,
        opt.get("momentum"),
        opt.weight_decay,
        sched_row,
        cfg.trainer.max_epochs,
        cfg.dataset.datamodule.batch_size,
        cfg.dataset.get("frames"),
    )


def _plain(args: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else v)
        for k, v in args.items()
    }


# ------------------------------------------------------------------ the table itself
def test_every_real_dataset_has_a_reference_protocol() -> None:
    assert protocols.real_datasets() == DATASETS


def test_official_entries_are_the_audited_ones() -> None:
    assert {m for m, d in protocols.OFFICIAL if d == "cremad"} == set(OFFICIAL_CREMAD)
    assert {m for m, d in protocols.OFFICIAL if d == "ks"} == set(OFFICIAL_KS)
    assert {d for _, d in protocols.OFFICIAL} == {"cremad", "ks"}


@pytest.mark.parametrize("protocol", protocols.PROTOCOLS)
def test_table_holds_the_sourced_values(protocol: str) -> None:
    for method in METHODS:
        for dataset in DATASETS:
            s = protocols.schedule(protocol, method, dataset)
            assert s is not None
            assert table_row(s) == expected(protocol, method, dataset), (method, dataset)
            assert set(s.node()["protocol"]["sources"]) == set(protocols.FIELDS)
    assert protocols.schedule(protocol, "baseline", "synthetic") is None


def test_generated_configs_match_the_table() -> None:
    """conf/protocol_reference and conf/protocol_official are the table, written out."""
    wanted = protocols.rendered_configs()
    on_disk = {
        p.relative_to(CONF).as_posix(): p.read_text()
        for group in (protocols.REFERENCE_GROUP, protocols.OFFICIAL_GROUP)
        for p in (CONF / group).rglob("*.yaml")
    }
    assert sorted(on_disk) == sorted(wanted), "run `python -m asgml.run.protocols`"
    for rel, text in wanted.items():
        assert on_disk[rel] == text, f"conf/{rel} differs from the table"


def test_write_configs_removes_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / protocols.OFFICIAL_GROUP / "official" / "gone" / "cremad.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    written = protocols.write_configs(tmp_path)
    assert not stale.exists()
    assert len(written) == len(protocols.rendered_configs())
    assert protocols.write_configs(tmp_path) == []  # idempotent


# ------------------------------------------------------------------ as the CLI composes
ACCEPTANCE = {  # the list: --cfg job dataset=cremad method=<m>
    "mla": {"epochs": 100, "opt": "SGD", "lr": 1e-3},
    "relearning": {"epochs": 90, "sched": None},
    "lfm": {"epochs": 200, "opt": "SGD", "lr": 1e-2},
    "mmcosine": {"epochs": 200, "batch": 32},
    "pmr": {"epochs": 130},
    "boost_ogm": {"epochs": 100, "opt": "SGD", "lr": 1e-3, "sched": step(70)},
    "ogm": {"epochs": 100, "opt": "SGD", "lr": 1e-3, "sched": step(70)},
    "baseline": {"epochs": 100, "opt": "SGD", "lr": 1e-3, "sched": step(70)},
}


@pytest.mark.parametrize("method", sorted(ACCEPTANCE))
def test_cremad_command_runs_the_official_schedule(method: str) -> None:
    row = resolved(compose_cfg(["dataset=cremad", f"method={method}"], fast=False))
    want = ACCEPTANCE[method]
    got = {"opt": row[0], "lr": row[1], "sched": row[4], "epochs": row[5], "batch": row[6]}
    assert {k: got[k] for k in want} == want


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_dataset_resolves_its_schedule(method: str, dataset: str) -> None:
    cfg = compose_cfg([f"dataset={dataset}", f"method={method}"], fast=False)
    assert resolved(cfg) == expected("official", method, dataset)
    assert cfg.protocol.name == "official"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_shared_gives_one_schedule_for_every_method(dataset: str) -> None:
    rows = {
        m: resolved(
            compose_cfg([f"dataset={dataset}", f"method={m}", "protocol=shared"], fast=False)
        )
        for m in METHODS
    }
    assert all(row == REFERENCE[dataset] for row in rows.values()), rows


def test_shared_replaces_an_official_schedule() -> None:
    for method in ("mmcosine", "pmr", "amco"):
        cfg = compose_cfg(["dataset=cremad", f"method={method}", "protocol=shared"], fast=False)
        assert resolved(cfg) == REFERENCE["cremad"]
        assert cfg.protocol.name == "shared"


def test_synthetic_keeps_its_fast_recipe() -> None:
    for method in ("baseline", "lfm", "mmcosine"):
        cfg = compose_cfg([f"method={method}"], fast=False)
        assert (cfg.trainer.max_epochs, cfg.model.optimizer.lr) == (10, 2e-2)
        assert cfg.dataset.datamodule.batch_size == 64
        assert "schedule" not in cfg.protocol


def test_precedence_command_line_then_preset_then_protocol() -> None:
    base = ["dataset=cremad", "method=mmcosine"]
    cfg = compose_cfg([*base, "trainer.max_epochs=7", "model.scheduler.step_size=3"], fast=False)
    assert (cfg.trainer.max_epochs, cfg.model.scheduler.step_size) == (7, 3)  # command line
    assert cfg.dataset.datamodule.batch_size == 32  # the rest stays official
    # a preset names its protocol (shared) ...
    cfg = compose_cfg(["experiment=cremad_1f_table", "method=mmcosine"], fast=False)
    assert cfg.protocol.name == "shared"
    assert (cfg.trainer.max_epochs, cfg.dataset.datamodule.batch_size) == (100, 64)
    # ... and its values beat the protocol's even under protocol=official
    cfg = compose_cfg(
        ["experiment=cremad_1f_table", "method=mmcosine", "protocol=official"], fast=False
    )
    assert cfg.protocol.name == "official"
    assert (cfg.trainer.max_epochs, cfg.dataset.datamodule.batch_size) == (100, 64)
    over = ["experiment=cremad_1f_table", "method=mmcosine", "protocol=official"]
    cfg = compose_cfg([*over, "trainer.max_epochs=3"], fast=False)
    assert cfg.trainer.max_epochs == 3  # the command line wins over both


def test_every_preset_names_its_protocol() -> None:
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        assert re.search(r"^  - override /protocol: (shared|official)$", path.read_text(), re.M), (
            path.name
        )


# ------------------------------------------------------------------ the model is built
@pytest.mark.parametrize("method", ["pmr", "amco", "lfm", "arl"])
def test_protocol_optimizer_and_scheduler_build(method: str) -> None:
    """A null argument (AdamW's / Adagrad's momentum, MultiStepLR's step_size) is left out."""
    cfg = compose_cfg(["dataset=cremad", f"method={method}"], fast=False)
    node = model_config(cfg, SimpleNamespace(encoder_overrides=lambda: {}))
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(node.optimizer)(params)
    want = expected("official", method, "cremad")
    assert type(opt).__name__ == want[0]
    assert opt.defaults["lr"] == want[1]
    assert opt.defaults["weight_decay"] == want[3]
    if want[4] is None:
        assert node.scheduler is None
    else:
        sched = instantiate(node.scheduler)(opt)
        assert type(sched).__name__ == want[4][0]
    with pytest.raises(TypeError, match="momentum|step_size"):  # not dropped: refused
        raw = cfg.model.optimizer if want[2] is None else cfg.model.scheduler
        instantiate(raw)(params if want[2] is None else opt)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize(
    ("official_milestones", "ours_milestones", "epochs"),
    [([70, 140], [69, 139], 200), ([70, 150], [69, 149], 100)],  # LFM StepLR(70); ARL
)
def test_multistep_reproduces_a_scheduler_stepped_before_each_epoch(
    official_milestones: list[int], ours_milestones: list[int], epochs: int
) -> None:
    """LFM and ARL step their scheduler before each epoch's training (Crema_epoch.py:196,
    main_arl_variance.py:80); the table's milestones one epoch earlier, stepped after each
    epoch as asgml does, give every epoch the same learning rate."""
    p = [torch.nn.Parameter(torch.zeros(1))]
    official_opt = torch.optim.SGD(p, lr=1e-2)
    official = torch.optim.lr_scheduler.MultiStepLR(official_opt, official_milestones, 0.1)
    ours_opt = torch.optim.SGD(p, lr=1e-2)
    ours = torch.optim.lr_scheduler.MultiStepLR(ours_opt, ours_milestones, 0.1)
    lrs = []
    for _epoch in range(epochs):
        official.step()  # before the epoch's training
        lrs.append(ours_opt.param_groups[0]["lr"])
        assert lrs[-1] == pytest.approx(official_opt.param_groups[0]["lr"]), _epoch
        ours.step()  # asgml: at the epoch's end
    assert lrs[68] == pytest.approx(1e-2) and lrs[69] == pytest.approx(1e-3)


def test_adamw_schedule_trains_end_to_end(make_cfg) -> None:
    from asgml.train import run

    cfg = make_cfg(
        [
            "model.optimizer._target_=torch.optim.AdamW",
            "model.optimizer.momentum=null",
            "model.optimizer.lr=1e-3",
            "model.optimizer.weight_decay=0.01",
        ]
    )
    out = run(cfg)
    assert out["config"]["model"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert out["config"]["model"]["optimizer"]["momentum"] is None  # saved as it ran


# ------------------------------------------------------------------ start-up block
def _lines(overrides: list[str]) -> dict[str, str]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    lines = protocols.protocol_lines(cfg)
    out = {"head": lines[0]}
    for line in lines[1:]:
        key, rest = line.strip().split(None, 1)
        out[key] = rest
    return out


def test_startup_block_names_the_source_of_every_value() -> None:
    got = _lines(["dataset=cremad", "method=lfm", "model.optimizer.lr=0.05"])
    assert got["head"] == "protocol  official -> official: njustkmg/NeurIPS24-LFM @ ad44fa0"
    assert got["lr"].endswith("<- command line")
    assert got["epochs"].endswith("data/crema.json:16 epoch_dict 200")
    assert got["batch"].endswith("data/crema.json:17 batch_size 64")  # dataset= is a choice
    assert got["frames"].endswith("dataset/CREMA.py:27 use_pre_frame = 1")
    got = _lines(["experiment=cremad_1f_table", "method=lfm", "trainer.max_epochs=5"])
    assert got["head"].startswith("protocol  shared -> dataset reference: GeWu-Lab/OGM-GE")
    assert got["epochs"] == "5          <- command line"
    assert got["lr"].endswith("<- preset experiment=cremad_1f_table")
    got = _lines(["method=lfm"])
    assert "no schedule for dataset synthetic" in got["head"]
    assert got["epochs"].endswith("<- library default (conf/trainer/default.yaml)")
    assert "frames" not in got


def test_startup_block_lists_the_protocol(make_cfg) -> None:
    from asgml.run.feedback import recipe_lines

    lines = recipe_lines(compose_cfg(["dataset=cremad", "method=pmr"], fast=False))
    text = "\n".join(lines)
    assert "optimizer Adagrad(lr=0.001, weight_decay=0.0)" in text  # momentum not passed
    assert "protocol  official -> official: fanyunfeng-bit/Modal-Imbalance-PMR" in text
    assert "(command line not known)" in text  # composed outside a Hydra run
