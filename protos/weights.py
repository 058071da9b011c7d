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
import errno
import math
import os
import pathlib
import re
import stat
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
    delta_count: int = 0   # delta updates: changed elements (values at offset)
    index_offset: int = 0  # delta updates: their uint32 flat indices

    def expected_nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    def ranges(self) -> list[tuple[int, int, str]]:
        """The byte ranges this tensor occupies in its segment."""
        out = [(self.offset, self.nbytes, self.name)]
        if self.delta_count:
            out.append((self.index_offset, INDEX_BYTES * self.delta_count,
                        f"{self.name} (indices)"))
        return out


# Delta updates carry flat element indices as little-endian uint32.
INDEX_DTYPE = "uint32"
INDEX_BYTES = 4


class BaseMismatch(UpdateRefused):
    """A delta made against another version than the live one (FAILED_PRECONDITION)."""


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
    """The segment a client named, checked by name to be one of ours in /dev/shm.
    Only the name: `open_segment` does the checks that need the file."""
    p = pathlib.Path(path)
    if p.parent != SHM_DIR or not SHM_NAME.match(p.name):
        raise UpdateRefused(f"shm_path must be {SHM_DIR}/{SHM_PREFIX}<id>, got {path!r}")
    if os.path.realpath(p.parent) != str(SHM_DIR):
        raise UpdateRefused(f"{SHM_DIR} is itself a link; refusing shm segments")
    return p


def open_segment(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """Opens a segment read-only without following a symbolic link and returns the
    descriptor and its stat. Refuses (UpdateRefused) anything but a regular file with
    one link, owned by this process's user and closed to group and others: a file
    another user planted, or a link to a file elsewhere, is never read. The messages
    name the path and the reason, never the size of a file that was refused."""
    p = resolve_shm_path(str(path))
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UpdateRefused(f"shm segment {p} does not exist (is the trainer on this host?)") \
            from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UpdateRefused(f"shm segment {p} is a symbolic link; refused") from None
        raise UpdateRefused(f"shm segment {p} cannot be opened: {err.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not this sidecar's {os.geteuid()}"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):o}; group and others must have no access"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links"
    if problem:
        os.close(fd)
        raise UpdateRefused(f"shm segment {p} {problem}; refused")
    return fd, st


def to_proto(s: Spec) -> pb.TensorSpec:
    return pb.TensorSpec(name=s.name, dtype=s.dtype, shape=s.shape, offset=s.offset,
                         nbytes=s.nbytes, delta_count=s.delta_count,
                         index_offset=s.index_offset)


def from_proto(t: pb.TensorSpec) -> Spec:
    return Spec(t.name, t.dtype, tuple(int(d) for d in t.shape), int(t.offset), int(t.nbytes),
                int(t.delta_count), int(t.index_offset))


def _overlaps(specs: list[Spec]) -> list[str]:
    """Tensors whose byte ranges share a byte: one would overwrite the other's data."""
    out, last = [], None
    ranges = sorted((r for s in specs for r in s.ranges() if r[1]), key=lambda r: r[0])
    for off, n, name in ranges:
        if last is not None and off < last[0] + last[1]:
            out.append(f"{name}: bytes [{off}, {off + n}) overlap "
                       f"{last[2]} [{last[0]}, {last[0] + last[1]})")
        if last is None or off + n > last[0] + last[1]:
            last = (off, n, name)
    return out


def validate_delta(specs: list[Spec], expected: Mapping[str, Spec], segment_size: int) -> None:
    """Raises UpdateRefused unless every delta tensor is a known one in its live dtype
    and shape, with values and indices aligned, inside the segment and apart."""
    problems, seen = [], set()
    for s in specs:
        want = expected.get(s.name)
        if s.name in seen:
            problems.append(f"duplicate tensor {s.name}")
        seen.add(s.name)
        if want is None:
            problems.append(f"unexpected tensor {s.name}")
            continue
        if (s.dtype, s.shape) != (want.dtype, want.shape):
            problems.append(f"{s.name}: delta in {s.dtype}{list(s.shape)}, live weights are "
                            f"{want.dtype}{list(want.shape)}")
        elif not 0 < s.delta_count <= math.prod(s.shape):
            problems.append(f"{s.name}: delta of {s.delta_count} elements")
        elif s.nbytes != s.delta_count * ITEMSIZE[s.dtype]:
            problems.append(f"{s.name}: {s.nbytes} bytes for {s.delta_count} values")
        else:
            for off, n, what in s.ranges():
                if off % ALIGN:
                    problems.append(f"{what}: offset {off} is not a multiple of {ALIGN}")
                elif off + n > segment_size:
                    problems.append(f"{what}: bytes [{off}, {off + n}) past segment end")
    problems += _overlaps(specs)
    if problems:
        raise UpdateRefused("delta refused, old weights stay live: " + "; ".join(problems[:10]))


def validate(specs: Iterable[Spec], expected: Mapping[str, Spec],
             segment_size: int | None) -> None:
    """Raises UpdateRefused unless `specs` covers exactly the expected tensors and
    shapes, each with the byte count its dtype and shape need, inside the segment."""
    specs = list(specs)
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
    problems += _overlaps(specs)
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        problems.append(f"missing {len(missing)} tensors: {', '.join(missing[:5])}{more}")
    if problems:
        raise UpdateRefused("update refused, old weights stay live: " + "; ".join(problems[:10]))
