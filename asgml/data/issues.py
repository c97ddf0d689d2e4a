"""A record of what a datamodule skipped or repaired in its data.

Every datamodule check that does not stop the run (clips missing on disk, a clip listed
twice, a clip in both train and test, an MMSA length outside the sequence, ...) goes through
`DataIssues.record`: one warning in the run log (``asgml.data`` logger, i.e. the
run's ``train.log``) and an entry ``{split: {kind: {"count", "examples"}}}`` that
``asgml.train`` writes to ``metrics.json`` as ``data_issues``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("asgml.data")

MAX_EXAMPLES = 5


class DataIssues:
    """Skipped or repaired items per split and kind (count + the first few examples)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.items: dict[str, dict[str, dict[str, Any]]] = {}

    def record(self, split: str, kind: str, examples: Iterable[Any], count: int, what: str) -> None:
        """Add ``count`` items of ``kind`` in ``split``; ``what`` says what happened to them."""
        if count <= 0:
            return
        ex = [str(e) for e in list(examples)[:MAX_EXAMPLES]]
        entry = self.items.setdefault(split, {}).setdefault(
            kind, {"count": 0, "examples": [], "action": what}
        )
        entry["count"] += int(count)
        entry["examples"] = (entry["examples"] + ex)[:MAX_EXAMPLES]
        log.warning(
            "%s %s: %d %s (%s), e.g. %s", self.name, split, count, kind, what, ", ".join(ex)
        )

    def as_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{split: {kind: {"count", "examples", "action"}}}`` (empty when nothing was found)."""
        return {s: {k: dict(v) for k, v in kinds.items()} for s, kinds in self.items.items()}

    def __bool__(self) -> bool:
        return bool(self.items)
