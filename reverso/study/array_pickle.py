"""Reading a pickle of numeric arrays (CIFAR-10's Python batches) without running its code.

A pickle names the functions that rebuild its objects, so ``pickle.load`` runs whatever a file
asks for. :func:`read_array_pickle` builds only what such data holds: dicts, lists, tuples,
strings, bytes, numbers and numpy arrays of booleans, integers or floats, through numpy's own
array rebuilders with their sizes checked against the file's. Any other name refuses the file
with a :class:`~reverso.errors.DatasetError` before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from reverso.errors import DatasetError

#: the array kinds a file may hold: booleans, signed and unsigned integers, floats
KINDS = "biuf"


def read_array_pickle(path: Path):
    """The object pickled in ``path``, built from data only (see the module)."""
    raw = Path(path).read_bytes()
    try:
        return _ArraysOnly(io.BytesIO(raw), limit=len(raw), path=path).load()
    except DatasetError:
        raise
    except Exception as err:  # truncated or garbled streams
        raise DatasetError(f"{path} is not a readable pickle of arrays ({err!r})") from err


def _latin1_bytes(text, encoding="latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DatasetError("a pickled bytes object in an unexpected form")
    return text.encode("latin1")


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, file, *, limit: int, path: Path):
        super().__init__(file, encoding="latin1")  # CIFAR-10's batches were written by Python 2
        self.limit, self.path = limit, path

    def find_class(self, module: str, name: str):
        builders = {
            "_reconstruct": self._reconstruct,  # numpy.core / numpy._core .multiarray
            "_frombuffer": self._frombuffer,  # numpy._core.numeric (pickle protocol 5)
            "ndarray": self._array,  # only named as _reconstruct's subtype; a call is checked
            "dtype": self._dtype,
        }
        if module.split(".")[0] == "numpy" and name in builders:
            return builders[name]
        if (module, name) == ("_codecs", "encode"):  # bytes, as pickle protocol 2 writes them
            return _latin1_bytes
        raise DatasetError(
            f"{self.path} asks to call {module}.{name}; reverso reads pickles of arrays only and "
            "runs no code from them (use the dataset's binary version, or recreate the file)"
        )

    def _dtype(self, spec, align=False, copy=False):
        dtype = np.dtype(spec, align, copy)
        if dtype.kind not in KINDS or dtype.fields is not None:
            raise DatasetError(f"{self.path} holds arrays of {dtype}; only numeric arrays are read")
        return dtype

    def _checked(self, shape, dtype) -> tuple[int, ...]:
        shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in shape) or int(np.prod(shape)) * np.dtype(dtype).itemsize > self.limit:
            raise DatasetError(f"{self.path} declares an array {shape} larger than the file")
        return shape

    def _array(self, shape, dtype=float, *args, **kwargs):
        """``numpy.ndarray(shape, dtype)`` called from the pickle: an empty array, as large as
        the file allows."""
        dtype = self._dtype(dtype)
        return np.zeros(
            self._checked(shape if isinstance(shape, tuple) else (shape,), dtype), dtype
        )

    def _reconstruct(self, subtype, shape, dtype):
        if subtype != self._array:  # the ndarray find_class gave
            raise DatasetError(f"{self.path} holds an array subclass; only plain arrays are read")
        return np.ndarray(self._checked(shape, np.uint8), dtype=np.uint8)  # setstate fills it

    def _frombuffer(self, buffer, dtype, shape, order):
        dtype = self._dtype(dtype)
        array = np.frombuffer(bytes(buffer), dtype=dtype)
        return array.reshape(self._checked(shape, dtype), order=order).copy()
