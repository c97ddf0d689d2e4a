"""The rule of ``boost=on`` (conf/boost/on.yaml): the ASGML boost on top of any method.

Ordering rule: the boost's probe monitor and boost callbacks (``conf/boost/callbacks.yaml``)
come **after** every callback
of the method, so at each step the method edits its losses (``on_train_losses``) and
gradients (``on_train_gradients``) first and the boost then multiplies the weak modality's
encoder gradients, as the method left them, by ``1 + alpha * relative weakness``. The probe
monitor reads the step's detached features and is unaffected by the order. ``method=boost_ogm``
and ``method=boost_cggm`` are this rule applied to OGM-GE and CGGM (their configs compose the
same callbacks after OGM-GE's / CGGM's), and stay bitwise equal to ``method=ogm boost=on method.boost.alpha=0.75`` and
``method=cggm boost=on``.

Methods whose steps forward one modality (or a subset) at a time (MLA's turns, ReconBoost's
stages) are refused: the probe monitor compares the modalities on the same batch, which such a
step does not provide (observe them with ``diagnostics=probes``, which measures what each step
forwards). Refused, with the reason:
"""

from __future__ import annotations

from omegaconf import DictConfig

# method name -> why `boost=on` on it makes no sense
REFUSED: dict[str, str] = {
    "boost": "it is the boost already (method=boost is boost=on on joint training)",
    "boost_ogm": "it already has the boost on top (use method=ogm boost=on)",
    "boost_cggm": "it already has the boost on top (use method=cggm boost=on)",
    "unimodal": "it trains a single modality: there is no weaker modality to boost",
    "linear_probe": "its encoders are frozen: there is no encoder gradient to boost",
    "mla": "its steps forward one modality at a time, so the probe monitor cannot compare the "
    "modalities on one batch (diagnostics=probes observes it)",
    "reconboost": "its stages forward a subset of the modalities, so the probe monitor cannot "
    "compare them on one batch (diagnostics=probes observes it)",
}

__doc__ += "\n".join(f"\n* ``{m}``: {why}" for m, why in REFUSED.items())


def check_boost_combination(cfg: DictConfig) -> None:
    """Refuse ``boost=on`` on a method it makes no sense for (`REFUSED`)."""
    method = cfg.get("method") or {}
    if not method.get("boost_added", False):
        return
    name = str(method.get("name"))
    if name in REFUSED:
        raise ValueError(f"boost=on cannot be combined with method={name}: {REFUSED[name]}")
    boost = method.get("boost")
    if not isinstance(boost, DictConfig) or "_target_" not in boost:
        raise ValueError(
            f"boost=on: method.boost must be the boost callback, got {boost!r} (method={name})"
        )
    signal = boost.get("signal", "probe")
    probe = method.get("probe")
    if signal == "probe" and not (isinstance(probe, DictConfig) and "_target_" in probe):
        raise ValueError(
            "method.boost.signal=probe needs the probe monitor (method.probe); set "
            "method.boost.signal=ogm_score or grad_norm to boost without probes"
        )
