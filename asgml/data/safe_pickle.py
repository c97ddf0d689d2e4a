"""Loading dataset pickles without running code from them.

``pickle.load`` calls whatever a file names (``os.system`` through ``__reduce__``, for
example), so a downloaded MMSA or AVE pickle could run code of its author's choosing.
`safe_load` reads them with a `pickle.Unpickler` whose ``find_class`` admits
only the types those formats contain: builtin containers, strings and numbers, and numpy
arrays, dtypes and scalars (under the ``numpy.core`` names of numpy 1 and the ``numpy._core``
names of numpy 2). Any other global is refused with `UnsafePickleError`, which names
the file and the global.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np

_BUILTINS = (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
    "int", "float", "complex", "bool", "slice", "range",
)  # fmt: skip
_NUMPY_CORE = (
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
)

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("builtins", n) for n in _BUILTINS}
    | {("__builtin__", n) for n in _BUILTINS}  # protocol-2 pickles written by python 2
    | {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")}
    | {("_codecs", "encode")}  # bytes in protocol-2 pickles
    | {("collections", "OrderedDict")}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
    | {(f"numpy.{core}.{mod}", name) for core in ("core", "_core") for mod, name in _NUMPY_CORE}
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside `SAFE_GLOBALS`; nothing of it was run."""


def _is_numpy_type(module: str, name: str) -> bool:
    """numpy scalar types (``numpy.float32``) and dtype classes (``numpy.dtypes.Float32DType``)."""
    if module not in ("numpy", "numpy.dtypes"):
        return False
    obj = getattr(np, name, None) if module == "numpy" else getattr(np.dtypes, name, None)
    return isinstance(obj, type) and issubclass(obj, np.generic | np.dtype)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `SAFE_GLOBALS` (plus ``extra``) and numpy's
    scalar and dtype types."""

    def __init__(
        self, file: Any, source: str = "<pickle>", extra: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(file)
        self.source = source
        self.allowed = SAFE_GLOBALS | frozenset(extra)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed or _is_numpy_type(module, name):
            if module == "copy_reg" or module == "__builtin__":  # python-2 names
                module = {"copy_reg": "copyreg", "__builtin__": "builtins"}[module]
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load the global {module}.{name}: a dataset pickle "
            "holds only dicts, lists, strings, numbers and numpy arrays, so this file may "
            "run code when loaded. Recreate it from the original data, or, if you trust "
            "its author, convert it yourself with pickle.load"
        )


def safe_load(path: str | os.PathLike, extra: Iterable[tuple[str, str]] = ()) -> Any:
    """Unpickle the file at ``path`` with `SafeUnpickler`."""
    with open(path, "rb") as f:
        return SafeUnpickler(f, str(path), extra).load()


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with `SafeUnpickler`."""
    return SafeUnpickler(io.BytesIO(data), source).load()
