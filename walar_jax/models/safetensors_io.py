"""Streaming safetensors I/O on numpy (bf16 through ml_dtypes).

Reading maps the file and hands out one tensor at a time; writing lays out the header
from shapes known in advance, then writes each tensor as it is produced, so neither
side ever holds a whole checkpoint in memory.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
HF_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


class SafeTensorsFile:
    """Random access to the tensors of one .safetensors file."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack("<Q", self._mm[:8])
        header = json.loads(self._mm[8 : 8 + n])
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self._base = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        arr = np.frombuffer(self._mm, dtype=dtype, count=(end - start) // dtype.itemsize,
                            offset=self._base + start)
        return arr.reshape(info["shape"])


def write_file(path: str, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes tensors named by `specs`; `produce(name)` is called once per tensor, in
    order, and its result must match the spec's shape and dtype."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    specs = list(specs)
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
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


def checkpoint_files(directory: str) -> list[str]:
    """The safetensors files of an HF checkpoint directory (sharded with index, or single)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(directory, n) for n in names]
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def iter_checkpoint(directory: str) -> Iterator[tuple[str, np.ndarray]]:
    for path in checkpoint_files(directory):
        st = SafeTensorsFile(path)
        for name in st.keys():
            yield name, st.get(name)
