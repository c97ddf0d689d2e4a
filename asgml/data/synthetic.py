r"""A built-in synthetic multimodal task on which modality imbalance hurts by construction.

Construction. Every sample has a label $y$ uniform over $K$ classes. Each modality $m$ is
*informative* for a sample with probability $q_m$ (``informative``), independently of the
label, of the other modalities and of the other samples. An informative input carries its
class prototype, an uninformative one carries none:

$$x_m = f_m \, s_m \, P_m[y] + \varepsilon, \qquad f_m \sim \mathrm{Bernoulli}(q_m),
\quad \varepsilon \sim \mathcal N(0, \sigma_m^2 I),$$

with $s_m$ the ``strength``, $\sigma_m$ the ``noise`` (default 1) and $P_m[k]$ a fixed
prototype with zero mean and unit per-element standard deviation, shaped like the real
inputs; ``grain`` is its correlation length in bins/pixels (1: white, larger: coarser):

* ``spectrogram`` ``(1, F, T)`` (audio-like, ResNet-18 with 1 channel): a class-specific
  profile over frequency, the same in every time column (a band pattern);
* ``frames`` ``(3, T, H, W)`` (visual-like, temporal ResNet-18): a class-specific colour
  image (a random pattern upsampled bilinearly by ``grain``), the same in every frame;
* ``vector`` ``(L, D)`` (MMSA-like sequence features, MLP encoder): a class-specific
  vector, the same at every time step.

Caps and joint optimum (noise-free limit). A modality alone names the class when it is
informative and leaves a $1/K$ guess otherwise, so its Bayes accuracy is
$$\mathrm{cap}_m = q_m + (1 - q_m)/K;$$
all modalities together fail to name the class only when none is informative:
$$\mathrm{joint} = 1 - (1 - 1/K) \prod_m (1 - q_m).$$
The modalities are *complementary*: none of them alone reaches the joint optimum. At the
default strengths the noise-free limit is close to exact: matching an input against the
$K$ prototypes has a signal-to-noise ratio $s_m \sqrt{D_m} / \sigma_m$ ($D_m$ elements per
input) of 19 (audio), 12 (visual) and 4 (text), and the test suite checks on generated
data that this oracle reaches the caps and the joint optimum to within 2.5 points.

Defaults (``conf/dataset/synthetic.yaml``, $K = 4$): audio $q = 0.75$, cap
$0.75 + 0.25/4 = 81.25\%$; visual $q = 0.6$, cap $0.6 + 0.4/4 = 70\%$; text $q = 0.7$, cap
$77.5\%$; audio + visual $1 - 0.75 \cdot 0.25 \cdot 0.4 = 92.5\%$; audio + visual + text
$1 - 0.75 \cdot 0.25 \cdot 0.4 \cdot 0.3 = 97.75\%$. `bayes_accuracy` computes these.

Why imbalance hurts. Audio is strong (per-element strength 0.6, a coarse band pattern,
``grain`` 4) and its encoder learns it within about two epochs; visual is weak (0.15, a
finer pattern, ``grain`` 2) and needs sustained gradient; text (0.25, MLP encoder) is in
between.
Once audio is learned, the fused loss of every sample on which audio is informative is near
zero, so the visual encoder is trained only by the $1 - q_{audio} = 25\%$ of samples audio
cannot name, instead of all of them: a jointly trained baseline stops near the audio cap
with a visual branch near chance, while a method that keeps gradient flowing to the visual
encoder can move towards the joint optimum.

All tensors are generated from ``seed`` alone (independent of the global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from asgml.data.base import SplitDataModule

KINDS = ("spectrogram", "frames", "vector")


class DictTensorDataset(Dataset):
    """A dataset over in-memory tensors returning ``{modality: x, "label": y}`` dicts."""

    def __init__(self, tensors: Mapping[str, Tensor], labels: Tensor) -> None:
        self.tensors = dict(tensors)
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {m: t[i] for m, t in self.tensors.items()}
        item["label"] = self.labels[i]
        return item


def _shape(kind: str, spec: Mapping[str, Any]) -> tuple[int, ...]:
    size = int(spec.get("size", 32))
    if kind == "spectrogram":
        return (1, size, size)
    if kind == "frames":
        return (3, int(spec.get("frames", 2)), size, size)
    return (int(spec.get("length", 8)), int(spec.get("dim", 32)))


def bayes_accuracy(informative: Sequence[float], num_classes: int) -> float:
    """Bayes accuracy of the modalities with informative rates ``informative`` together, in
    the noise-free limit: ``1 - (1 - 1/K) * prod_m (1 - q_m)`` (one modality: its cap)."""
    miss = math.prod(1.0 - float(q) for q in informative)
    return 1.0 - (1.0 - 1.0 / num_classes) * miss


def _smooth(x: Tensor, size: Sequence[int]) -> Tensor:
    """Upsample a coarse random pattern ``x`` (batch, channel, *grid) to ``size``."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "linear" if len(size) == 1 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


def _prototypes(
    kind: str, shape: tuple[int, ...], num_classes: int, grain: int, g: torch.Generator
) -> Tensor:
    """``(K, *shape)`` class prototypes, zero mean and unit standard deviation per element.

    ``grain`` is the correlation length in pixels/bins (1: white noise, a fine texture;
    8: a coarse pattern)."""
    k = num_classes
    if kind == "spectrogram":  # profile over frequency, constant over time
        _, f, t = shape
        n = max(2, f // grain) if grain > 1 else f
        prof = _smooth(torch.randn((k, 1, n), generator=g), (f,))
        p = prof.view(k, 1, f, 1).expand(k, 1, f, t)
    elif kind == "frames":  # colour image, the same in every frame
        c, t, h, w = shape
        hw = (max(2, h // grain), max(2, w // grain)) if grain > 1 else (h, w)
        img = _smooth(torch.randn((k, c, *hw), generator=g), (h, w))
        p = img.unsqueeze(2).expand(k, c, t, h, w)
    else:  # one vector, the same at every time step
        length, dim = shape
        p = torch.randn((k, 1, dim), generator=g).expand(k, length, dim)
    p = p - p.flatten(1).mean(dim=1).view(-1, *[1] * len(shape))
    return (p / p.flatten(1).std(dim=1).view(-1, *[1] * len(shape))).contiguous()


def class_prototypes(
    specs: Mapping[str, Mapping[str, Any]], num_classes: int, seed: int
) -> dict[str, Tensor]:
    """Every modality's ``(K, *shape)`` prototypes $P_m$ (unscaled), from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed)
    return {
        m: _prototypes(
            spec["kind"], _shape(spec["kind"], spec), num_classes, int(spec.get("grain", 1)), g
        )
        for m, spec in specs.items()
    }


def make_synthetic(
    specs: Mapping[str, Mapping[str, Any]],
    num_classes: int,
    num_samples: int,
    seed: int,
    split_offset: int = 0,
    return_flags: bool = False,
) -> tuple[dict[str, Tensor], Tensor] | tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """Generate ``num_samples`` samples (see the module docstring for the construction).

    Prototypes depend on ``seed`` only; labels, informative flags and noise on ``seed`` and
    ``split_offset`` (so train/val/test differ but share prototypes). With
    ``return_flags`` the per-modality informative flags ``(num_samples,)`` (bool) come back
    as a third element.
    """
    protos = class_prototypes(specs, num_classes, seed)
    g = torch.Generator().manual_seed(seed * 1000 + 17 + split_offset)
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    data, flags = {}, {}
    for m, spec in specs.items():
        q = float(spec.get("informative", 1.0))
        flags[m] = torch.rand((num_samples,), generator=g) < q
        noise = torch.randn((num_samples, *protos[m].shape[1:]), generator=g)
        gain = float(spec["strength"]) * flags[m].float().view(-1, *[1] * (noise.dim() - 1))
        data[m] = gain * protos[m][labels] + float(spec.get("noise", 1.0)) * noise
    if return_flags:
        return data, labels, flags
    return data, labels


class SyntheticDataModule(SplitDataModule):
    """The default dataset (``dataset=synthetic``).

    Args:
        modalities: ``{name: {kind, strength, informative, noise, size, frames, length,
            dim}}`` for every modality on offer, in order; the first ``num_modalities``
            are used. ``informative`` (default 1) is the fraction $q_m$ of samples whose
            input carries the class.
        num_modalities: how many modalities to use (>= 2).
        num_classes: number of classes.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        batch_size: loader batch size.
        num_workers: loader worker processes.
        seed: data seed (independent of the training seed).
    """

    def __init__(
        self,
        modalities: Mapping[str, Mapping[str, Any]],
        num_modalities: int = 2,
        num_classes: int = 4,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        names: Sequence[str] = list(modalities)
        if num_modalities < 2:
            raise ValueError(f"dataset.num_modalities must be >= 2, got {num_modalities}")
        if num_modalities > len(names):
            raise ValueError(
                f"dataset.num_modalities={num_modalities} but dataset.modalities defines only "
                f"{len(names)}: {list(names)}"
            )
        specs = {}
        for m in names[:num_modalities]:
            spec = dict(modalities[m])
            if spec.get("kind") not in KINDS:
                raise ValueError(
                    f"dataset.modalities.{m}.kind must be one of {KINDS}, got {spec.get('kind')!r}"
                )
            if "strength" not in spec:
                raise ValueError(f"dataset.modalities.{m}.strength is required")
            if int(spec.get("grain", 1)) < 1:
                raise ValueError(
                    f"dataset.modalities.{m}.grain must be an integer >= 1, got {spec['grain']!r}"
                )
            q = float(spec.get("informative", 1.0))
            if not 0.0 <= q <= 1.0:
                raise ValueError(
                    f"dataset.modalities.{m}.informative must be a fraction in [0, 1], got {q}"
                )
            specs[m] = spec
        self.specs = specs
        self.modalities = list(specs)
        self.num_classes = num_classes
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, DictTensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for offset, split in enumerate(("train", "val", "test")):
            data, labels = make_synthetic(
                self.specs, self.num_classes, self.sizes[split], self.seed, split_offset=offset
            )
            self.splits[split] = DictTensorDataset(data, labels)
