"""asgml: balanced multimodal learning with PyTorch Lightning.

``asgml.fit(dataset=..., method=..., seeds=[...], **overrides)`` runs methods from Python
(``asgml.api.fit``); ``python -m asgml.train`` is the command line.
"""

from typing import Any

from asgml.run.resolvers import register_resolvers

register_resolvers()

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "fit":  # lazy: `import asgml` stays free of torch (CLI speed)
        from asgml.api import fit

        return fit
    raise AttributeError(f"module 'asgml' has no attribute {name!r}")
