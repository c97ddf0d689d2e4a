r"""InfoReg: Adaptive Unimodal Regulation for Balanced Multimodal Information Acquisition.

Paper: Huang et al., "Adaptive Unimodal Regulation for Balanced Multimodal
Information Acquisition", CVPR 2025.
Official code: https://github.com/GeWu-Lab/InfoReg_CVPR2025 @ 939b2ed (``main.py``,
``train_epoch``).

What the official code does (2 modalities, audio and visual, by name: audio is the
information-sufficient modality of the paper, visual the information-insufficient one):

* Loss ``L_mm + L_a + L_v`` with unimodal logits sliced from the concat head
  (here: ``model.gamma=1``, the module's derived unimodal logits).
* Prime learning window (PLW), once per epoch: the Fisher information of every Conv/Linear
  weight of the audio encoder is accumulated over the epoch as ``sum_steps grad**2``;
  ``trace = sum_layers mean(FIM_layer)`` is appended to a list that starts as ten zeros.
  At the start of epoch ``e > 0``: ``tr1 = mean(list[-10:])``, ``tr2 = mean(list[-11:-1])``,
  ``k = (tr1 - tr2) / tr1`` (``k = 1`` at epoch 0); the epoch is in the PLW iff ``k > 0.05``.
* Inside the PLW, per step after backward: ``score_m = sum_batch softmax(z_m)[y]`` and
  ``beta_a = 0.95 * exp(tanh(score_a - score_v))`` if audio leads (else 0),
  ``beta_v = 0.1 * exp(tanh(score_v - score_a))`` if visual leads (else 0), then
  ``grad += beta_m * (theta - theta_epoch_start)`` for every parameter of encoder m (the
  gradient of a proximal term pulling the leading encoder back to where the epoch began).
  The FIM is accumulated from the gradients *after* this term is added, as in ``main.py``.

In formulas (official, two modalities; $g$ the gradient of a Conv/Linear weight of the audio
encoder, $\mathrm{tr}$ the list of traces, $\mathbb{1}[\cdot]$ 1 if true else 0):

$$
\mathrm{tr}_e = \sum_{\text{layers}} \operatorname{mean}\Bigl(\sum_{\text{steps of } e} g^2\Bigr),
\qquad
k = \frac{\overline{\mathrm{tr}}_{[-10:]} - \overline{\mathrm{tr}}_{[-11:-1]}}
         {\overline{\mathrm{tr}}_{[-10:]}}, \qquad
\text{PLW} \iff k > 0.05
$$

$$
s_m = \sum_{\text{batch}} \operatorname{softmax}(z_m)_y, \qquad
\beta_a = 0.95\, e^{\tanh(s_a - s_v)}\, \mathbb{1}[s_a > s_v], \qquad
\beta_v = 0.1\, e^{\tanh(s_v - s_a)}\, \mathbb{1}[s_v > s_a]
$$

$$
\nabla_\theta \leftarrow \nabla_\theta + \beta_m\,(\theta - \theta_{\text{epoch start}})
\quad \text{for every parameter } \theta \text{ of encoder } m \text{ (inside the PLW)}
$$

Roles, not positions: the official constants and window belong to the modalities' roles
(audio = information-sufficient, the ``dominant`` here), never to the order the modalities
are listed in. ``dominant`` names that modality (default ``null``: ``audio``, as official,
when there is an ``audio`` modality, otherwise the first modality in config order; a
warning at start-up says which one was taken whenever the modalities are not exactly audio
and visual). It gets ``beta_scales[0]`` (0.95) and, with ``window_source=dominant``, its
Fisher trace opens the window; the others get ``beta_scales[1:]``. Swapping the order of
``audio`` and ``visual`` in the dataset config changes nothing.

Deviations from the official code (generalisation to N >= 2 modalities and names):

* The Fisher trace is computed for every modality (logged as ``inforeg/trace_<m>``).
  ``window_source`` decides which trace opens the window: ``dominant`` (default, official:
  audio's trace) or ``leader`` (the trace of the modality being regulated at that step).
* ``beta_scales`` is ``[c_dominant, c_other, ...]`` (official ``[0.95, 0.1]``): the first
  value for the dominant modality, the next ones for the other modalities in config order,
  missing ones taking the last value (so N = 3 runs with ``[0.95, 0.1, 0.1]``); or a mapping
  ``{modality: c}`` naming every modality. The leader is ``argmax score``; the gap is the
  leader's score minus the *second-best* score (for N = 2: ``score_a - score_v``). Ties
  regulate nothing.
* Beyond audio-visual data the official code gives no rule (MMSA's text/audio/vision
  defaults to audio, though text is the stronger modality in most MSA results): set ``dominant`` to the
  dataset's information-sufficient modality.
* ``score_reduction``: ``sum`` over the batch (official; tanh saturates at batch size 64)
  or ``mean``.

Other: ``theta_epoch_start`` is a copy of the encoder parameters only (the
official deep-copies the whole model; only encoder entries are read); a zero trace
(``tr1 == 0``) gives ``k = 0`` instead of a division by zero; parameters without a
gradient this step are skipped.

Precision, skipped steps, several processes (the official code runs one process in fp32):

* under 16-bit mixed precision the added term is multiplied by the current loss scale (so
  it is correct after unscaling) and the Fisher sum takes the *unscaled* gradients, so the
  trace does not depend on the loss scale;
* a step the optimizer will not apply (non-finite loss or gradients, GradScaler overflow)
  adds nothing to the Fisher sum (counted, reported once per epoch);
* under DDP the scores are all-reduced before ``beta`` is computed (sums of the per-rank
  sums, i.e. the score of the global batch; for ``mean`` divided by the global batch size),
  so every rank adds the same term to the (averaged) gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from asgml.core.base import BalancingCallback
from asgml.core.toolkit import (
    DeferredState,
    NonFiniteCounter,
    loss_scale,
    select_parameters,
    step_finite,
    sum_over_ranks,
    unscaled,
)
from asgml.core.types import StepOutput

WINDOW_SOURCES = ("dominant", "leader")
SCORE_REDUCTIONS = ("sum", "mean")


def plw_growth(trace_list: Sequence[float], epoch: int, window: int = 10) -> float:
    """Official PLW statistic ``k = (tr1 - tr2) / tr1`` with ``tr1 = mean(list[-w:])`` and
    ``tr2 = mean(list[-w-1:-1])``; ``k = 1`` at epoch 0 and ``k = 0`` when ``tr1 == 0``.

    ``trace_list`` already holds the ``window`` leading zeros of the official code."""
    if epoch == 0:
        return 1.0
    if len(trace_list) < window + 1:
        raise ValueError(f"trace list needs >= {window + 1} entries, got {len(trace_list)}")
    tr1 = sum(trace_list[-window:]) / window
    tr2 = sum(trace_list[-window - 1 : -1]) / window
    if tr1 == 0:
        return 0.0
    return (tr1 - tr2) / tr1


def inforeg_scores(
    unimodal_logits: Mapping[str, Tensor], labels: Tensor, reduction: str = "sum"
) -> dict[str, Tensor]:
    """``sum_i softmax(z_m)[i, y_i]`` (or the batch mean) per modality, 0-d float32."""
    sums = {
        m: torch.softmax(z.detach().float(), dim=1).gather(1, labels[:, None]).sum()
        for m, z in unimodal_logits.items()
    }
    return sums if reduction == "sum" else {m: v / labels.shape[0] for m, v in sums.items()}


def global_scores(
    trainer: Any, unimodal_logits: Mapping[str, Tensor], labels: Tensor, reduction: str = "sum"
) -> dict[str, Tensor]:
    """`inforeg_scores` of the global batch under DDP (one all-reduce of the per-rank
    sums and the batch size; the local batch on one process)."""
    mods = list(unimodal_logits)
    local = inforeg_scores(unimodal_logits, labels, "sum")
    packed = torch.stack([local[m] for m in mods] + [local[mods[0]].new_tensor(labels.shape[0])])
    packed = sum_over_ranks(trainer, packed)
    sums = packed[:-1] if reduction == "sum" else packed[:-1] / packed[-1]
    return dict(zip(mods, sums.unbind()))


def inforeg_betas(
    scores: Mapping[str, Tensor], beta_scales: Mapping[str, float]
) -> dict[str, Tensor]:
    """``beta_lead = c_lead * exp(tanh(score_lead - score_second))``, 0 for the others and
    for all modalities on a tie (no host sync)."""
    mods = list(scores)
    s = torch.stack([scores[m] for m in mods])
    top2 = torch.topk(s, 2).values
    gap = top2[0] - top2[1]
    lead = torch.argmax(s)
    c = torch.tensor([float(beta_scales[m]) for m in mods], device=s.device, dtype=s.dtype)
    val = c * torch.exp(torch.tanh(gap))
    is_lead = (torch.arange(len(mods), device=s.device) == lead) & (gap > 0)
    betas = torch.where(is_lead, val, torch.zeros_like(val))
    return dict(zip(mods, betas.unbind()))


def fisher_trace(fim: Sequence[Tensor]) -> Tensor:
    """``sum_layers mean(FIM_layer)`` as a 0-d tensor."""
    if not fim:
        return torch.zeros(())
    return torch.stack([f.float().mean() for f in fim]).sum()


def add_proximal_(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    anchors: Sequence[Tensor],
    beta: Tensor | float,
) -> None:
    """``g += beta * (p - p0)`` in place with fused foreach kernels."""
    if not grads:
        return
    diff = torch._foreach_sub(list(params), list(anchors))
    torch._foreach_mul_(diff, beta)
    torch._foreach_add_(list(grads), diff)


class InfoReg(BalancingCallback):
    """InfoReg's prime-learning-window proximal regulation at ``on_train_gradients``.

    Args:
        threshold: the epoch is in the PLW iff ``k > threshold`` (official 0.05).
        window: epochs averaged by the trace statistic (official 10).
        beta_scales: ``[c_dominant, c_other, ...]`` (official ``[0.95, 0.1]``; the others in
            config order, missing ones take the last) or ``{modality: c}`` for every modality.
        window_source: ``dominant`` (official: audio's trace) or ``leader``.
        dominant: the information-sufficient modality (official: audio); ``None``: ``audio``
            if present, else the first modality.
        score_reduction: ``sum`` (official) or ``mean``.
    """

    def __init__(
        self,
        threshold: float = 0.05,
        window: int = 10,
        beta_scales: Sequence[float] | Mapping[str, float] = (0.95, 0.1),
        window_source: str = "dominant",
        score_reduction: str = "sum",
        dominant: str | None = None,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if window_source not in WINDOW_SOURCES:
            raise ValueError(
                f"window_source must be one of {WINDOW_SOURCES}, got {window_source!r}"
            )
        if score_reduction not in SCORE_REDUCTIONS:
            raise ValueError(f"score_reduction must be one of {SCORE_REDUCTIONS}")
        values = list(beta_scales.values()) if isinstance(beta_scales, Mapping) else beta_scales
        if any(b < 0 for b in values):
            raise ValueError(f"beta_scales must be >= 0, got {beta_scales}")
        self.threshold = threshold
        self.window = window
        self.beta_scales_arg: list[float] | dict[str, float] = (
            {str(m): float(b) for m, b in beta_scales.items()}
            if isinstance(beta_scales, Mapping)
            else [float(b) for b in beta_scales]
        )
        self.dominant_arg = dominant
        self.dominant = ""
        self.window_source = window_source
        self.score_reduction = score_reduction
        self.trace_lists: dict[str, list[float]] = {}
        self.growth: dict[str, float] = {}
        self.anchors: dict[str, list[Tensor]] = {}
        self.fim: dict[str, list[Tensor]] = {}
        self._fim_params: dict[str, list[torch.nn.Parameter]] = {}
        self._params: dict[str, tuple[torch.nn.Parameter, ...]] = {}
        self._restore = DeferredState()
        self._epoch = -1
        self.nonfinite = NonFiniteCounter("InfoReg", "out of the Fisher information")

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        mods = list(pl_module.modalities)
        self.dominant = self.resolve_dominant(mods)
        self.beta_scales = self.resolve_beta_scales(mods)
        self._params = {m: pl_module.encoder_parameters(m) for m in mods}
        self._fim_params = {m: select_parameters(pl_module.encoders[m], "weights") for m in mods}
        if not self.trace_lists:
            self.trace_lists = {m: [0.0] * self.window for m in mods}

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        st = self._restore.take(pl_module.device)
        if st is not None:
            self.anchors, self.fim = st["anchors"], st["fim"]

    def resolve_dominant(self, mods: Sequence[str]) -> str:
        """The information-sufficient modality: ``dominant``, else ``audio`` (official), else
        the first modality (warned unless the modalities are exactly audio and visual)."""
        if self.dominant_arg is not None:
            if self.dominant_arg not in mods:
                raise ValueError(
                    f"method.inforeg.dominant={self.dominant_arg!r} is not a modality of this "
                    f"model; expected one of {list(mods)}"
                )
            return str(self.dominant_arg)
        dom = "audio" if "audio" in mods else mods[0]
        if set(mods) != {"audio", "visual"}:
            warnings.warn(
                f"InfoReg: method.inforeg.dominant is null, so {dom!r} is treated as the "
                f"information-sufficient modality among {list(mods)} (the official code fixes "
                "audio on audio-visual data); set method.inforeg.dominant to choose it",
                stacklevel=1,
            )
        return dom

    def resolve_beta_scales(self, mods: Sequence[str]) -> dict[str, float]:
        """``{modality: c}``: ``beta_scales[0]`` for the dominant modality, the rest for the
        others in config order (missing ones take the last), or the given mapping."""
        arg = self.beta_scales_arg
        if isinstance(arg, dict):
            if set(arg) != set(mods):
                raise ValueError(
                    f"InfoReg: method.inforeg.beta_scales as a mapping must name every modality "
                    f"{list(mods)} exactly once, got {sorted(arg)}"
                )
            return {m: arg[m] for m in mods}
        if not arg or len(arg) > len(mods):
            raise ValueError(
                f"InfoReg: method.inforeg.beta_scales needs 1 to {len(mods)} values "
                f"([dominant, the others in config order]; missing ones take the last) for "
                f"modalities {list(mods)}, got {arg}"
            )
        order = [self.dominant] + [m for m in mods if m != self.dominant]
        scales = arg + [arg[-1]] * len(mods)
        return {m: scales[order.index(m)] for m in mods}

    # -------------------------------------------------------------- per epoch
    def in_window(self, modality: str) -> bool:
        src = self.dominant if self.window_source == "dominant" else modality
        return self.growth.get(src, 1.0) > self.threshold

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        mods = pl_module.modalities
        if self.fim and self._epoch != epoch:
            # resumed from a checkpoint written after the last step of an epoch but before
            # its on_train_epoch_end: close that epoch first
            self._finish_epoch(trainer, pl_module)
        self.growth = {m: plw_growth(self.trace_lists[m], epoch, self.window) for m in mods}
        if not (self.anchors and self.fim):  # fresh epoch (not resumed mid-epoch)
            self.anchors = {m: [p.detach().clone() for p in self._params[m]] for m in mods}
            self.fim = {m: [torch.zeros_like(p) for p in self._fim_params[m]] for m in mods}
        self._epoch = epoch
        for m in mods:
            pl_module.log(f"inforeg/k_{m}", float(self.growth[m]), on_step=False, on_epoch=True)
            pl_module.log(
                f"inforeg/in_window_{m}",
                float(self.in_window(m)),
                on_step=False,
                on_epoch=True,
            )

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)

    def _finish_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.nonfinite.end_epoch(trainer)
        for m in pl_module.modalities:
            tr = float(fisher_trace(self.fim.get(m, [])))  # one sync per epoch
            self.trace_lists[m].append(tr)
            pl_module.log(f"inforeg/trace_{m}", tr, on_step=False, on_epoch=True)
        self.anchors, self.fim = {}, {}

    # --------------------------------------------------------------- per step
    @override
    def on_train_gradients(
        self, trainer: L.Trainer, pl_module: L.LightningModule, out: StepOutput
    ) -> None:
        mods = pl_module.modalities
        open_for = [m for m in mods if self.in_window(m)]
        if open_for:
            # the global batch's scores: every rank computes the same betas
            scores = global_scores(trainer, out.unimodal_logits, out.labels, self.score_reduction)
            betas = inforeg_betas(scores, self.beta_scales)
            scale = loss_scale(trainer)
            for m in open_for:
                pairs = [
                    (p.grad, p, a)
                    for p, a in zip(self._params[m], self.anchors[m], strict=True)
                    if p.grad is not None
                ]
                if pairs:
                    g, p, a = zip(*pairs, strict=True)
                    add_proximal_(g, [x.detach() for x in p], a, betas[m] * scale)
            if self.logging_step(trainer):  # only on the steps Lightning writes
                for m in mods:
                    pl_module.log(f"inforeg/beta_{m}", betas[m], on_step=True, on_epoch=False)
        # Fisher sum of the true gradients; a step that will not be applied adds nothing
        finite = step_finite(pl_module, out)
        self.nonfinite.add(~finite)
        for m in mods:
            pairs = [(f, p.grad) for f, p in zip(self.fim[m], self._fim_params[m], strict=True)]
            pairs = [(f, g) for f, g in pairs if g is not None]
            if pairs:
                f, g = zip(*pairs, strict=True)
                g = [torch.where(finite, x, torch.zeros_like(x)) for x in unscaled(trainer, g)]
                torch._foreach_addcmul_(list(f), g, g)

    # ------------------------------------------------------------ checkpoint
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "trace_lists": {m: list(v) for m, v in self.trace_lists.items()},
            "anchors": {m: [t.detach().cpu() for t in ts] for m, ts in self.anchors.items()},
            "fim": {m: [t.detach().cpu() for t in ts] for m, ts in self.fim.items()},
            "epoch": self._epoch,
            "nonfinite_steps": self.nonfinite.total,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.trace_lists = {m: [float(x) for x in v] for m, v in state_dict["trace_lists"].items()}
        self._epoch = int(state_dict.get("epoch", -1))
        self.nonfinite.load(state_dict.get("nonfinite_steps", 0))
        self._restore.put(
            {"anchors": state_dict.get("anchors", {}), "fim": state_dict.get("fim", {})}
        )
