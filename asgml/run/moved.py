"""Where ``_target_`` classes named by stored configs live now.

A checkpoint keeps the resolved config of the run that wrote it (``asgml_config``), with the
``_target_`` of every class as it was named then. When a class moves (the layout of
``asgml/`` into ``core``/``methods``/``run``/``report``) or is renamed, this map rewrites the
old names where a stored config is read (`asgml.run.evaluate.load_checkpoint`,
`asgml.run.resume.check_resume`), before the allow-list check
(`asgml.run.trust`) and before anything is instantiated.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, MutableSequence
from typing import Any

log = logging.getLogger("asgml")

# old module -> new module (a `_target_` under the old module moves to the new one)
MOVED_MODULES: dict[str, str] = {
    "asgml.module": "asgml.core.module",
    "asgml.types": "asgml.core.types",
    "asgml.step_plan": "asgml.core.step_plan",
    "asgml.train_set_plan": "asgml.core.train_set_plan",
    "asgml.callbacks.base": "asgml.core.base",
    "asgml.callbacks.toolkit": "asgml.core.toolkit",
    "asgml.callbacks": "asgml.methods",  # every method module: asgml.callbacks.<m>
    "asgml.checkpointing": "asgml.run.checkpointing",
    "asgml.csv_logger": "asgml.run.csv_logger",
    "asgml.rundir": "asgml.run.rundir",
    "asgml.sweep_report": "asgml.run.sweep_report",
    "asgml.tracking": "asgml.run.tracking",
}

# old class path -> new class path (renamed classes)
RENAMED_TARGETS: dict[str, str] = {
    "asgml.data.avdataset.AVDataModule": "asgml.data.avdataset.AVEKSDataModule",
}


def current_target(target: str) -> str:
    """The present name of a (possibly old) ``_target_`` path; unknown names unchanged."""
    if target in RENAMED_TARGETS:
        return RENAMED_TARGETS[target]
    module, _, name = target.rpartition(".")
    # the longest old module that is `module` or a package above it
    for old in sorted(MOVED_MODULES, key=len, reverse=True):
        if module == old or module.startswith(old + "."):
            return MOVED_MODULES[old] + module[len(old) :] + "." + name
    return target


def upgrade_targets(node: Any, path: str = "") -> list[tuple[str, str, str]]:
    """Rewrite, in place, every old ``_target_`` of a plain-container config (as stored in a
    checkpoint); returns ``(key path, old, new)`` for each one rewritten (logged)."""
    changed: list[tuple[str, str, str]] = []
    if isinstance(node, MutableMapping):
        for k in list(node):
            key = f"{path}.{k}" if path else str(k)
            v = node[k]
            if k == "_target_" and isinstance(v, str):
                new = current_target(v)
                if new != v:
                    node[k] = new
                    changed.append((key, v, new))
            else:
                changed += upgrade_targets(v, key)
    elif isinstance(node, MutableSequence):
        for i, v in enumerate(node):
            changed += upgrade_targets(v, f"{path}[{i}]")
    if changed and not path:
        log.info(
            "stored config: %d moved _target_(s) read under their present names, e.g. %s -> %s",
            len(changed),
            changed[0][1],
            changed[0][2],
        )
    return changed
