"""Reading pickles without running their code. Every pickle mlic-edge reads (``train --label-vectors``, ``import
--word-vectors`` / ``--adjacency``) goes through :func:`read_pickle`: it rebuilds plain data (dicts, lists, tuples,
strings, numbers and numpy arrays, as the papers' label pickles hold them) and refuses any other global, naming it;
``--trust-pickle`` unpickles the file fully, which can run code from it. PyTorch checkpoints are read with
``torch.load(weights_only=True)`` instead, refused the same way. torch-free."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mlic_edge.errors import PickleRefused

TRUST_PICKLE_HINT = "pass --trust-pickle only if you trust the file"

_NUMPY_CORE = np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1
_PLAIN_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles write bytes through it
    **{(f"{package}.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct
       for package in ("numpy.core", "numpy._core")},  # pickles written by numpy 1 / numpy 2
    **{(f"{package}.multiarray", "scalar"): _NUMPY_CORE.multiarray.scalar for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _NUMPY_CORE.numeric._frombuffer  # protocol 5
       for package in ("numpy.core", "numpy._core")},
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and Python's own containers, strings and numbers; any other global is refused before
    it is looked up, so no code from the file can run."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return _PLAIN_GLOBALS[(module, name)]
        raise PickleRefused(f"{self.path} is not a plain data pickle: it needs {module}.{name}, and unpickling that "
                            f"can run code from the file", hint=TRUST_PICKLE_HINT)


def read_pickle(path: str | Path, *, trust: bool = False) -> Any:
    """The object pickled in ``path``: plain data only (:class:`PickleRefused` names the first other global), or
    anything when ``trust`` (``--trust-pickle``). ``latin1`` reads Python 2 pickles (numpy's convention); a damaged
    file raises what pickle raises."""
    path = Path(path)
    with path.open("rb") as handle:
        if trust:
            return pickle.Unpickler(handle, encoding="latin1").load()  # noqa: S301 - the user vouched for the file
        return _PlainDataUnpickler(handle, path).load()
