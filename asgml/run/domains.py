"""Option domains of the method callbacks, checked on the composed config at start-up.

A weight, strength or rate outside its domain is accepted by the arithmetic and silently
turns a method into something else (``method.reconboost.alpha=-1`` rewards disagreement
with the previous learner instead of penalising it). `check_option_domains` refuses
such values before anything is built, naming the key, its value and the domain; a
method's *strength* at exactly 0 (the method then does nothing: the run is a baseline under
the method's name) is allowed but warned about.

The table is keyed by the callback class (``_target_``), so it applies wherever a method
config places that callback (``method=boost_ogm`` has both ``method.ogm`` and
``method.boost``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("asgml")


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


NON_NEGATIVE: tuple[Callable[[Any], bool], str] = (lambda v: _num(v) and v >= 0, ">= 0")
POSITIVE: tuple[Callable[[Any], bool], str] = (lambda v: _num(v) and v > 0, "> 0")
UNIT: tuple[Callable[[Any], bool], str] = (lambda v: _num(v) and 0 <= v <= 1, "in [0, 1]")
OPEN_UNIT_HI: tuple[Callable[[Any], bool], str] = (
    lambda v: _num(v) and 0 <= v < 1,
    "in [0, 1)",
)
HALF_OPEN_UNIT: tuple[Callable[[Any], bool], str] = (
    lambda v: _num(v) and 0 < v <= 1,
    "in (0, 1]",
)

# _target_ -> {option: (predicate, domain)}
DOMAINS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "asgml.methods.ogm.OGMGE": {"alpha": NON_NEGATIVE},
    "asgml.methods.agm.AGM": {"alpha": NON_NEGATIVE},
    "asgml.methods.arl.ARL": {"gamma": NON_NEGATIVE, "temperature": POSITIVE},
    "asgml.methods.boost.ASGMLBoost": {
        "alpha": NON_NEGATIVE,
        "scale_max": (lambda v: _num(v) and v >= 1, ">= 1"),
        "ema_alpha": HALF_OPEN_UNIT,
    },
    "asgml.methods.probe.ProbeMonitor": {"lr": POSITIVE},
    "asgml.methods.cml.CML": {"lam": NON_NEGATIVE},
    "asgml.methods.lfm.LFM": {"ce_weight": NON_NEGATIVE, "align_weight": NON_NEGATIVE},
    "asgml.methods.miles.MILES": {"tau": NON_NEGATIVE, "mu": POSITIVE},
    "asgml.methods.mmcosine.MMCosine": {"scaling": POSITIVE},
    "asgml.methods.mmpareto.MMPareto": {"gamma": NON_NEGATIVE},
    "asgml.methods.opm.OPM": {"lam": NON_NEGATIVE},
    "asgml.methods.pmr.PMR": {"alpha": NON_NEGATIVE, "momentum_coef": OPEN_UNIT_HI},
    "asgml.methods.reconboost.ReconBoost": {
        "weight1": NON_NEGATIVE,
        "weight2": NON_NEGATIVE,
        "alpha": NON_NEGATIVE,
        "boost_rate": POSITIVE,
    },
    "asgml.methods.valuation.SampleValuation": {"alpha": NON_NEGATIVE},
    "asgml.methods.staleness.StalenessScheduler": {"beta": UNIT},
    "asgml.methods.umt.UMT": {"scaling": NON_NEGATIVE},
}

# _target_ -> the option whose 0 leaves the method doing nothing (warned)
STRENGTH: dict[str, str] = {
    "asgml.methods.ogm.OGMGE": "alpha",
    "asgml.methods.agm.AGM": "alpha",
    "asgml.methods.boost.ASGMLBoost": "alpha",
    "asgml.methods.cml.CML": "lam",
    "asgml.methods.pmr.PMR": "alpha",
    "asgml.methods.umt.UMT": "scaling",
}


# _target_ -> (option, offset): the first 0-based epoch the method acts in is option + offset
ACTS_FROM: dict[str, tuple[str, int]] = {
    "asgml.methods.valuation.SampleValuation": ("warmup", 0),
    "asgml.methods.ogm.OGMGE": ("modulation_starts", 0),
    "asgml.methods.agm.AGM": ("modulation_starts", -1),  # official 1-based epochs
    "asgml.methods.arl.ARL": ("start", 1),  # modulates epochs > start
    "asgml.methods.amco.AMCo": ("modulation_starts", 0),
    "asgml.methods.cml.CML": ("modulation_starts", 0),
    "asgml.methods.mbsd.MBSD": ("modulation_starts", 0),
    "asgml.methods.opm.OPM": ("modulation_starts", 0),
    "asgml.methods.pmr.PMR": ("modulation_starts", 0),
    "asgml.methods.umt.UMT": ("modulation_starts", 0),
    "asgml.methods.greedy.Greedy": ("starting_epoch", 0),
}


def check_option_domains(cfg: DictConfig) -> list[str]:
    """Refuse (``ValueError``) a method option outside its domain (`DOMAINS`); warn
    for a method strength of 0 (`STRENGTH`) and for a warm-up that outlasts
    ``trainer.max_epochs`` (`ACTS_FROM`: the method never acts, the run trains as
    its baseline). Returns the warnings given."""
    method = cfg.get("method")
    if not isinstance(method, DictConfig):
        return []
    warned = []
    for key, node in method.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        target = str(node.get("_target_"))
        for opt, (ok, domain) in DOMAINS.get(target, {}).items():
            if opt in node and node[opt] is not None and not ok(node[opt]):
                raise ValueError(
                    f"method.{key}.{opt} must be {domain}, got {node[opt]!r} "
                    f"(an option of {target.rsplit('.', 1)[-1]})"
                )
        strength = STRENGTH.get(target)
        if strength and strength in node and node[strength] == 0:
            text = (
                f"method.{key}.{strength}=0: {target.rsplit('.', 1)[-1]} does nothing at this "
                f"strength; the run trains as method={cfg.method.get('name')} without it"
            )
            log.warning("%s", text)
            warned.append(text)
        acts = ACTS_FROM.get(target)
        epochs = (cfg.get("trainer") or {}).get("max_epochs")
        if acts and _num(epochs) and epochs >= 0 and _num(node.get(acts[0])):
            first = max(0, int(node[acts[0]]) + acts[1])
            if first >= epochs:
                text = (
                    f"method.{key}.{acts[0]}={node[acts[0]]}: {target.rsplit('.', 1)[-1]} "
                    f"first acts in epoch {first} (0-based), but trainer.max_epochs={epochs}: "
                    "it NEVER acts and the run trains exactly as without it. Lower "
                    f"method.{key}.{acts[0]} or raise trainer.max_epochs"
                )
                log.warning("%s", text)
                warned.append(text)
    return warned
