"""Reading and writing safetensors files, for every environment (one implementation).

The trainer loads and exports checkpoints with it (`walar_jax/models/safetensors_io.py`
re-exports it); the sidecar reads the tensor table and hashes the bytes of the checkpoint
vLLM loaded (`rollout/weights.py`). Headers, tables and file lists need only the
standard library; arrays need numpy, and bfloat16 arrays `ml_dtypes` where it is
installed (the rollout environment has none and reads no bfloat16 arrays).

Reading maps the file and hands out one tensor at a time; writing lays out the header
from shapes known in advance, then writes each tensor as it is produced, so neither side
ever holds a whole checkpoint in memory.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import pathlib
import struct
from collections.abc import Callable, Iterable, Iterator

import numpy as np

INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype codes -> numpy dtype names ("bfloat16" is ml_dtypes').
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
_CODES = {v: k for k, v in DTYPE_NAMES.items()}
# A header larger than this is a corrupt file, not a checkpoint (safetensors' own limit).
MAX_HEADER_BYTES = 100 << 20


try:  # bfloat16 numpy arrays; the trainer has it, the sidecar needs no arrays of it
    import ml_dtypes

    _BF16 = {"bfloat16": ml_dtypes.bfloat16}
except ImportError:
    _BF16 = {}
# HF `torch_dtype` / `dtype` names of checkpoints -> numpy scalar types.
HF_DTYPES = {"float32": np.float32, "float16": np.float16, **_BF16}


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype of a numpy-style name; bfloat16 needs ml_dtypes."""
    if name == "bfloat16" and not _BF16:
        raise ImportError("bfloat16 arrays need the ml_dtypes package")
    return np.dtype(_BF16.get(name, name))


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """One tensor of a file: numpy-style dtype name, shape, absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the offset where its data starts."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path}: header length {n} does not fit a {size}-byte file")
        header = json.loads(f.read(n))
    return header, 8 + n


def tensor_table(path: str | os.PathLike) -> list[TensorEntry]:
    """Every tensor of one file (offsets from the file start), in header order."""
    header, base = read_header(path)
    size = os.path.getsize(path)
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        if not 0 <= begin <= end <= size - base:
            raise ValueError(f"{path}: tensor {name} bytes [{begin}, {end}) lie outside the file")
        dtype = DTYPE_NAMES.get(meta["dtype"], meta["dtype"])
        out.append(TensorEntry(name, dtype, tuple(meta["shape"]), base + begin, end - begin))
    return out


def checkpoint_files(directory: str | os.PathLike) -> list[str]:
    """The safetensors files of an HF checkpoint directory, as vLLM picks them: those the
    index names when there is one, else every `*.safetensors` in it."""
    d = pathlib.Path(directory)
    index = d / INDEX_FILE
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (d / n).exists()]
        if missing:
            raise FileNotFoundError(f"{index} names missing files: {missing[:3]}")
        return [str(d / n) for n in names]
    files = sorted(str(p) for p in d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors (and no {INDEX_FILE}) in {directory}")
    return files


class SafeTensorsFile:
    """Random access to the tensors of one .safetensors file (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        header, _ = read_header(path)
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self._entries = {e.name: e for e in tensor_table(path)}
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> str:
        """numpy-style dtype name of a tensor (no ml_dtypes needed)."""
        return self._entries[name].dtype

    def get(self, name: str) -> np.ndarray:
        e = self._entries[name]
        if e.dtype not in _CODES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {e.dtype}")
        dtype = numpy_dtype(e.dtype)
        arr = np.frombuffer(self._mm, dtype=dtype, count=e.nbytes // dtype.itemsize,
                            offset=e.offset)
        return arr.reshape(e.shape)


def write_file(path: str, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes tensors named by `specs`; `produce(name)` is called once per tensor, in
    order, and its result must match the spec's shape and dtype."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    specs = list(specs)
    for name, shape, dtype in specs:
        dt = np.dtype(dtype)
        if dt.name not in _CODES:
            raise ValueError(f"{name}: dtype {dt.name} has no safetensors code")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _CODES[dt.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in specs:
            arr = np.ascontiguousarray(produce(name))
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: produced {arr.shape} {arr.dtype}, expected {shape} {dtype}")
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))
    os.replace(tmp, path)


def iter_checkpoint(directory: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for every tensor of a checkpoint directory, one file at a time."""
    for path in checkpoint_files(directory):
        st = SafeTensorsFile(path)
        for name in st.keys():
            yield name, st.get(name)
