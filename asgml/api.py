"""A Python API: run methods on a dataset over seeds in one call, from a notebook or script.

    import asgml

    runs = asgml.fit(dataset="synthetic", method=["baseline", "boost_ogm"], seeds=[0, 1],
                     trainer__max_epochs=5)
    runs[["method.name", "seed", "test/acc", "test/acc_audio", "test/acc_visual"]]

``fit`` composes the same Hydra config as ``python -m asgml.train`` (Hydra's compose API
over ``conf/train.yaml`` with the same overrides), runs each job with
``asgml.run.training.run`` (what the command line runs) and returns the jobs' results as
a ``pandas.DataFrame`` built by ``asgml.report.collect`` (one row per run: config
keys, ``test/...`` metrics, ``val_acc_best``, ``run_dir``), which ``asgml.report.table``
turns into the grouped report table. Every run writes its usual folder (``metrics.json``,
checkpoints, ``csv/metrics.csv``) under ``root``.

What the command line writes as ``key=value`` is passed in ``overrides`` as the same strings,
or as keyword arguments with ``__`` for the dots (``trainer__max_epochs=5`` is
``trainer.max_epochs=5``; ``method__boost__alpha=1.0`` is ``method.boost.alpha=1.0``).
A missing ``data_dir`` fails before anything is trained
(``asgml.run.precheck.check_data``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from asgml.run.precheck import check_data
from asgml.run.rundir import run_stamp

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["compose_config", "fit", "override_value"]


def override_value(value: Any) -> str:
    """``value`` in Hydra's override syntax: ``true``/``false``, ``null``, lists as
    ``[a,b]``, dicts as ``{k:v}``, anything else as ``str(value)``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and any(c in value for c in " ,[]{}()'\"=:"):
        return json.dumps(value)  # quoted: Hydra reads it as one string
    return str(value)


def compose_config(
    overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (what ``python -m asgml.train
    <overrides>`` runs), its ``paths.output_dir`` set to ``output_dir``."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def fit(
    dataset: str = "synthetic",
    method: str | Sequence[str] = "baseline",
    seeds: int | Sequence[int] = (42,),
    overrides: Sequence[str] = (),
    root: str | Path | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Train and test each ``method`` on ``dataset`` with each seed; the runs' results.

    Args:
        dataset: a ``conf/dataset`` option (``synthetic``, ``cremad``, ...).
        method: a ``conf/method`` option, or a list of them.
        seeds: a seed or a list of seeds.
        overrides: command-line overrides (``["trainer.max_epochs=5", "data_dir=/data"]``).
        root: the folder of the runs (one sub-folder ``<dataset>-<method>-s<seed>`` each);
            default ``<paths.log_dir>/fit/<time stamp>``. Runs already there are returned too.
        **options: more overrides, ``__`` for the dots (``trainer__max_epochs=5``).

    Returns:
        one row per run under ``root`` (``asgml.report.collect``), sorted by method and
        seed.
    """
    from asgml.report import collect  # lazy: pandas and the report only when called
    from asgml.run.training import run  # lazy: torch and Lightning only when called

    methods = [method] if isinstance(method, str) else list(method)
    seed_list = [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]
    if not methods or not seed_list:
        raise ValueError(f"fit: no runs (method={method!r}, seeds={seeds!r})")
    extra = [
        *overrides,
        *(f"{k.replace('__', '.')}={override_value(v)}" for k, v in options.items()),
    ]
    if root is None:
        log_dir = compose_config([f"dataset={dataset}", *extra]).paths.log_dir
        root = Path(log_dir) / "fit" / run_stamp()
    root = Path(root)
    configs = []
    for name in methods:  # compose (and check) every run before the first one trains
        for seed in seed_list:
            run_dir = root / f"{dataset}-{name}-s{seed}"
            cfg = compose_config(
                [f"dataset={dataset}", f"method={name}", f"seed={seed}", *extra], run_dir
            )
            check_data(cfg)
            configs.append(cfg)
    for cfg in configs:
        run(cfg)
    runs = collect(root, progress=False)
    return runs.sort_values(["method.name", "seed"], kind="stable").reset_index(drop=True)
