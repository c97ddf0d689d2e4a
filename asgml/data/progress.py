"""A progress bar for long loops over data (cache building, evaluation)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enable: bool = True,
) -> Iterator[T]:
    """``iterable`` with a tqdm bar on stderr (count, rate, ETA); the plain iterable when
    ``enable`` is false. Off a terminal (a batch job's log) it redraws every 30 s at most."""
    if not enable:
        yield from iterable
        return
    interval = 0.1 if sys.stderr.isatty() else 30.0
    yield from tqdm(
        iterable, total=total, desc=desc, unit=unit, mininterval=interval, dynamic_ncols=True
    )
