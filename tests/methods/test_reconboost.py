"""ReconBoost: boosting loss, GA term, stage schedule, which parameters train in a phase,
optimizer reset, test-time ensemble, 2- and 3-modality runs, resume."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from asgml.core.module import MultimodalModule
from asgml.methods.reconboost import (
    BOOST,
    HEAD,
    RECTIFY,
    ReconBoost,
    ga_loss,
    joined,
    reconboost_loss,
    stage_of,
)
from asgml.models.encoders import MLPEncoder
from asgml.train import run
from tests.helpers import GradRecorder, fit, tiny_mlp_module, vector_loader
from tests.methods.resume_check import assert_resume_exact

Z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
Y = torch.tensor([2, 0])
ENS = torch.tensor([[0.0, 0.0, math.log(3.0)], [math.log(2.0), 0.0, 0.0]])


def test_boosting_loss_hand_computed() -> None:
    # sample 0: log p_y = -log(1 + e^-1 + e^-2), ensemble weight 3 / 5
    # sample 1: log p_y = -log 3, ensemble weight 2 / 4; C = 3 classes, w1 = 5, w2 = 1
    lp0 = -math.log(1 + math.exp(-1) + math.exp(-2))
    lp1 = -math.log(3.0)
    expect = ((-5 + 0.6) * lp0 / 3 + (-5 + 0.5) * lp1 / 3) / 2
    assert reconboost_loss(Z, ENS, Y, 5.0, 1.0).item() == pytest.approx(expect, rel=1e-6)
    assert expect == pytest.approx(1.1228703, rel=1e-6)
    # the official expression (train.py:339-340): one-hot target, .mean(-1), then the batch mean
    target = F.one_hot(Y, 3).float()
    official = (
        -5.0 * (target * Z.log_softmax(1)).mean(-1)
        + 1.0 * (target * ENS.softmax(1) * Z.log_softmax(1)).mean(-1)
    ).mean()
    assert reconboost_loss(Z, ENS, Y, 5.0, 1.0).item() == pytest.approx(official.item())
    # no other learner yet: the official constant c0 (softmax over one column = 1)
    assert reconboost_loss(Z, None, Y, 5.0, 1.0).item() == pytest.approx(
        (-4 * lp0 / 3 - 4 * lp1 / 3) / 2
    )


def test_boosting_loss_gradient_reaches_the_learner_only() -> None:
    z = Z.clone().requires_grad_(True)
    e = ENS.clone().requires_grad_(True)
    reconboost_loss(z, e, Y, 5.0, 1.0).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert e.grad is None  # the ensemble of the others is a constant


def test_ga_term_hand_computed_and_gradient_free() -> None:
    z = torch.zeros(1, 2, requires_grad=True)
    prev = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    v = ga_loss(z, prev)  # [0.5, 0.5] vs [0.75, 0.25]
    assert v.item() == pytest.approx(0.0625)
    assert not v.requires_grad


def test_stage_schedule_and_ensemble_members() -> None:
    phases = [stage_of(e, 2, 1) for e in range(7)]
    assert phases == [
        (0, BOOST),
        (0, BOOST),
        (0, RECTIFY),
        (1, BOOST),
        (1, BOOST),
        (1, RECTIFY),
        (2, BOOST),
    ]
    mods = ["a", "v", "t"]
    cb = ReconBoost(epochs_per_stage=1, correct_epoch=1)
    assert [cb.schedule(e, mods)[2] for e in range(0, 8, 2)] == ["a", "v", "t", "a"]
    assert joined(mods, 0, BOOST, warm_start=True) == mods
    assert joined(mods, 0, BOOST, warm_start=False) == []
    assert joined(mods, 0, RECTIFY, warm_start=False) == ["a"]
    assert joined(mods, 1, RECTIFY, warm_start=False) == ["a", "v"]
    assert joined(mods, 3, BOOST, warm_start=False) == mods


class OptimizerStateRecorder(GradRecorder):
    """Also records, per step, how many parameters carry optimizer state (momentum)."""

    def __init__(self) -> None:
        super().__init__()
        self.n_state: list[int] = []

    def on_train_gradients(self, trainer, pl_module, out) -> None:
        super().on_train_gradients(trainer, pl_module, out)
        self.n_state.append(len(trainer.optimizers[0].state))


def _fit(mods, steps, **kw):
    module = tiny_mlp_module(mods)
    cb = ReconBoost(epochs_per_stage=1, correct_epoch=1, **kw)
    rec = OptimizerStateRecorder()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    fit(module, vector_loader(mods), [cb, rec], max_steps=steps)  # 4 steps per epoch
    return module, cb, rec, before


def _touched(names, prefix):
    return any(n.startswith(prefix) for n in names)


@pytest.mark.parametrize("mods", [("audio", "visual"), ("audio", "visual", "text")])
def test_phases_train_the_intended_parameters(mods) -> None:
    n = len(mods)
    _, _, rec, _ = _fit(mods, 4 * (2 * n))  # every stage once
    for step, grads in enumerate(rec.grads):
        stage, phase = divmod(step // 4, 2)
        names = set(grads)
        assert not _touched(names, "fusion."), step  # the module's fusion layer is unused
        assert _touched(names, f"{HEAD}.shared."), step  # the shared head always trains
        if phase == 0:  # boosting: the stage's modality only; beta has no gradient
            m = mods[stage % n]
            for k in mods:
                assert _touched(names, f"encoders.{k}.") == (k == m), (step, k)
            assert f"{HEAD}.boost_rate" not in names, step
        else:  # rectification: every encoder, the head and beta
            assert all(_touched(names, f"encoders.{k}.") for k in mods), step
            assert f"{HEAD}.boost_rate" in names, step


def test_boosting_leaves_the_other_encoders_and_beta_unchanged() -> None:
    module, _, _, before = _fit(("audio", "visual"), 4)  # stage 0 boosting epoch: audio
    after = dict(module.named_parameters())
    for n, p in before.items():
        changed = not torch.equal(p, after[n].detach())
        if n.startswith("encoders.audio.") or n.startswith(f"{HEAD}.shared."):
            assert changed, n
        elif (
            n.startswith("encoders.visual.") or n == f"{HEAD}.boost_rate" or n.startswith("fusion.")
        ):
            assert not changed, n  # no gradient: no update, no weight decay


def test_optimizer_state_is_reset_at_each_phase_change() -> None:
    _, cb, rec, _ = _fit(("audio", "visual"), 9)
    # momentum buffers exist from the second step of a phase; the first step of the next
    # phase (steps 4 and 8) starts from an empty state, as a new official optimizer
    assert rec.n_state[0] == 0 and rec.n_state[3] > 0
    assert rec.n_state[4] == 0 and rec.n_state[5] > 0
    assert rec.n_state[8] == 0
    assert cb.state_dict()["phase_key"] == [1, BOOST]
    _, _, keep, _ = _fit(("audio", "visual"), 9, reset_optimizer=False)
    assert keep.n_state[4] > 0


def test_losses_per_phase_and_ga_from_stage_one() -> None:
    class LossRecorder(GradRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[set[str]] = []

        def on_train_gradients(self, trainer, pl_module, out) -> None:
            self.keys.append(set(out.losses))

    module = tiny_mlp_module()
    rec = LossRecorder()
    fit(module, vector_loader(), [ReconBoost(epochs_per_stage=1, correct_epoch=1), rec], 9)
    assert rec.keys[0] == {"reconboost_boost"}  # stage 0: no GA term (train.py:345)
    assert rec.keys[4] == {"reconboost_rectify"}
    assert rec.keys[8] == {"reconboost_boost", "reconboost_ga"}


def test_test_time_fusion_is_the_boosted_ensemble() -> None:
    module = tiny_mlp_module()
    cb = ReconBoost()
    cb.setup(None, module, "fit")
    head = getattr(module, HEAD)
    with torch.no_grad():
        head.boost_rate.fill_(0.5)
    batch = next(iter(vector_loader()))
    logits, uni, feats = module({m: batch[m] for m in module.modalities})
    out = cb.on_eval_logits(None, module, logits, uni, feats)
    ga, gv = head("audio", feats["audio"]), head("visual", feats["visual"])
    assert torch.allclose(out, 0.5 * (ga + gv))
    assert torch.allclose(uni["visual"], gv)  # the learners' unimodal accuracies
    cb_model = ReconBoost(test_fusion="model")
    assert cb_model.on_eval_logits(None, module, logits, dict(uni), feats) is logits


def test_per_modality_heads_and_bad_options() -> None:
    encs = {
        "a": MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=8),
        "b": MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=6),
    }
    module = MultimodalModule(encs, num_classes=3)
    with pytest.raises(ValueError, match="common_space"):
        ReconBoost().setup(None, module, "fit")
    ReconBoost(common_space=False).setup(None, module, "fit")
    assert getattr(module, HEAD)("b", torch.zeros(2, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="method.reconboost.epochs_per_stage"):
        ReconBoost(epochs_per_stage=0)
    with pytest.raises(ValueError, match="method.reconboost.test_fusion"):
        ReconBoost(test_fusion="mean")


# the shared head needs equal feature dims: the synthetic text MLP gets the ResNets' 64
THREE = ["dataset.num_modalities=3", "dataset.encoder_choices.text.feature_dim=64"]
SHORT = ["method.reconboost.epochs_per_stage=1", "method.reconboost.correct_epoch=2"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], THREE])
def test_runs_end_to_end(make_cfg, extra) -> None:
    m = run(make_cfg(["method=reconboost", *extra]))
    assert m["metrics"]["test/acc"] >= 0


@pytest.mark.slow
def test_resume_is_exact_within_a_phase(tmp_path: Path) -> None:
    # epochs: 0 boost audio, 1-2 rectify; resumed after epoch 1, inside the rectification
    # phase (a lost phase would reset the momentum there)
    full = assert_resume_exact(tmp_path, ["method=reconboost", *SHORT], "ReconBoost", epochs=3)
    assert full["callbacks"]["ReconBoost"]["phase_key"] == [0, RECTIFY]
    assert f"{HEAD}.boost_rate" in full["state_dict"]


def test_plain_ddp_is_refused_with_the_strategy_to_use() -> None:
    module = tiny_mlp_module()
    plain = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_ddp_kwargs={}))
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        ReconBoost().setup(plain, module, "fit")
    ok = SimpleNamespace(
        world_size=2, strategy=SimpleNamespace(_ddp_kwargs={"find_unused_parameters": True})
    )
    ReconBoost().setup(ok, module, "fit")


# ------------------------------------------------------------- pre-trained start (init_from)
def _unimodal_ckpt(tmp_path: Path, modality: str, seed: int) -> Path:
    torch.manual_seed(seed)
    enc = MLPEncoder(input_dim=4, hidden_dim=8, feature_dim=8, dropout=0.0)
    state = {f"encoders.{modality}.{k}": v for k, v in enc.state_dict().items()}
    cfg = {"method": {"name": "unimodal", "modality": modality}, "dataset": {"name": "toy"}}
    path = tmp_path / f"{modality}.ckpt"
    torch.save({"state_dict": state, "asgml_config": cfg}, path)
    return path


def test_init_from_loads_the_unimodal_encoders_at_fit_setup_only(tmp_path: Path) -> None:
    audio = _unimodal_ckpt(tmp_path, "audio", seed=7)
    stored = torch.load(audio, weights_only=True)["state_dict"]
    module = tiny_mlp_module()
    visual_before = {k: v.clone() for k, v in module.encoders["visual"].state_dict().items()}
    cb = ReconBoost(init_from={"audio": str(audio), "visual": None})
    cb.setup(None, module, "fit")  # asgml.eval / resume checks rebuild modules only
    assert not torch.equal(
        module.encoders["audio"].net[0].weight, stored["encoders.audio.net.0.weight"]
    )
    trainer = SimpleNamespace(world_size=1, strategy=None)
    cb.setup(trainer, module, "test")  # a test after the fit: the fit's weights stay
    assert not torch.equal(
        module.encoders["audio"].net[0].weight, stored["encoders.audio.net.0.weight"]
    )
    cb.setup(trainer, module, "fit")
    for k, v in module.encoders["audio"].state_dict().items():
        assert torch.equal(v, stored[f"encoders.audio.{k}"]), k
    for k, v in module.encoders["visual"].state_dict().items():
        assert torch.equal(v, visual_before[k]), k  # null: kept as built


def test_init_from_refuses_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"method.reconboost.init_from.audio=.*nope"):
        ReconBoost(init_from={"audio": str(tmp_path / "nope.ckpt")})
    visual = _unimodal_ckpt(tmp_path, "visual", seed=1)
    module = tiny_mlp_module()
    with pytest.raises(
        ValueError, match=r"init_from.audio=.*got method='unimodal' modality='visual'"
    ):
        ReconBoost(init_from={"audio": str(visual)}).load_init(module)
    module.run_config = {"dataset": {"name": "cremad"}}
    with pytest.raises(ValueError, match=r"dataset='toy', this run is dataset='cremad'"):
        ReconBoost(init_from={"visual": str(visual)}).load_init(module)
    with pytest.raises(ValueError, match=r"init_from.text: 'text' is not a modality"):
        ReconBoost(init_from={"text": str(visual)}).load_init(tiny_mlp_module())


def test_pretrained_preset_reads_the_unimodal_presets_checkpoints() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="asgml.conf", version_base="1.3"):
        step2 = compose("train", ["experiment=cremad_reconboost_pretrained", "seed=3"])
        dirs = {}
        for m in ("audio", "visual"):
            step1 = compose(
                "train",
                ["experiment=cremad_unimodal_pretrain", f"method.modality={m}", "seed=3"],
                return_hydra_config=True,
            )
            assert step1.method.name == "unimodal" and step1.dataset.name == "cremad"
            sweep = f"{step1.hydra.sweep.dir}/{step1.hydra.sweep.subdir}"
            assert sweep == step1.hydra.run.dir  # a multirun job writes where a run would
            dirs[m] = step1.hydra.run.dir
        assert list(step1.hydra.sweeper.params) == ["seed", "method.modality"]
    init = step2.method.reconboost.init_from
    assert step2.method.name == "reconboost" and step2.dataset.name == "cremad"
    for m in ("audio", "visual"):
        assert init[m] == f"{dirs[m]}/checkpoints/best.ckpt"
    # the official CREMA-D schedule (README.md:47-66, train.py:296,371,449-451)
    assert step2.trainer.max_epochs == 800 and step2.dataset.datamodule.batch_size == 64
    assert step2.model.optimizer.lr == 0.01 and step2.model.optimizer.weight_decay == 5e-4
    assert step2.model.scheduler.step_size == 240 and step2.model.scheduler.gamma == 0.1


@pytest.mark.slow
def test_pretrained_start_end_to_end(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    ckpts = {}
    for m in ("audio", "visual"):
        cfg = compose_cfg(["method=unimodal", f"method.modality={m}"], output_dir=tmp_path / m)
        ckpts[m] = tmp_path / m / run(cfg)["best_checkpoint"]
    init = [f"method.reconboost.init_from.{m}={p}" for m, p in ckpts.items()]
    cfg = compose_cfg(["method=reconboost", *init], output_dir=tmp_path / "rb")
    # what the run's fit setup does to the model: the unimodal runs' encoders
    module, cb = instantiate(cfg.model), instantiate(cfg.method.reconboost)
    module.run_config = {"dataset": {"name": cfg.dataset.name}}
    cb.setup(SimpleNamespace(world_size=1, strategy=None), module, "fit")
    for m, path in ckpts.items():
        stored = torch.load(path, weights_only=True)["state_dict"]
        for k, v in module.encoders[m].state_dict().items():
            assert torch.equal(v, stored[f"encoders.{m}.{k}"]), (m, k)
    assert 0 <= run(cfg)["metrics"]["test/acc"] <= 1
    # a checkpoint of the other modality is refused before training
    swapped = [f"method.reconboost.init_from.audio={ckpts['visual']}"]
    with pytest.raises(ValueError, match="init_from.audio=.*modality='visual'"):
        run(compose_cfg(["method=reconboost", *swapped], output_dir=tmp_path / "swapped"))
