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


def _as_bytes(name: str, arr: np.ndarray) -> np.ndarray:
    """The array's bytes as a flat uint8 view (a copy only if it is not contiguous)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name}: expected a host numpy array, got {type(arr).__name__}")
    try:
        seg.check_dtype(name, arr.dtype.name)
    except seg.UpdateRefused as err:  # the caller's mistake, found before anything is sent
        raise TypeError(f"{err}: cannot be sent") from None
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


class ShmTransport:
    """Writes each tensor once into a /dev/shm segment that the sidecar maps."""

    name = "shm"

    def __init__(self) -> None:
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

    def write(self, tensors: Tensors) -> list[pb.TensorSpec]:
        """Copies every tensor into the segment (the one write); returns the manifest."""
        specs, offset = [], 0
        for name, arr in tensors:
            raw = _as_bytes(name, arr)
            self._reserve(offset + raw.nbytes)
            np.frombuffer(self.mm, np.uint8, raw.nbytes, offset)[:] = raw
            specs.append(_spec(name, arr, offset))
            offset = seg.aligned(offset + raw.nbytes)
        return specs

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
