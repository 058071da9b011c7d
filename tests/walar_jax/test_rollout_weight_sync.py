"""The trainer-side weight-sync transports, without a sidecar: what they write and send."""

from __future__ import annotations

import os
import pathlib

import ml_dtypes
import numpy as np
import pytest

from protos import weights as seg
from walar_jax import weight_sync


def _tensors(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        ("model.embed_tokens.weight", rng.standard_normal((37, 16)).astype(np.float32)),
        ("model.norm.weight", rng.standard_normal(16).astype(ml_dtypes.bfloat16)),
        ("model.layers.0.mlp.up_proj.weight", rng.standard_normal((48, 16)).astype(np.float16)),
        ("lm_head.weight", np.asfortranarray(rng.standard_normal((37, 16)).astype(np.float32))),
    ]


def test_shm_writes_each_tensor_once_at_aligned_offsets_and_reuses_the_segment():
    t = weight_sync.ShmTransport()
    try:
        msgs = list(t.messages(iter(_tensors(0)), version=3))
        assert len(msgs) == 1 and msgs[0].header.transport == "shm"
        h = msgs[0].header
        assert h.version == 3 and h.shm_path == t.path and t.path.startswith("/dev/shm/")
        raw = pathlib.Path(t.path).read_bytes()
        for spec, (name, arr) in zip(h.tensors, _tensors(0)):
            assert spec.name == name and tuple(spec.shape) == arr.shape
            assert spec.dtype == arr.dtype.name and spec.offset % seg.ALIGN == 0
            got = np.frombuffer(raw, arr.dtype, arr.size, spec.offset).reshape(arr.shape)
            np.testing.assert_array_equal(got, arr)
        size = os.path.getsize(t.path)
        h2 = next(iter(t.messages(iter(_tensors(1)), version=None))).header
        assert not h2.HasField("version")
        assert os.path.getsize(t.path) == size  # same segment, same size, rewritten in place
        spec = h2.tensors[0]
        got = np.frombuffer(pathlib.Path(t.path).read_bytes(), np.float32, 37 * 16, spec.offset)
        np.testing.assert_array_equal(got.reshape(37, 16), _tensors(1)[0][1])
    finally:
        t.close()
    assert not os.path.exists(t.path)


def test_grpc_stream_batches_small_tensors_splits_large_ones_and_reassembles():
    t = weight_sync.GrpcTransport(chunk_bytes=1000)
    msgs = list(t.messages(iter(_tensors(0)), version=None))
    assert msgs[0].header.transport == "grpc" and not msgs[0].header.HasField("version")
    sizes = [sum(len(c.data) for c in m.batch.chunks) for m in msgs[1:]]
    assert max(sizes) <= 1000 and sum(sizes) == sum(a.nbytes for _, a in _tensors(0))
    assert any(len(m.batch.chunks) > 1 for m in msgs[1:])  # small tensors share a message
    got, current = {}, None
    for m in msgs[1:]:
        for c in m.batch.chunks:
            if c.HasField("spec"):
                current = c.spec
                got[current.name] = bytearray()
            got[current.name] += c.data
    for name, arr in _tensors(0):
        np.testing.assert_array_equal(
            np.frombuffer(bytes(got[name]), arr.dtype).reshape(arr.shape), arr
        )


def test_transports_refuse_dtypes_the_sidecar_cannot_load():
    bad = [("model.norm.weight", np.arange(4, dtype=np.int64))]
    with pytest.raises(TypeError, match="int64"):
        list(weight_sync.GrpcTransport().messages(iter(bad), None))
    with pytest.raises(ValueError, match="nccl"):
        weight_sync.make_transport("nccl")
