"""Exact Shapley values on hand-computed examples."""

from __future__ import annotations

import pytest

from asgml.report.shapley import all_subsets, coalition_name, shapley_values


def test_two_players_hand_computed() -> None:
    v = {(): 0.1, ("a",): 0.5, ("b",): 0.3, ("a", "b"): 0.7}
    phi = shapley_values(lambda s: v[tuple(sorted(s))], ["a", "b"])
    # phi_a = 1/2 [(0.5 - 0.1) + (0.7 - 0.3)], phi_b = 1/2 [(0.3 - 0.1) + (0.7 - 0.5)]
    assert phi == pytest.approx({"a": 0.4, "b": 0.2})


def test_three_players_hand_computed() -> None:
    v = {
        (): 0.0,
        ("a",): 0.6,
        ("b",): 0.2,
        ("c",): 0.1,
        ("a", "b"): 0.7,
        ("a", "c"): 0.6,
        ("b", "c"): 0.3,
        ("a", "b", "c"): 0.8,
    }
    calls: list[frozenset[str]] = []

    def value(s: frozenset[str]) -> float:
        calls.append(s)
        return v[tuple(sorted(s))]

    phi = shapley_values(value, ["a", "b", "c"])
    # averages of marginal contributions over the 6 orders, worked out by hand
    assert phi == pytest.approx({"a": 3.2 / 6, "b": 1.1 / 6, "c": 0.5 / 6})
    assert sum(phi.values()) == pytest.approx(v[("a", "b", "c")] - v[()])  # efficiency
    assert len(calls) == 8 and len(set(calls)) == 8  # each subset evaluated once


def test_symmetric_and_dummy_players() -> None:
    phi = shapley_values(lambda s: float(len(s & {"x", "y"})), ["x", "y", "dummy"])
    assert phi == pytest.approx({"x": 1.0, "y": 1.0, "dummy": 0.0})


def test_helpers() -> None:
    assert len(all_subsets(["a", "b", "c"])) == 8
    assert coalition_name(frozenset({"visual", "audio"}), ["audio", "visual"]) == "audio+visual"
    assert coalition_name(frozenset()) == "none"
    with pytest.raises(ValueError):
        shapley_values(lambda s: 0.0, [])
