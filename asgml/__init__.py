"""asgml: balanced multimodal learning with PyTorch Lightning."""

from asgml.config import register_resolvers

register_resolvers()

__version__ = "0.1.0"
