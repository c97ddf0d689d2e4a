"""Training protocols: the schedule every ``dataset x method`` runs, with its sources.

One table, kept here, of the training schedule (optimizer, learning rate, momentum, weight
decay, LR scheduler and where it steps, epochs, batch size, visual frames) of every method on
every real dataset, under two protocols:

* ``official`` (the default): the schedule the method's authors published for that dataset
  (their code, read at the commit cited), else the dataset's reference protocol;
* ``shared``: the dataset's reference protocol for every method, so a comparison table
  changes only the method (the design document's tables; the ``experiment=*_table`` presets
  select it).

The dataset reference protocols: CREMA-D, AVE and Kinetics-Sounds use the OGM-GE ``main.py``
schedule (GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d, the code that defined these A/V benchmarks);
the MMSA sets (MOSEI, MOSI, SIMS) have no published schedule for this architecture, so they
keep the same A/V schedule (as ``experiment=mosei_table`` does) and say so.

The table reaches Hydra as generated config files (``python -m asgml.run.protocols`` writes
them; a test checks they match): ``conf/protocol_reference/<dataset>.yaml`` (the reference,
both protocols) and ``conf/protocol_official/official/<method>/<dataset>.yaml`` (a method's
own schedule, merged over the reference under ``protocol=official`` only), picked in
``conf/train.yaml`` by ``optional protocol_reference: ${dataset}`` and
``optional protocol_official: ${protocol}/${method}/${dataset}``: after the method's defaults,
before ``recipe/`` and ``experiment/``, so a preset and the command line still win, and
``--cfg job`` shows the values that run. (Files, not Hydra's ConfigStore: Hydra deep-copies
the whole store on every composition, which made each one several seconds slower.) The
synthetic dataset has no entry: it keeps the library's fast default recipe.
``docs/recipes.md`` shows this table (``<!-- asgml:protocols -->``), and
``tests/workflow/test_protocols.py`` checks every method config x real dataset against
values written there from the official code.

Where the official code steps its scheduler *before* each epoch's training (ARL, LFM), the
decay lands one epoch earlier than a PyTorch scheduler stepped at the epoch's end, as asgml
steps it; the table gives those schedules as ``MultiStepLR`` with milestones one epoch
earlier, which reproduces the official learning rate of every epoch exactly.

``model.optimizer.<key>: null`` (or ``model.scheduler.<key>: null``) means "not an argument":
the model builder leaves it out (`drop_unset`), so an AdamW schedule merged over the
default SGD node does not pass SGD's ``momentum``.
"""

from __future__ import annotations

import importlib.resources
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

PROTOCOLS = ("official", "shared")
REFERENCE_GROUP = "protocol_reference"
OFFICIAL_GROUP = "protocol_official"
# the schedule fields, their config keys, and how the start-up block names them
FIELDS: dict[str, str] = {
    "epochs": "trainer.max_epochs",
    "optimizer": "model.optimizer._target_",
    "lr": "model.optimizer.lr",
    "momentum": "model.optimizer.momentum",
    "weight_decay": "model.optimizer.weight_decay",
    "scheduler": "model.scheduler",
    "batch": "dataset.datamodule.batch_size",
    "frames": "dataset.frames",
}

# the config groups of conf/train.yaml (an override naming one selects a config)
CONFIG_GROUPS = frozenset(
    "dataset model method callbacks trainer logger paths hydra launcher protocol "
    "protocol_reference protocol_official recipe experiment hparams_search debug".split()
)
# where a value comes from when neither the command line, a preset nor the protocol set it
DEFAULT_HOME: dict[str, str] = {
    "epochs": "library default (conf/trainer/default.yaml)",
    **{
        k: "library default (conf/model/default.yaml)"
        for k in ("optimizer", "lr", "momentum", "weight_decay", "scheduler")
    },
    "batch": "dataset default (conf/dataset/)",
    "frames": "dataset default (conf/dataset/)",
}


@dataclass(frozen=True)
class Schedule:
    """One training schedule and the source of each of its values.

    ``sources`` maps a field of `FIELDS` to where its value is written (file:line at
    the cited commit, or why the value is the dataset reference's); a field without an
    entry takes ``source``.
    """

    optimizer: str  # torch.optim class name
    lr: float
    momentum: float | None  # None: the optimizer has no momentum argument
    weight_decay: float
    scheduler: str | None  # torch.optim.lr_scheduler class name; None: constant LR
    scheduler_args: Mapping[str, Any]
    steps: str  # where the official code steps the scheduler
    epochs: int
    batch: int
    frames: int | None  # visual frames per clip; None: the dataset has no video stream
    source: str  # repository @ commit (or "dataset reference: ...")
    kind: str  # "official" | "reference"
    sources: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    def source_of(self, name: str) -> str:
        """Where the value of field ``name`` comes from."""
        where = self.sources.get(name)
        return f"{self.source} {where}" if where else self.source

    def node(self) -> dict[str, Any]:
        """The config node (``@package _global_``) this schedule sets."""
        opt: dict[str, Any] = {
            "_target_": f"torch.optim.{self.optimizer}",
            "_partial_": True,
            "lr": self.lr,
            "momentum": self.momentum,  # None = not passed (drop_unset)
            "weight_decay": self.weight_decay,
        }
        sched: dict[str, Any] | None = None
        if self.scheduler is not None:
            sched = {
                "_target_": f"torch.optim.lr_scheduler.{self.scheduler}",
                "_partial_": True,
                # the default node is a StepLR: a MultiStepLR must not receive its step_size
                "step_size": None,
                **dict(self.scheduler_args),
            }
        data: dict[str, Any] = {"datamodule": {"batch_size": self.batch}}
        if self.frames is not None:
            data["frames"] = self.frames
        return {
            "trainer": {"max_epochs": self.epochs},
            "model": {"optimizer": opt, "scheduler": sched},
            "dataset": data,
            "protocol": {
                "schedule": self.source,
                "sources": {name: self.source_of(name) for name in FIELDS},
            },
        }


def _sgd(**kw: Any) -> dict[str, Any]:
    return {"optimizer": "SGD", **kw}


# ------------------------------------------------------------------ dataset references
OGM = "GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d"
_OGM_SCHEDULE = _sgd(
    lr=1e-3,
    momentum=0.9,
    weight_decay=1e-4,
    scheduler="StepLR",
    scheduler_args={"step_size": 70, "gamma": 0.1},
    steps="once per epoch, after its training (main.py:159)",
    epochs=100,
    batch=64,
)
_OGM_SOURCES = {
    "optimizer": "main.py:246 SGD(momentum=0.9, weight_decay=1e-4)",
    "lr": "main.py:37 --learning_rate 0.001",
    "momentum": "main.py:246",
    "weight_decay": "main.py:246",
    "scheduler": "main.py:38-39,247 StepLR(70, 0.1)",
    "epochs": "main.py:34 --epochs 100",
    "batch": "main.py:33 --batch_size 64",
}
_MMSA_NOTE = (
    "no published schedule for the MMSA sets with this architecture (MMSA's own models use "
    "Adam with per-model rates and early stopping): the A/V reference (OGM-GE main.py) is kept"
)

REFERENCE: dict[str, Schedule] = {
    "cremad": Schedule(
        **_OGM_SCHEDULE,
        frames=1,
        source=f"dataset reference: {OGM}",
        kind="reference",
        sources={**_OGM_SOURCES, "frames": "main.py:28 --fps 1"},
    ),
    "cremad_3f": Schedule(
        **_OGM_SCHEDULE,
        frames=3,
        source=f"dataset reference: {OGM}",
        kind="reference",
        sources={**_OGM_SOURCES, "frames": "(dataset cremad_3f: 3 frames, design doc 5.1)"},
    ),
    "ave": Schedule(
        **_OGM_SCHEDULE,
        frames=3,
        source=f"dataset reference: {OGM}",
        kind="reference",
        sources={**_OGM_SOURCES, "frames": "dataset/dataset.py:95 pick_num = 3"},
    ),
    "ks": Schedule(
        **_OGM_SCHEDULE,
        frames=3,
        source=f"dataset reference: {OGM}",
        kind="reference",
        sources={**_OGM_SOURCES, "frames": "dataset/dataset.py:95 pick_num = 3"},
    ),
    **{
        name: Schedule(
            **_OGM_SCHEDULE,
            frames=None,
            source=f"dataset reference (none published; A/V reference kept): {OGM}",
            kind="reference",
            sources=_OGM_SOURCES,
            note=_MMSA_NOTE,
        )
        for name in ("mosei", "mosi", "sims")
    },
}

# BalanceBenchmark's own datasets (VGGSound, BalancedAV, UCF-101, UPMC Food-101): the benchmark's
# global schedule is the one published for them (the same for every dataset there); the frame
# count is the dataset config's (conf/dataset/<d>.yaml).
_BB_REF = "GeWu-Lab/BalanceBenchmark @ 4c1482f"
_BB_REF_SOURCES = {
    "optimizer": "configs/global_config.yaml:41-44 AdamW",
    "lr": "configs/global_config.yaml:29-30 base_lr 0.001; balancemm/utils/optimizer.py:17 "
    "uses base_lr as is",
    "momentum": "configs/global_config.yaml:42-43 (AdamW: none)",
    "weight_decay": "configs/global_config.yaml:44 weight_decay 0.01",
    "scheduler": "configs/global_config.yaml:46-48 StepLR(10, 0.1)",
    "epochs": "configs/global_config.yaml:27, configs/trainer_config.yaml:4 (30)",
    "batch": "configs/global_config.yaml:4 eff_batch_size 32",
}
_BB_REF_SCHEDULE = dict(
    optimizer="AdamW",
    lr=1e-3,
    momentum=None,
    weight_decay=0.01,
    scheduler="StepLR",
    scheduler_args={"step_size": 10, "gamma": 0.1},
    steps="once per epoch, after its training (balancemm/trainer/base_trainer.py:260-261)",
    epochs=30,
    batch=32,
)
for _name, _frames in (
    ("vggsound", 3),
    ("balancedav", 3),
    ("ucf101", 3),
    ("ucf101_pretrained", 3),
    ("food101", None),
    ("food101_bert", None),
):
    REFERENCE[_name] = Schedule(
        **_BB_REF_SCHEDULE,
        frames=_frames,
        source=f"dataset reference: {_BB_REF}",
        kind="reference",
        sources={
            **_BB_REF_SOURCES,
            **({"frames": f"conf/dataset/{_name}.yaml frames"} if _frames else {}),
        },
    )
# ModelNet40 front/rear views: the Greedy paper's own training config. Its ReduceLROnPlateau on
# the training loss and early stopping (patience 5) have no counterpart in asgml's per-epoch
# scheduler: the learning rate stays constant and all 300 epochs run (a stated deviation).
_GREEDY = "nyukat/greedy_multimodal_learning @ a190e03"
REFERENCE["modelnet40"] = Schedule(
    optimizer="SGD",
    lr=0.1,
    momentum=0.0,
    weight_decay=0.0,
    scheduler=None,
    scheduler_args={},
    steps="ReduceLROnPlateau(loss) in the official code; not reproduced (constant LR)",
    epochs=300,
    batch=8,
    frames=None,
    source=f"dataset reference: {_GREEDY}",
    kind="reference",
    sources={
        "optimizer": "configs/training.gin SGD",
        "lr": "configs/training.gin lr 0.1",
        "momentum": "configs/training.gin (none)",
        "weight_decay": "configs/training.gin (none)",
        "scheduler": "configs/training.gin:11 ReduceLROnPlateau(loss): not reproduced",
        "epochs": "configs/training.gin:24 n_epochs 300 (early stopping, patience 5, not "
        "reproduced)",
        "batch": "configs/training.gin batch_size 8",
    },
    note="ReduceLROnPlateau and early stopping are not reproduced: constant LR, 300 epochs",
)

# ------------------------------------------------------------------ official schedules
# (method, dataset) -> the schedule its authors' code runs; "cremad" entries also serve
# cremad_3f (whose 3 frames are the dataset variant's own).
_BB = "GeWu-Lab/BalanceBenchmark @ 4c1482f"
_BB_SCHEDULE = dict(
    optimizer="AdamW",
    lr=1e-3,
    momentum=None,
    weight_decay=0.01,
    scheduler="StepLR",
    scheduler_args={"step_size": 10, "gamma": 0.1},
    steps="once per epoch, after its training (balancemm/trainer/base_trainer.py:260-261)",
    epochs=30,
    batch=32,
    frames=2,
    source=f"official (benchmark global config, no author script): {_BB}",
    kind="official",
    sources={
        "optimizer": "configs/global_config.yaml:41-44 AdamW",
        "lr": "configs/global_config.yaml:29-30 base_lr 0.001; balancemm/utils/optimizer.py:17 "
        "uses base_lr as is (the 'linear law' comment is not executed)",
        "momentum": "configs/global_config.yaml:42-43 (AdamW: none)",
        "weight_decay": "configs/global_config.yaml:44 weight_decay 0.01",
        "scheduler": "configs/global_config.yaml:46-48 StepLR(10, 0.1)",
        "epochs": "configs/global_config.yaml:27, configs/trainer_config.yaml:4 (30)",
        "batch": "configs/global_config.yaml:4 eff_batch_size 32 (balancemm/utils/data_utils.py:33)",
        "frames": "configs/dataset_config.yaml:55 CREMAD fps 2 "
        "(balancemm/datasets/cremad_dataset.py:66)",
    },
    note="the benchmark's global config, not the method authors' (they published no CREMA-D "
    "script)",
)

OFFICIAL: dict[tuple[str, str], Schedule] = {
    ("ogm", "cremad"): replace(REFERENCE["cremad"], source=f"official: {OGM}", kind="official"),
    ("mla", "cremad"): Schedule(
        **_sgd(
            lr=1e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="StepLR",
            scheduler_args={"step_size": 70, "gamma": 0.1},
            steps="once per epoch, after its training (main.py:481)",
            epochs=100,
            batch=64,
            frames=1,
        ),
        source="official: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation "
        "@ ab6c184",
        kind="official",
        sources={
            "optimizer": "main.py:749 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "main.py:32 --learning_rate 0.001",
            "momentum": "main.py:749",
            "weight_decay": "main.py:749",
            "scheduler": "main.py:33-34,760 StepLR(70, 0.1)",
            "epochs": "README.md:62 --epochs 100",
            "batch": "README.md:62 --batch_size 64",
            "frames": "main.py:26 --fps 1",
        },
    ),
    ("relearning", "cremad"): Schedule(
        **_sgd(
            lr=2e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler=None,
            scheduler_args={},
            steps="none: code/ours.py builds no scheduler",
            epochs=90,
            batch=64,
            frames=2,
        ),
        source="official: GeWu-Lab/Diagnosing_Relearning_ECCV2024 @ 025085e",
        kind="official",
        sources={
            "optimizer": "code/ours.py:368 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "code/ours.py:38 --learning_rate 0.002",
            "momentum": "code/ours.py:368",
            "weight_decay": "code/ours.py:368",
            "scheduler": "code/ours.py:366-378 (no scheduler; --lr_decay_step is unused)",
            "epochs": "code/script/ours.sh:10 --epochs 90",
            "batch": "code/ours.py:34 --batch_size 64",
            "frames": "code/dataset/av_dataset.py:101 pick_num = 2",
        },
    ),
    ("pmr", "cremad"): Schedule(
        optimizer="Adagrad",
        lr=1e-3,
        momentum=None,
        weight_decay=0.0,
        scheduler=None,
        scheduler_args={},
        steps="none: AdaGrad runs without a scheduler (main_Prototype_grad.py:466-468)",
        epochs=130,
        batch=64,
        frames=3,
        source="official: fanyunfeng-bit/Modal-Imbalance-PMR @ 3615e48",
        kind="official",
        sources={
            "optimizer": "bash.sh:217 --optimizer AdaGrad; main_Prototype_grad.py:466-467 "
            "Adagrad(lr)",
            "lr": "bash.sh:217 --learning_rate 0.001",
            "momentum": "main_Prototype_grad.py:467 (Adagrad: none)",
            "weight_decay": "main_Prototype_grad.py:467 (torch default 0)",
            "scheduler": "main_Prototype_grad.py:468 scheduler = None",
            "epochs": "bash.sh:217 --epochs 130",
            "batch": "main_Prototype_grad.py:36 --batch_size 64",
            "frames": "bash.sh:217 --num_frame 3",
        },
        note="bash.sh:217 is the only CREMA-D concat-fusion PMR command (the one "
        "conf/method/pmr.yaml takes alpha 2.0 from); it runs AdaGrad. The SGD commands "
        "(bash.sh:58,170) use FiLM / gated fusion",
    ),
    ("mmcosine", "cremad"): Schedule(
        **_sgd(
            lr=1e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="StepLR",
            scheduler_args={"step_size": 100, "gamma": 0.1},
            steps="once per epoch, after its training (main_CD.py:310,324)",
            epochs=200,
            batch=32,
            frames=1,
        ),
        source="official: GeWu-Lab/MMCosine_ICASSP23 @ 00ba0a9",
        kind="official",
        sources={
            "optimizer": "main_CD.py:262 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "main_CD.py:64 --learning_rate 0.001",
            "momentum": "main_CD.py:262",
            "weight_decay": "main_CD.py:262",
            "scheduler": "main_CD.py:65-66,265 StepLR(100, 0.1)",
            "epochs": "main_CD.py:61 --epochs 200",
            "batch": "main_CD.py:60 --batch_size 32",
            "frames": "dataset/dataset.py:230 pick_num = 1 (AVDataset_CD)",
        },
    ),
    ("lfm", "cremad"): Schedule(
        **_sgd(
            lr=1e-2,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="MultiStepLR",
            scheduler_args={"milestones": [69, 139], "gamma": 0.1},
            steps="once per epoch, BEFORE its training (Crema_epoch.py:196): StepLR(70) "
            "decays from 0-based epoch 69 = MultiStepLR([69, 139]) stepped at epoch end",
            epochs=200,
            batch=64,
            frames=1,
        ),
        source="official: njustkmg/NeurIPS24-LFM @ ad44fa0",
        kind="official",
        sources={
            "optimizer": "Crema_epoch.py:186-188 SGD(momentum, wc); data/crema.json:25-28",
            "lr": "data/crema.json:27 lr 1e-2",
            "momentum": "data/crema.json:26",
            "weight_decay": "data/crema.json:28 wc 1e-4",
            "scheduler": "Crema_epoch.py:190 StepLR(patience=70, 0.1), data/crema.json:35",
            "epochs": "data/crema.json:16 epoch_dict 200",
            "batch": "data/crema.json:17 batch_size 64",
            "frames": "dataset/CREMA.py:27 use_pre_frame = 1",
        },
    ),
    ("arl", "cremad"): Schedule(
        **_sgd(
            lr=1e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="MultiStepLR",
            scheduler_args={"milestones": [69, 149], "gamma": 0.1},
            steps="once per epoch, BEFORE its training (main_arl_variance.py:80): "
            "MultiStepLR([70, 150]) decays from 0-based epoch 69 = milestones [69, 149] "
            "stepped at epoch end",
            epochs=100,
            batch=64,
            frames=1,
        ),
        source="official: shicaiwei123/ICCV2025-ARL @ 358af4f",
        kind="official",
        sources={
            "optimizer": "main_arl_variance.py:271 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "main_arl_variance.py:47 --learning_rate 0.001",
            "momentum": "main_arl_variance.py:271",
            "weight_decay": "main_arl_variance.py:271",
            "scheduler": "main_arl_variance.py:48-49,272 MultiStepLR([70, 150], 0.1)",
            "epochs": "main_arl_variance.py:44 --epochs 100 (cramed_arl.sh:3 keeps it)",
            "batch": "main_arl_variance.py:43 --batch_size 64",
            "frames": "main_arl_variance.py:36 --fps 1",
        },
    ),
    ("inforeg", "cremad"): Schedule(
        **_sgd(
            lr=2e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler="StepLR",
            scheduler_args={"step_size": 30, "gamma": 0.1},
            steps="once per epoch, after its training (main.py:601)",
            epochs=50,
            batch=64,
            frames=3,
        ),
        source="official: GeWu-Lab/InfoReg_CVPR2025 @ 939b2ed",
        kind="official",
        sources={
            "optimizer": "main.py:714 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "main.py:43 --learning_rate 0.002",
            "momentum": "main.py:714",
            "weight_decay": "main.py:714",
            "scheduler": "main.py:44-45,715 StepLR(30, 0.1)",
            "epochs": "main.py:40 --epochs 50",
            "batch": "main.py:39 --batch_size 64",
            "frames": "main.py:34 --fps 3",
        },
    ),
    ("mmpareto", "cremad"): Schedule(
        **_sgd(
            lr=2e-3,
            momentum=0.9,
            weight_decay=1e-4,
            scheduler=None,
            scheduler_args={},
            steps="none: code/MMPareto.py:301 builds a StepLR(30, 0.1) that is never stepped",
            epochs=50,
            batch=64,
            frames=2,
        ),
        source="official: GeWu-Lab/MMPareto_ICML2024 @ a339db3",
        kind="official",
        sources={
            "optimizer": "code/MMPareto.py:296 SGD(momentum=0.9, weight_decay=1e-4)",
            "lr": "code/MMPareto.py:32 --learning_rate 0.002",
            "momentum": "code/MMPareto.py:296",
            "weight_decay": "code/MMPareto.py:296",
            "scheduler": "code/MMPareto.py:301 (no scheduler.step() in the file: constant LR)",
            "epochs": "code/MMPareto.py:29 --epochs 50 (code/script/mmpareto.sh keeps it)",
            "batch": "code/MMPareto.py:28 --batch_size 64",
            "frames": "code/dataset/av_dataset.py:92 pick_num = 2",
        },
    ),
    ("reconboost", "cremad"): Schedule(
        **_sgd(
            lr=1e-2,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="StepLR",
            scheduler_args={"step_size": 240, "gamma": 0.1},
            steps="x0.1 every 30 stages (train.py:449-451); a stage is 4 + 4 epochs "
            "(README.md:56-57), so StepLR(240) stepped per epoch",
            epochs=8008,
            batch=64,
            frames=1,
        ),
        source="official: huacong/ReconBoost @ 14ab57a",
        kind="official",
        sources={
            "optimizer": "train.py:296,371 SGD(momentum=0.9, weight_decay=5e-4) per phase",
            "lr": "README.md:59-60 --m_lr 0.01 --e_lr 0.01",
            "momentum": "train.py:296,371",
            "weight_decay": "train.py:296,371",
            "scheduler": "train.py:449-451 lr x0.1 when stage % 30 == 0",
            "epochs": "utils.py:5-8 check_status: stages 0..1000 (1001 x 8 epochs)",
            "batch": "README.md:53 --batch_size 64",
            "frames": "loaders/CramedDataset.py:30 fps = 1",
        },
        note="the official loop runs 1001 stages (utils.py:6 'stage < 1001'); its released "
        "CREMA-D checkpoint is from stage 99. Starts from pre-trained unimodal encoders "
        "(README.md:63 --use_pretrain)",
    ),
    **{
        (m, "cremad"): Schedule(**_BB_SCHEDULE) for m in ("amco", "gblending", "umt", "mbsd", "cml")
    },
    ("opm", "ks"): Schedule(
        optimizer="AdamW",
        lr=5e-5,
        momentum=None,
        weight_decay=0.01,
        scheduler="StepLR",
        scheduler_args={"step_size": 40, "gamma": 0.1},
        steps="once per epoch, after its training (code/main.py:174)",
        epochs=100,
        batch=32,
        frames=3,
        source="official: GeWu-Lab/BML_TPAMI2024 @ 4b3aa4f",
        kind="official",
        sources={
            "optimizer": "code/main.py:267 AdamW(weight_decay=0.01)",
            "lr": "code/config.py:26 learning_rate 5e-5",
            "momentum": "code/main.py:267 (AdamW: none)",
            "weight_decay": "code/main.py:267",
            "scheduler": "code/config.py:27,29, code/main.py:268 StepLR(40, 0.1)",
            "epochs": "code/config.py:23 epochs 100",
            "batch": "code/config.py:22 batch_size 32",
            "frames": "code/config.py:14 use_video_frames 3",
        },
        note="the official code ships a Kinetics-Sounds loader only (code/dataset/KS.py; "
        "code/scripts/train_opm.sh)",
    ),
    ("sample_valuation", "ks"): Schedule(
        optimizer="Adam",
        lr=5e-5,
        momentum=None,
        weight_decay=1e-4,
        scheduler="StepLR",
        scheduler_args={"step_size": 30, "gamma": 0.1},
        steps="once per epoch, after its training (code/sample_level.py:340)",
        epochs=60,
        batch=64,
        frames=3,
        source="official: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation @ 7ed12b0",
        kind="official",
        sources={
            "optimizer": "code/sample_level.py:50 --optimizer adam, :287-293 Adam(wd=1e-4)",
            "lr": "code/sample_level.py:52 --learning_rate 5e-05",
            "momentum": "code/sample_level.py:287-293 (Adam: none)",
            "weight_decay": "code/sample_level.py:292",
            "scheduler": "code/sample_level.py:55,58,296 StepLR(30, 0.1)",
            "epochs": "code/sample_level.py:42 --epochs 60",
            "batch": "code/sample_level.py:41 --batch_size 64",
            "frames": "code/datasets/dataloader.py:228 pick_num = 3",
        },
        note="the official code ships Kinetics-Sounds only",
    ),
}

# Why a method without an OFFICIAL entry runs the dataset reference (docs and report).
WITHOUT_OFFICIAL: dict[str, str] = {
    "baseline": "the dataset reference (OGM-GE's baseline)",
    "boost": "this library's method: the dataset reference (design document 5.1)",
    "boost_ogm": "this library's method: the dataset reference (design document 5.1)",
    "boost_cggm": "this library's method: the dataset reference",
    "staleness": "this library's method: the dataset reference",
    "unimodal": "the dataset reference",
    "linear_probe": "the dataset reference",
    "miles": "no official code",
    "agm": "the authors give alpha 1.5 and 'end_epoch 1500' (lihongcs/AGM issues #3, #5) but "
    "no optimizer, lr or batch ('in the paper'); the code defaults (lihong2303/AGM_ICCV2023 "
    "@ 5a65542 utils/config.py:69-71: batch 16, 10 epochs, lr 1e-5) are not a CREMA-D recipe",
    "cggm": "no audio-visual script (zrguo/CGGM @ 21e428c: Food-101, MOSI, ...)",
    "greedy": "no CREMA-D schedule (nyukat/greedy_multimodal_learning @ a190e03: ModelNet40, "
    "README.md:12, configs/training.gin)",
    "opm": "no CREMA-D schedule (GeWu-Lab/BML_TPAMI2024 @ 4b3aa4f ships a Kinetics-Sounds "
    "loader only; its KS schedule is in the table above)",
    "sample_valuation": "no CREMA-D schedule (the official code ships Kinetics-Sounds only; "
    "its KS schedule is in the table above)",
}


def real_datasets() -> list[str]:
    """The datasets with a reference protocol (every ``conf/dataset`` but ``synthetic``)."""
    return sorted(REFERENCE)


def schedule(protocol: str, method: str, dataset: str) -> Schedule | None:
    """The schedule of ``method`` on ``dataset`` under ``protocol`` (None: no entry, e.g. the
    synthetic task keeps the library's default recipe)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    ref = REFERENCE.get(dataset)
    if ref is None:
        return None
    if protocol == "shared":
        return ref
    family = "cremad" if dataset.startswith("cremad") else dataset
    own = OFFICIAL.get((method, family))
    if own is None:
        return ref
    if dataset != family and ref.frames != own.frames:  # cremad_3f: the variant's 3 frames
        sources = {**own.sources, "frames": ref.sources["frames"]}
        own = replace(own, frames=ref.frames, sources=sources)
    return own


def method_names() -> list[str]:
    """The method configs shipped in ``asgml.conf`` (``conf/method/*.yaml``)."""
    folder = importlib.resources.files("asgml.conf") / "method"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


HEADER = (
    "# @package _global_\n"
    "# GENERATED from asgml/run/protocols.py, {what}. Do not edit: change the table\n"
    "# there and run `python -m asgml.run.protocols` (tests/workflow/test_protocols.py\n"
    "# checks that these files match the table).\n"
)


def _config_text(sched: Schedule, what: str) -> str:
    body = yaml.safe_dump(sched.node(), sort_keys=False, width=1000, default_flow_style=False)
    return HEADER.format(what=what) + body


def rendered_configs() -> dict[str, str]:
    """Every generated protocol config: ``{path under conf/: YAML text}``.

    ``protocol_reference/<dataset>.yaml``: the dataset's reference schedule (both
    protocols); ``protocol_official/official/<method>/<dataset>.yaml``: a method's own
    schedule, applied over the reference under ``protocol=official`` only.
    """
    out: dict[str, str] = {}
    for ds, ref in REFERENCE.items():
        out[f"{REFERENCE_GROUP}/{ds}.yaml"] = _config_text(ref, f"REFERENCE[{ds!r}]")
    for (method, family), _ in sorted(OFFICIAL.items()):
        for ds in REFERENCE:
            if ds == family or (family == "cremad" and ds.startswith("cremad")):
                sched = schedule("official", method, ds)
                assert sched is not None
                what = f"OFFICIAL[({method!r}, {family!r})]"
                out[f"{OFFICIAL_GROUP}/official/{method}/{ds}.yaml"] = _config_text(sched, what)
    return out


def write_configs(conf_dir: Path) -> list[Path]:
    """(Re)write the generated protocol configs under ``conf_dir``; stale ones are removed."""
    written = []
    wanted = rendered_configs()
    for group in (REFERENCE_GROUP, OFFICIAL_GROUP):
        for old in (conf_dir / group).rglob("*.yaml") if (conf_dir / group).is_dir() else ():
            if old.relative_to(conf_dir).as_posix() not in wanted:
                old.unlink()
    for rel, text in wanted.items():
        path = conf_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


# ------------------------------------------------------------------ building the model
def drop_unset(node: DictConfig | None) -> DictConfig | None:
    """``node`` (an optimizer or scheduler config) without its null-valued arguments."""
    if node is None or not isinstance(node, DictConfig):
        return node
    keep = {k: v for k, v in node.items() if not (v is None and not str(k).startswith("_"))}
    out = OmegaConf.create(keep)
    assert isinstance(out, DictConfig)
    return out


# ------------------------------------------------------------------ start-up block
def _task_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").strip()


def _touches(key: str, cfg_key: str) -> bool:
    return key == cfg_key or cfg_key.startswith(key + ".") or key.startswith(cfg_key + ".")


def _has_key(node: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def preset_keys(experiment: str | None) -> dict[str, Any]:
    """The YAML body of ``conf/experiment/<experiment>.yaml`` ({} for none or unknown)."""
    if not experiment or experiment == "null":
        return {}
    path = importlib.resources.files("asgml.conf") / "experiment" / f"{experiment}.yaml"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}


def _hydra_context(cfg: DictConfig) -> tuple[list[str] | None, dict[str, Any]]:
    """(command-line overrides, group choices) of the running job, if Hydra runs it."""
    hydra_node = cfg.get("hydra") if "hydra" in cfg else None
    if hydra_node is not None:
        return list(hydra_node.overrides.task), dict(hydra_node.runtime.choices)
    try:
        if HydraConfig.initialized():
            hc = HydraConfig.get()
            return list(hc.overrides.task), dict(hc.runtime.choices)
    except Exception:  # pragma: no cover - no Hydra context
        pass
    return None, {}


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _expected(sched: Schedule, name: str) -> Any:
    node = sched.node()
    value = node
    for part in FIELDS[name].split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def value_origins(
    cfg: DictConfig,
    overrides: Sequence[str] | None = None,
    choices: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Where each schedule value of ``cfg`` came from: ``command line``, ``preset <name>``,
    the protocol table's source, or the library / method defaults."""
    if overrides is None or choices is None:
        found_overrides, found_choices = _hydra_context(cfg)
        overrides = overrides if overrides is not None else found_overrides
        choices = choices if choices is not None else found_choices
    # a group choice (dataset=cremad) selects configs; it does not set a value itself
    groups = set(choices or {}) | CONFIG_GROUPS
    keys = [k for k in (_task_key(o) for o in overrides or ()) if k not in groups]
    experiment = (choices or {}).get("experiment")
    preset = preset_keys(experiment)
    proto = cfg.get("protocol") or {}
    sched = None
    if proto.get("name") in PROTOCOLS:
        sched = schedule(str(proto.name), str(cfg.method.get("name")), str(cfg.dataset.get("name")))
    out: dict[str, str] = {}
    for name, cfg_key in FIELDS.items():
        if any(_touches(k, cfg_key) for k in keys):
            out[name] = "command line"
        elif preset and _has_key(preset, cfg_key):
            out[name] = f"preset experiment={experiment}"
        elif sched is not None and _plain(OmegaConf.select(cfg, cfg_key)) == _expected(sched, name):
            out[name] = sched.source_of(name)
        else:
            out[name] = DEFAULT_HOME[name]
    if overrides is None:
        out = {k: v + " (command line not known)" for k, v in out.items()}
    return out


def protocol_lines(cfg: DictConfig, overrides: Sequence[str] | None = None) -> list[str]:
    """The start-up block's protocol line and, per schedule value, its value and where it
    came from (fields the config lacks, e.g. frames of a dataset without video, are left out)."""
    proto = cfg.get("protocol") or {}
    name = proto.get("name")
    if name is None:
        return []
    dataset = cfg.dataset.get("name")
    method = cfg.method.get("name")
    sched = schedule(str(name), str(method), str(dataset)) if name in PROTOCOLS else None
    head = f"protocol  {name} -> " + (
        sched.source
        if sched is not None
        else f"no schedule for dataset {dataset} (the library's default recipe)"
    )
    origins = value_origins(cfg, overrides=overrides)
    lines = [head]
    for key, cfg_key in FIELDS.items():
        if OmegaConf.select(cfg, cfg_key, default="__absent__") == "__absent__":
            continue
        value = _plain(OmegaConf.select(cfg, cfg_key))
        if key == "scheduler" and isinstance(value, Mapping):
            value = str(value.get("_target_", "?")).rsplit(".", 1)[-1]
        elif key == "optimizer":
            value = str(value).rsplit(".", 1)[-1]
        shown = "not passed" if value is None and key == "momentum" else value
        lines.append(f"  {key:<12} {str(shown):<10} <- {origins[key]}")
    return lines


# ------------------------------------------------------------------ documentation
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _sched_text(s: Schedule) -> str:
    if s.scheduler is None:
        return "none"
    args = ", ".join(f"{k}={v}" for k, v in s.scheduler_args.items())
    return f"{s.scheduler}({args})"


def protocols_markdown(methods: Iterable[str] | None = None) -> str:
    """The docs' protocol table (``<!-- asgml:protocols -->`` in ``docs/recipes.md``)."""
    methods = list(methods if methods is not None else method_names())
    lines = [
        "### Dataset reference protocols (`protocol=shared`, and `official` without an "
        "official schedule)",
        "",
        "| dataset | optimizer | lr | momentum | wd | scheduler | epochs | batch | frames "
        "| source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, s in REFERENCE.items():
        lines.append(
            f"| {ds} | {s.optimizer} | {_fmt(s.lr)} | {_fmt(s.momentum)} | "
            f"{_fmt(s.weight_decay)} | {_sched_text(s)} | {s.epochs} | {s.batch} | "
            f"{_fmt(s.frames)} | {s.source}" + (f"; {s.note}" if s.note else "") + " |"
        )
    lines += [
        "",
        "### Official schedules (`protocol=official`, the default)",
        "",
        "CREMA-D entries serve `cremad` and `cremad_3f` (whose 3 frames are the variant's "
        "own). Every other method x dataset runs the dataset reference above.",
        "",
        "| method | dataset | optimizer | lr | momentum | wd | scheduler (where it steps) "
        "| epochs | batch | frames | sources |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (m, ds), s in sorted(OFFICIAL.items()):
        where = "; ".join(f"{k}: {v}" for k, v in s.sources.items())
        note = f" Note: {s.note}." if s.note else ""
        sched = s.steps if s.scheduler is None else f"{_sched_text(s)} ({s.steps})"
        lines.append(
            f"| {m} | {ds} | {s.optimizer} | {_fmt(s.lr)} | {_fmt(s.momentum)} | "
            f"{_fmt(s.weight_decay)} | {sched} | {s.epochs} | {s.batch} | "
            f"{_fmt(s.frames)} | {s.source}: {where}.{note} |"
        )
    lines += [
        "",
        "### Methods without an official schedule",
        "",
        "| method | why the dataset reference runs |",
        "|---|---|",
    ]
    own = {m for m, _ in OFFICIAL}
    for m in methods:
        if m not in own:
            lines.append(f"| {m} | {WITHOUT_OFFICIAL.get(m, 'no official schedule recorded')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m asgml.run.protocols [CONF_DIR]
    target = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(str(importlib.resources.files("asgml.conf")))
    )
    for p in write_configs(target):
        print(f"wrote {p}")
