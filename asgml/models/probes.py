"""Per-modality probes on detached encoder features (docs/asgml_v2_design.md section 3.1).

A `ProbeBank` holds one small classifier per modality. It is trained with its own
optimizer on *detached* features, so it never sends gradients into the encoders. It is
used by the ASGML probe monitor (``asgml.methods.probe``) and can be reused by other
methods that need per-modality classifiers (e.g. CGGM).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROBE_TYPES = ("linear", "mlp_1layer")


def build_probe(
    probe_type: str, feature_dim: int, num_classes: int, hidden_dim: int = 256
) -> nn.Module:
    """``linear``: ``Linear(d, C)``; ``mlp_1layer``: ``Linear(d, h) - ReLU - Linear(h, C)``."""
    if probe_type == "linear":
        return nn.Linear(feature_dim, num_classes)
    if probe_type == "mlp_1layer":
        return nn.Sequential(
            nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes)
        )
    raise ValueError(f"probe_type must be one of {PROBE_TYPES}, got {probe_type!r}")


class ProbeBank(nn.Module):
    """One probe per modality; all probes train together (one summed loss, one backward:
    the probes share no parameters, so each gets exactly its own gradient)."""

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        num_classes: int,
        probe_type: str = "linear",
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.modalities = list(feature_dims)
        self.probes = nn.ModuleDict(
            {
                m: build_probe(probe_type, d, num_classes, hidden_dim)
                for m, d in feature_dims.items()
            }
        )

    def logits(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.probes[m](features[m].detach().float()) for m in self.modalities}

    def fit(
        self,
        features: Mapping[str, Tensor],
        labels: Tensor,
        optimizer: torch.optim.Optimizer,
        steps: int,
    ) -> dict[str, Tensor]:
        """``steps`` optimizer steps on ``features`` (detached here). Returns the last
        step's per-modality training losses (detached)."""
        feats = {m: features[m].detach().float() for m in self.modalities}
        losses: dict[str, Tensor] = {}
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                losses = {
                    m: F.cross_entropy(self.probes[m](feats[m]), labels) for m in self.modalities
                }
                torch.stack(list(losses.values())).sum().backward()
                optimizer.step()
        return {m: v.detach() for m, v in losses.items()}

    @torch.no_grad()
    def evaluate(
        self, features: Mapping[str, Tensor], labels: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-modality ``(number of correct predictions, mean CE loss)`` as tensors."""
        correct, losses = {}, {}
        for m, z in self.logits(features).items():
            correct[m] = (z.argmax(dim=1) == labels).sum()
            losses[m] = F.cross_entropy(z, labels)
        return correct, losses
