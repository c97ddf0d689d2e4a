"""Fusion heads, after OGM-GE's ``models/fusion_modules.py``
(https://github.com/GeWu-Lab/OGM-GE_CVPR2022).

Every head maps ``{modality: (B, d_m)}`` to fused logits ``(B, C)``. Heads that allow it
also *derive* per-modality (unimodal) logits from their own weights, exactly as OGM-GE's
``main.py`` does:

* concat: ``logits_m = f_m @ W[:, block_m].T + b / N`` (the modality's column block);
* sum: ``logits_m = fc_m(f_m)`` with the branch's full bias (OGM-GE since commit 5480329);
* concat_mlp (the design document's head, section 7.2: ``Linear(sum d_m, 512) -> ReLU ->
  Linear(512, C)``): ``logits_m`` is the head applied to the features with every other
  modality zeroed (the document does not say how it derives unimodal logits; zero-padding
  is ARL's choice for its shared head).

Every ``nn.Linear`` of a head is initialised as OGM-GE's ``utils.weight_init``
(``utils/utils.py:15-18`` at commit 343dc1d, applied to the whole model in ``main.py:239``):
Xavier-normal weights, zero bias. See `init_linear_ogm`.

FiLM and gated fusion (two modalities, as in OGM-GE) have no such decomposition;
they need separate unimodal heads (``model.unimodal_heads=true``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def init_linear_ogm(module: nn.Module) -> None:
    """Xavier-normal weight and zero bias on every ``nn.Linear`` of ``module`` (OGM-GE
    ``utils/utils.py:15-18``, commit 343dc1d)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Fusion(nn.Module):
    """Base class: ``forward(features) -> logits``; ``unimodal_logits(features)``."""

    supports_unimodal: bool = True

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__()
        if len(feature_dims) < 2:
            raise ValueError(f"fusion needs >= 2 modalities, got {list(feature_dims)}")
        self.modalities = list(feature_dims)
        self.feature_dims = dict(feature_dims)
        self.num_classes = num_classes

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} cannot derive unimodal logits")


class ConcatFusion(Fusion):
    """``Linear(sum d_m, C)`` on the concatenated features (modality order = config order)."""

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.fc_out = nn.Linear(sum(self.feature_dims.values()), num_classes)
        offsets, start = {}, 0
        for m, d in self.feature_dims.items():
            offsets[m] = (start, start + d)
            start += d
        self.blocks = offsets

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return self.fc_out(torch.cat([features[m] for m in self.modalities], dim=1))

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        w, b = self.fc_out.weight, self.fc_out.bias
        n = len(self.modalities)
        out = {}
        for m in self.modalities:
            lo, hi = self.blocks[m]
            out[m] = features[m] @ w[:, lo:hi].t() + b / n
        return out


class SumFusion(Fusion):
    """``sum_m fc_m(f_m)``: one ``Linear(d_m, C)`` per modality."""

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        self.fc = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in feature_dims.items()})

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([self.fc[m](features[m]) for m in self.modalities]).sum(0)

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.fc[m](features[m]) for m in self.modalities}


class ConcatMLPFusion(Fusion):
    """The design document's head (section 7.2): ``Linear(sum d_m, hidden) -> ReLU ->
    Linear(hidden, C)`` on the concatenated features (1024 -> 512 -> C for two 512-d
    modalities, 1536 -> 512 -> C for three)."""

    def __init__(
        self, feature_dims: Mapping[str, int], num_classes: int, hidden_dim: int = 512
    ) -> None:
        super().__init__(feature_dims, num_classes)
        if hidden_dim < 1:
            raise ValueError(f"model.fusion_hidden must be >= 1, got {hidden_dim}")
        self.fc_hidden = nn.Linear(sum(self.feature_dims.values()), hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x = torch.cat([features[m] for m in self.modalities], dim=1)
        return self.fc_out(torch.relu(self.fc_hidden(x)))

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for m in self.modalities:
            only_m = {k: (f if k == m else torch.zeros_like(f)) for k, f in features.items()}
            out[m] = self.forward(only_m)
        return out


class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018) as in OGM-GE: ``gamma, beta = Linear(d, 2d)(x_film)``,
    ``logits = fc_out(gamma * x_other + beta)``. The first modality conditions the second."""

    supports_unimodal = False

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int) -> None:
        super().__init__(feature_dims, num_classes)
        if len(self.modalities) != 2:
            raise ValueError(
                f"model.fusion=film supports exactly 2 modalities, got {self.modalities}"
            )
        d_film, d_other = (self.feature_dims[m] for m in self.modalities)
        if d_film != d_other:
            raise ValueError(f"FiLM needs equal feature dims, got {self.feature_dims}")
        self.film = nn.Linear(d_film, 2 * d_other)
        self.fc_out = nn.Linear(d_other, num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x, y = (features[m] for m in self.modalities)
        gamma, beta = self.film(x).chunk(2, dim=1)
        return self.fc_out(gamma * y + beta)


class GatedFusion(Fusion):
    """Gated fusion as in OGM-GE: ``fc_out(sigmoid(fc_x(x)) * fc_y(y))`` (x gates y)."""

    supports_unimodal = False

    def __init__(
        self, feature_dims: Mapping[str, int], num_classes: int, hidden_dim: int = 512
    ) -> None:
        super().__init__(feature_dims, num_classes)
        if len(self.modalities) != 2:
            raise ValueError(
                f"model.fusion=gated supports exactly 2 modalities, got {self.modalities}"
            )
        dx, dy = (self.feature_dims[m] for m in self.modalities)
        self.fc_x = nn.Linear(dx, hidden_dim)
        self.fc_y = nn.Linear(dy, hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        x, y = (features[m] for m in self.modalities)
        return self.fc_out(torch.sigmoid(self.fc_x(x)) * self.fc_y(y))


def cosine_logits(features: Tensor, weight: Tensor, scaling: float) -> Tensor:
    """MMCosine's modality-wise logits: ``s * normalize(f) @ normalize(W, rows).T``.

    ``features`` ``(B, d)``, ``weight`` ``(C, d)`` (one row per class): every feature vector
    and every class row is L2-normalised, so each logit is ``s * cos(f, W_c)``."""
    f = torch.nn.functional.normalize(features, dim=1)
    w = torch.nn.functional.normalize(weight, dim=1)
    return scaling * f @ w.t()


class MMCosineFusion(Fusion):
    """MMCosine (Xu et al., ICASSP 2023): ``logits = sum_m s * cos(f_m, W_m)``.

    One bias-free ``Linear(sum d_m, C)`` whose column block ``W_m`` reads modality m (as
    ``concat``); each modality's logits are the scaled cosines between its L2-normalised
    features and the L2-normalised class rows of ``W_m``. Unimodal logits are those
    per-modality terms. ``scaling`` (``s``) is set by the ``mmcosine`` method callback.
    """

    def __init__(
        self, feature_dims: Mapping[str, int], num_classes: int, scaling: float = 10.0
    ) -> None:
        super().__init__(feature_dims, num_classes)
        self.fc_out = nn.Linear(sum(self.feature_dims.values()), num_classes, bias=False)
        offsets, start = {}, 0
        for m, d in self.feature_dims.items():
            offsets[m] = (start, start + d)
            start += d
        self.blocks = offsets
        self.scaling = float(scaling)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(list(self.unimodal_logits(features).values())).sum(0)

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        w = self.fc_out.weight
        out = {}
        for m in self.modalities:
            lo, hi = self.blocks[m]
            out[m] = cosine_logits(features[m], w[:, lo:hi], self.scaling)
        return out

    def linear_logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """``W [f_1; ...; f_N]``: the plain linear head, which the official ``valid()`` scores as
        the fused prediction (``main_CD.py:181,196``; its never-trained bias is omitted)."""
        return self.fc_out(torch.cat([features[m] for m in self.modalities], dim=1))


class MMCosineGatedFusion(Fusion):
    """MMCosine on the official symmetric gated fusion (``--fusion_method gated``, the README's
    CREMA-D command; GeWu-Lab/MMCosine_ICASSP23 ``models/fusion_modules.py:62-91`` @ 00ba0a9).

    ``x' = sigmoid(fc_y(y)) * fc_x(x)``, ``y' = sigmoid(fc_x(x)) * fc_y(y)`` (each gates the
    other, both ``Linear(d_m, hidden)``); the logits are ``s cos(x', W_x) + s cos(y', W_y)`` with
    ``W = [W_x, W_y]`` the weight of ``fc_out`` (``Linear(2 hidden, C)``), and the unimodal
    logits are the two cosine terms (``main_CD.py:113-118``). Two modalities only.
    """

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        hidden_dim: int = 512,
        scaling: float = 10.0,
    ) -> None:
        super().__init__(feature_dims, num_classes)
        if len(self.modalities) != 2:
            raise ValueError(
                f"model.fusion=mmcosine_gated supports exactly 2 modalities, got {self.modalities}"
            )
        dx, dy = (self.feature_dims[m] for m in self.modalities)
        self.hidden_dim = int(hidden_dim)
        self.fc_x = nn.Linear(dx, self.hidden_dim)
        self.fc_y = nn.Linear(dy, self.hidden_dim)
        self.fc_out = nn.Linear(2 * self.hidden_dim, num_classes)  # bias: official, unused
        self.scaling = float(scaling)

    def gated(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(x', y')``, the official ``GatedFusion`` outputs ``x_new, y_new``."""
        x, y = (features[m] for m in self.modalities)
        out_x, out_y = self.fc_x(x), self.fc_y(y)
        return torch.sigmoid(out_y) * out_x, torch.sigmoid(out_x) * out_y

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        return torch.stack(list(self.unimodal_logits(features).values())).sum(0)

    def unimodal_logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        w, h = self.fc_out.weight, self.hidden_dim
        x, y = self.gated(features)
        mx, my = self.modalities
        return {
            mx: cosine_logits(x, w[:, :h], self.scaling),
            my: cosine_logits(y, w[:, h:], self.scaling),
        }

    def linear_logits(self, features: Mapping[str, Tensor]) -> Tensor:
        """``fc_out([x'; y'])``, the official ``valid()``'s fused prediction with gated fusion."""
        return self.fc_out(torch.cat(self.gated(features), dim=1))


FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "sum": SumFusion,
    "film": FiLMFusion,
    "gated": GatedFusion,
    "mmcosine": MMCosineFusion,
    "mmcosine_gated": MMCosineGatedFusion,
    "concat_mlp": ConcatMLPFusion,
}


def build_fusion(
    name: str, feature_dims: Mapping[str, int], num_classes: int, hidden_dim: int = 512
) -> Fusion:
    """The fusion head ``name``, initialised as OGM-GE (`init_linear_ogm`).
    ``hidden_dim`` is the hidden width of ``concat_mlp``, ``gated`` and ``mmcosine_gated``."""
    if name not in FUSIONS:
        raise ValueError(f"model.fusion must be one of {sorted(FUSIONS)}, got {name!r}")
    cls = FUSIONS[name]
    if cls in (ConcatMLPFusion, GatedFusion, MMCosineGatedFusion):
        head = cls(feature_dims, num_classes, hidden_dim=hidden_dim)
    else:
        head = cls(feature_dims, num_classes)
    init_linear_ogm(head)
    return head
