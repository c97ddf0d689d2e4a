"""Exact Shapley values of modalities (the imbalance measure BalanceBenchmark reports).

Each modality is a player; the value of a coalition ``S`` is a score (e.g. fused test
accuracy) of the model when only the modalities in ``S`` are present. The Shapley value of
modality ``i`` is its average marginal contribution over all orders in which modalities
could be added::

    phi_i = sum_{S subset of N \\ {i}} |S|! (n - |S| - 1)! / n! * (v(S u {i}) - v(S))

The values sum to ``v(N) - v(empty)`` (efficiency). With ``n`` modalities ``v`` is evaluated
on all ``2**n`` subsets, once each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import combinations
from math import factorial

Coalition = frozenset[str]


def all_subsets(players: Sequence[str]) -> list[Coalition]:
    """Every subset of ``players`` (including the empty and the full set), smallest first."""
    return [frozenset(c) for r in range(len(players) + 1) for c in combinations(players, r)]


def shapley_values(
    value_fn: Callable[[Coalition], float], modalities: Iterable[str]
) -> dict[str, float]:
    """Exact Shapley value of each modality under the coalition value ``value_fn``.

    ``value_fn`` receives a ``frozenset`` of modality names (the present ones) and returns a
    number; it is called once per subset.
    """
    players = list(dict.fromkeys(modalities))
    if not players:
        raise ValueError("shapley_values needs at least one modality")
    n = len(players)
    values = {s: float(value_fn(s)) for s in all_subsets(players)}
    out: dict[str, float] = {}
    for i in players:
        others = [p for p in players if p != i]
        phi = 0.0
        for r in range(n):
            weight = factorial(r) * factorial(n - r - 1) / factorial(n)
            for c in combinations(others, r):
                s = frozenset(c)
                phi += weight * (values[s | {i}] - values[s])
        out[i] = phi
    return out


def coalition_name(coalition: Iterable[str], order: Sequence[str] | None = None) -> str:
    """A stable printable name of a coalition: ``"audio+visual"``; ``"none"`` when empty."""
    members = list(coalition)
    if order is not None:
        members = [m for m in order if m in set(members)]
    else:
        members = sorted(members)
    return "+".join(members) if members else "none"
