"""Trainer side of the weight sync: HF-named host tensors to the rollout sidecar.

Tensors are (HF name, host numpy array) pairs, taken one at a time (the trainer makes
them with `walar_jax.models.hf_tensors(model, dtype)`, gathering each from its shards,
never the whole model at once). No JAX here. They leave through a `Transport`:

- `ShmTransport` (same host, default): each tensor is written once into a file in
  /dev/shm that the sidecar maps without copying; only the manifest goes over gRPC.
  The segment is kept and rewritten in place for every later update.
- `GrpcTransport` (any host): the UpdateWeights stream carries the bytes in batches of
  at most `chunk_bytes` (small tensors share a batch, large ones are split).

A transport turns (name, array) pairs into the UpdateWeights message stream; callers
never see which one runs. An NCCL transport (vLLM's weight-transfer engine on GPUs)
would send a header naming "nccl" plus its rendezvous and broadcast the tensors out of
band, behind the same `messages` signature.

The segment layout (alignment, wire dtypes, growth, names) is `protos/weights.py`, which
the sidecar's receiver uses too.
"""

from __future__ import annotations

import atexit
import mmap
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from protos import rollout_pb2 as pb
from protos import weights as seg

Tensors = Iterable[tuple[str, np.ndarray]]


def _check(name: str, arr: np.ndarray) -> None:
    """Raises TypeError for what cannot travel (found before anything is sent)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a host numpy array, got {type(arr).__name__}")
    try:
        seg.check_dtype(name, arr.dtype.name)
    except seg.UpdateRefused as err:  # the caller's mistake, found before anything is sent
        raise TypeError(f"{err}: cannot be sent") from None


def _as_bytes(name: str, arr: np.ndarray) -> np.ndarray:
    """The array's bytes as a flat uint8 view (a copy only if it is not contiguous)."""
    _check(name, arr)
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _spec(name: str, arr: np.ndarray, offset: int = 0) -> pb.TensorSpec:
    return seg.to_proto(seg.Spec(name, arr.dtype.name, arr.shape, offset, arr.nbytes))


class Transport(Protocol):
    name: str

    def messages(self, tensors: Tensors, version: int | None) -> Iterator[pb.WeightUpdateMessage]:
        """The UpdateWeights request stream for one update."""

    def close(self) -> None:
        """Releases what the transport holds (segments, communicators)."""


def _header(transport: str, version: int | None, **kw) -> pb.WeightUpdateMessage:
    h = pb.WeightUpdateHeader(transport=transport, **kw)
    if version is not None:
        h.version = version
    return pb.WeightUpdateMessage(header=h)


def remove_stale_segments(shm_dir=None) -> list[str]:
    """Removes the segments (`walar-weights-<pid>-<id>`) of this user's processes that no
    longer run: what a trainer killed with SIGKILL could not clean up itself. Segments of
    other users and of live processes are left alone. Returns the names removed."""
    removed = []
    shm_dir = shm_dir or seg.SHM_DIR
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(seg.SHM_PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(seg.SHM_PREFIX) or not pid.isdigit():
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or _alive(int(pid)):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


class ShmTransport:
    """Writes each tensor once into a /dev/shm segment that the sidecar maps."""

    name = "shm"

    def __init__(self) -> None:
        remove_stale_segments()  # a killed trainer's, from an earlier run
        self.path = str(seg.segment_path(f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self.mm: mmap.mmap | None = None
        atexit.register(self.close)

    def _reserve(self, end: int) -> None:
        size = seg.grown_size(self.size, end)
        if size == self.size:
            return
        # Growing a tmpfs file keeps its pages; only the mapping is redone. After the
        # first update the segment has its final size and is reused as is.
        self.size = size
        if self.mm is not None:
            self.mm.close()
        os.ftruncate(self.fd, self.size)
        self.mm = mmap.mmap(self.fd, self.size)

    def write(self, tensors: Tensors, keep: DeltaBase | None = None) -> list[pb.TensorSpec]:
        """Copies every tensor into the segment (the one write, strided sources
        included); returns the manifest. `keep` also records them as a delta base."""
        specs, offset = [], 0
        for name, arr in tensors:
            _check(name, arr)
            self._reserve(offset + arr.nbytes)
            np.frombuffer(self.mm, arr.dtype, arr.size, offset).reshape(arr.shape)[...] = arr
            specs.append(_spec(name, arr, offset))
            if keep is not None:
                keep.record(name, np.frombuffer(self.mm, arr.dtype, arr.size, offset)
                            .reshape(arr.shape))
            offset = seg.aligned(offset + arr.nbytes)
        return specs

    def write_delta(self, tensors: Tensors, base: DeltaBase, max_fraction: float
                    ) -> tuple[list[pb.TensorSpec], int] | None:
        """Writes the elements whose bits differ from `base` (values, then uint32
        indices) and moves `base` to the new weights. Returns (manifest, changed
        elements), or None once more than `max_fraction` of all elements changed:
        `base` then holds the new weights in full, for `write(base.items())`."""
        specs, offset, changed, limit = [], 0, 0, max_fraction * base.numel
        over = False
        for name, arr in tensors:
            _check(name, arr)
            if over:
                base.record(name, arr)
                continue
            idx, vals = base.diff(name, arr)
            changed += idx.size
            if changed > limit:
                over = True
                continue
            if not idx.size:
                continue
            self._reserve(seg.aligned(offset + vals.nbytes) + idx.nbytes)
            np.frombuffer(self.mm, vals.dtype, vals.size, offset)[:] = vals
            at = seg.aligned(offset + vals.nbytes)
            np.frombuffer(self.mm, seg.INDEX_DTYPE, idx.size, at)[:] = idx
            specs.append(seg.to_proto(seg.Spec(name, arr.dtype.name, arr.shape, offset,
                                               vals.nbytes, idx.size, at)))
            offset = seg.aligned(at + idx.nbytes)
        return None if over else (specs, changed)

    def messages(self, tensors: Tensors, version: int | None) -> Iterator[pb.WeightUpdateMessage]:
        specs = self.write(tensors)
        yield _header("shm", version, tensors=specs, shm_path=self.path)

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.mm is not None:
            self.mm.close()
        os.close(self.fd)
        self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ShmTransport:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DeltaBase:
    """The weights the sidecar was last given (their bits, in the wire dtype), and the
    version it installed them as: what a delta is computed against. Costs one host copy
    of the weights; any doubt (a failed update) drops it and the next update is full."""

    def __init__(self) -> None:
        self.bits: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.version: int | None = None

    @property
    def numel(self) -> int:
        return sum(b.size for b in self.bits.values())

    def usable(self) -> bool:
        return self.version is not None and bool(self.bits)

    def drop(self) -> None:
        self.version = None

    def record(self, name: str, arr: np.ndarray) -> None:
        bits = _bits(arr)
        if name in self.bits and self.bits[name].shape == bits.shape and \
                self.bits[name].dtype == bits.dtype:
            self.bits[name][...] = bits
        else:
            self.bits[name] = bits.copy()
        self.dtypes[name], self.shapes[name] = arr.dtype, arr.shape

    def diff(self, name: str, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 flat indices, new bits) of the elements that changed; updates the base."""
        old = self.bits.get(name)
        new = _bits(arr)
        if old is None or old.shape != new.shape or self.dtypes[name] != arr.dtype or \
                new.size >= 1 << 32:  # nothing to compare with: every element changed
            self.record(name, arr)
            return np.arange(new.size, dtype=np.uint32), arr.reshape(-1)
        idx = np.flatnonzero(old != new).astype(np.uint32)
        vals = new[idx]
        old[idx] = vals
        return idx, vals.view(arr.dtype)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, b in self.bits.items():
            yield name, b.view(self.dtypes[name]).reshape(self.shapes[name])


def _bits(arr: np.ndarray) -> np.ndarray:
    """The array's elements as unsigned integers of the same width, flat."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    return flat.view(np.dtype(f"u{flat.dtype.itemsize}"))


class GrpcTransport:
    """Streams the bytes inside UpdateWeights messages of at most `chunk_bytes`."""

    name = "grpc"

    def __init__(self, chunk_bytes: int = 4 << 20):
        self.chunk_bytes = chunk_bytes

    def messages(self, tensors: Tensors, version: int | None) -> Iterator[pb.WeightUpdateMessage]:
        yield _header("grpc", version)
        batch, size = pb.TensorBatch(), 0
        for name, arr in tensors:
            raw = _as_bytes(name, arr)
            start = 0
            while True:
                take = min(raw.nbytes - start, self.chunk_bytes - size)
                chunk = batch.chunks.add(data=raw[start : start + take].tobytes())
                if start == 0:
                    chunk.spec.CopyFrom(_spec(name, arr))
                start, size = start + take, size + take
                if size >= self.chunk_bytes:
                    yield pb.WeightUpdateMessage(batch=batch)
                    batch, size = pb.TensorBatch(), 0
                if start >= raw.nbytes:
                    break
        if batch.chunks:
            yield pb.WeightUpdateMessage(batch=batch)

    def close(self) -> None:
        pass


TRANSPORTS: dict[str, Callable[[], Transport]] = {"shm": ShmTransport, "grpc": GrpcTransport}


def make_transport(name: str) -> Transport:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight transport {name!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[name]()
