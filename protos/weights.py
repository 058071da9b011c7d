"""The weight segment: how a weight update lays tensors out in bytes (both sides).

A segment is a file in /dev/shm holding tensors back to back, each starting at a
multiple of `ALIGN`, plus a manifest of `Spec`s (HF name, wire dtype, shape, byte
offset, byte count) that travels in the UpdateWeights header. The trainer's sender
(`walar_jax/weight_sync.py`) writes segments; the sidecar (`rollout/weights.py`) maps
them, or writes one itself from a gRPC stream. Both use only this module for the
layout, so neither side restates it. Pure Python (+ the generated proto messages).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Iterable, Mapping

from protos import rollout_pb2 as pb

# Byte alignment of every tensor in a segment: any wire dtype views it in place.
ALIGN = 64
# Wire dtypes (numpy names) and their sizes; vLLM loads each of them.
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
# Segments live in /dev/shm under this prefix; the sidecar maps nothing else.
SHM_DIR = pathlib.Path("/dev/shm")
SHM_PREFIX = "walar-weights-"
SHM_NAME = re.compile(rf"^{SHM_PREFIX}[A-Za-z0-9_.-]{{1,100}}$")
# Growth factor of a segment whose final size is not known in advance (a sender that
# gathers tensors one at a time, a receiver of a stream). tmpfs pages are allocated
# only when written, so overshooting costs address space, not memory.
GROWTH = 2


class UpdateRefused(ValueError):
    """The update is malformed; nothing was installed and the old weights stay live."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One tensor of a segment (offsets count from the start of the file)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0
    nbytes: int = 0

    def expected_nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def aligned(n: int) -> int:
    """The first offset at or after `n` where a tensor may start."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def grown_size(size: int, needed: int) -> int:
    """New size of a segment of `size` bytes that must hold `needed` bytes."""
    return size if needed <= size else max(needed, GROWTH * size)


def check_dtype(name: str, dtype: str) -> None:
    """Raises UpdateRefused for a dtype that cannot travel (both sides call this)."""
    if dtype not in ITEMSIZE:
        raise UpdateRefused(f"{name}: unsupported dtype {dtype!r} (want {sorted(ITEMSIZE)})")


def segment_path(tag: str) -> pathlib.Path:
    """The path of a segment named `walar-weights-<tag>`."""
    path = SHM_DIR / f"{SHM_PREFIX}{tag}"
    if not SHM_NAME.match(path.name):
        raise ValueError(f"bad segment tag {tag!r}")
    return path


def resolve_shm_path(path: str) -> pathlib.Path:
    """The segment a client named, checked to be one of ours in /dev/shm."""
    p = pathlib.Path(path)
    if p.parent != SHM_DIR or not SHM_NAME.match(p.name):
        raise UpdateRefused(f"shm_path must be {SHM_DIR}/{SHM_PREFIX}<id>, got {path!r}")
    if not p.is_file():
        raise UpdateRefused(f"shm segment {path} does not exist (is the trainer on this host?)")
    return p


def to_proto(s: Spec) -> pb.TensorSpec:
    return pb.TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape, offset=s.offset,
                         nbytes=s.nbytes)


def from_proto(t: pb.TensorSpec) -> Spec:
    return Spec(t.name, t.dtype, tuple(int(d) for d in t.shape), int(t.offset), int(t.nbytes))


def validate(specs: Iterable[Spec], expected: Mapping[str, Spec],
             segment_size: int | None) -> None:
    """Raises UpdateRefused unless `specs` covers exactly the expected tensors and
    shapes, each with the byte count its dtype and shape need, inside the segment."""
    seen: set[str] = set()
    problems: list[str] = []
    for s in specs:
        if s.name in seen:
            problems.append(f"duplicate tensor {s.name}")
        seen.add(s.name)
        if s.name not in expected:
            problems.append(f"unexpected tensor {s.name}")
            continue
        if s.dtype not in ITEMSIZE:
            problems.append(f"{s.name}: unsupported dtype {s.dtype!r} (want {sorted(ITEMSIZE)})")
            continue
        want = expected[s.name].shape
        if s.shape != want:
            problems.append(f"{s.name}: shape {list(s.shape)} != checkpoint {list(want)}")
        elif s.nbytes != s.expected_nbytes():
            problems.append(f"{s.name}: {s.nbytes} bytes for {s.dtype}{list(s.shape)}")
        elif s.offset % ALIGN:
            problems.append(f"{s.name}: offset {s.offset} is not a multiple of {ALIGN}")
        elif segment_size is not None and s.offset + s.nbytes > segment_size:
            problems.append(f"{s.name}: bytes [{s.offset}, {s.offset + s.nbytes}) past segment end")
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        problems.append(f"missing {len(missing)} tensors: {', '.join(missing[:5])}{more}")
    if problems:
        raise UpdateRefused("update refused, old weights stay live: " + "; ".join(problems[:10]))
