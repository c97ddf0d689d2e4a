"""asgml: balanced multimodal learning with PyTorch Lightning."""

from asgml.run.resolvers import register_resolvers

register_resolvers()

__version__ = "0.1.0"
