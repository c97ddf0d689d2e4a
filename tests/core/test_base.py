"""The method contract's shared plumbing (``asgml.core.base.BalancingCallback``):
declarative checkpoint state, the range check, the epoch window, and the Lightning
``on_after_backward`` that reaches ``on_train_gradients``."""

from __future__ import annotations

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import EpochWindow
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader


class Counting(BalancingCallback):
    state_attrs = ("count", "history")

    def __init__(self) -> None:
        self.count = 0
        self.history: list[int] = []


class Stateless(BalancingCallback):
    pass


def test_state_attrs_round_trip_and_only_declaring_classes_are_stateful() -> None:
    a = Counting()
    a.count, a.history = 3, [1, 2]
    state = a.state_dict()
    assert state == {"count": 3, "history": [1, 2]}
    b = Counting()
    b.load_state_dict(state)
    assert (b.count, b.history) == (3, [1, 2])
    b.load_state_dict({})  # a missing entry keeps its value
    assert b.count == 3
    # Lightning counts a callback as stateful when it overrides state_dict: only Counting does
    assert is_overridden("state_dict", instance=a, parent=Callback)
    assert not is_overridden("state_dict", instance=Stateless(), parent=Callback)
    assert not is_overridden("state_dict", instance=GradRecorder(), parent=Callback)


def test_check_option_names_the_key_only() -> None:
    BalancingCallback.check_option("alpha", 0.5, lambda v: v >= 0, ">= 0")
    with pytest.raises(ValueError, match=r"^alpha must be >= 0, got -1$"):
        BalancingCallback.check_option("alpha", -1, lambda v: v >= 0, ">= 0")
    with pytest.raises(ValueError, match=r"^mode must be a or b, got 'c'$"):
        BalancingCallback.check_option("mode", "c", False, "a or b")


def test_epoch_window() -> None:
    w = BalancingCallback.epoch_window(2, 4)
    assert w == EpochWindow(2, 4)
    assert [e in w for e in range(6)] == [False, False, True, True, True, False]
    with pytest.raises(ValueError):
        BalancingCallback.epoch_window(5, 4)


class Calls(BalancingCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_gradients(self, trainer, pl_module, out) -> None:  # noqa: D102
        assert all(p.grad is not None for p in pl_module.encoder_parameters("audio"))
        self.steps.append(out.step)


def test_gradient_hook_runs_once_per_step_from_on_after_backward() -> None:
    calls = Calls()
    module = tiny_mlp_module()
    fit(module, vector_loader(), [calls], max_steps=3)
    assert calls.steps == [0, 1, 2]
    assert module.step_output is None  # held only while the backward pass runs
