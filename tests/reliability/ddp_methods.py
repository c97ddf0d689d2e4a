"""One DDP rank (CPU, gloo) training every gradient-editing method in turn on the tiny
synthetic task; started twice by ``test_reliability_ddp.py`` with the torchrun-style
environment (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``), so the two processes and
their process group are created once for all methods.

``python -m tests.reliability.ddp_methods OUT_DIR METHOD [METHOD ...]`` writes
``OUT_DIR/<method>/rank<r>.pt`` (see :class:`tests.reliability.rank_dump.RankDump`) or, if
the method fails, ``OUT_DIR/<method>/error<r>.txt``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from asgml.train import run
from tests.conftest import compose_cfg

# tiny MLP encoders on vector inputs for both modalities
TINY = [
    override
    for m, drop in (
        ("audio", ["in_channels", "width"]),
        ("visual", ["in_channels", "width", "temporal"]),
    )
    for override in (
        f"dataset.modalities.{m}.kind=vector",
        f"++dataset.modalities.{m}.length=2",
        f"++dataset.modalities.{m}.dim=8",
        f"dataset.encoder_choices.{m}._target_=asgml.models.encoders.MLPEncoder",
        *(f"~dataset.encoder_choices.{m}.{k}" for k in drop),
        f"+dataset.encoder_choices.{m}.input_dim=8",
        f"+dataset.encoder_choices.{m}.hidden_dim=16",
        f"+dataset.encoder_choices.{m}.feature_dim=16",
    )
]

# per method: what makes it act within the 4 steps of the run
EXTRA = {
    "ogm": ["method.ogm.variant=generalized"],
    "boost": ["method.probe.eval_freq=1"],
    "boost_ogm": ["method.probe.eval_freq=1", "method.ogm.variant=generalized"],
    "boost_cggm": ["method.probe.eval_freq=1"],
    "arl": ["method.arl.start=-1"],
    "staleness": ["method.staleness.update_freq=2"],
    # MLA forwards one modality per step: the other encoder has no gradient
    "mla": ["trainer.strategy=ddp_find_unused_parameters_true"],
    "opm": ["method.opm.modulation_starts=0", "method.opm.p_exe=1.0"],
    # epoch 1 trains on a valued, resampled train set (the plan must agree across ranks)
    "sample_valuation": ["method.valuation.warmup=1"],
}


def main(out_dir: str, methods: list[str]) -> None:
    rank = int(os.environ["LOCAL_RANK"])
    for method in methods:
        out = Path(out_dir) / method
        out.mkdir(parents=True, exist_ok=True)
        try:
            cfg = compose_cfg(
                [
                    f"method={method}",
                    "trainer=ddp_cpu",
                    "trainer.strategy=ddp",
                    "trainer.max_epochs=2",
                    "trainer.limit_train_batches=2",
                    "trainer.limit_val_batches=1",
                    "trainer.deterministic=true",
                    "trainer.log_every_n_steps=1",
                    "test=false",
                    "+callbacks.rank_dump._target_=tests.reliability.rank_dump.RankDump",
                    f"+callbacks.rank_dump.out_dir={out}",
                    *TINY,
                    *EXTRA.get(method, []),
                ],
                output_dir=out / "run",
            )
            run(cfg)
        except Exception:  # recorded for the test, which names the method
            (out / f"error{rank}.txt").write_text(traceback.format_exc())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
