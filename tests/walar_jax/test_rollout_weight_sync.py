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


def _bf16_weights(seed: int):
    rng = np.random.default_rng(seed)
    return {"a.weight": (rng.standard_normal((64, 48)) * 0.02).astype(ml_dtypes.bfloat16),
            "b.weight": np.asfortranarray(rng.standard_normal((32, 16)).astype(ml_dtypes.bfloat16)),
            "c.bias": rng.standard_normal(7).astype(ml_dtypes.bfloat16)}


def test_delta_carries_exactly_the_changed_bf16_bits_and_moves_the_base():
    w0 = _bf16_weights(0)
    base = weight_sync.DeltaBase()
    with weight_sync.ShmTransport() as t:
        t.write(iter(w0.items()), keep=base)
        for name, arr in base.items():  # the base holds what was written, shapes included
            assert arr.shape == w0[name].shape
            np.testing.assert_array_equal(arr.view(np.uint16), w0[name].view(np.uint16))
        w1 = {k: v.copy() for k, v in w0.items()}
        # An fp32 step of 1e-7 rounds back to the same bf16 value: no change; 1e-2 does.
        w1["a.weight"] = (w0["a.weight"].astype(np.float32) + 1e-7).astype(ml_dtypes.bfloat16)
        w1["b.weight"][3, 5] += ml_dtypes.bfloat16(1.0)
        w1["b.weight"][0, 1] = -w1["b.weight"][0, 1]
        want = {n: np.flatnonzero(np.ascontiguousarray(w1[n]).view(np.uint16).reshape(-1)
                                  != np.ascontiguousarray(w0[n]).view(np.uint16).reshape(-1))
                for n in w0}
        specs, changed = t.write_delta(iter(w1.items()), base, 0.05)
        assert changed == sum(len(v) for v in want.values())
        # Most of a.weight rounds back to its bf16 value; elements near 0 do move.
        assert 0 < len(want["a.weight"]) < 0.05 * w0["a.weight"].size
        assert len(want["b.weight"]) == 2 and not len(want["c.bias"])
        assert [s.name for s in specs] == ["a.weight", "b.weight"]
        s = specs[1]
        ids = np.frombuffer(t.mm, np.uint32, s.delta_count, s.index_offset).copy()
        vals = np.frombuffer(t.mm, np.uint16, s.delta_count, s.offset).copy()
        np.testing.assert_array_equal(ids, want["b.weight"])
        flat = np.ascontiguousarray(w1["b.weight"]).view(np.uint16).reshape(-1)
        np.testing.assert_array_equal(vals, flat[ids])
        assert s.offset % seg.ALIGN == 0 and s.index_offset % seg.ALIGN == 0
        for name, arr in base.items():
            np.testing.assert_array_equal(arr.view(np.uint16),
                                          np.asarray(w1[name]).view(np.uint16))
        # Past the threshold: None, and the base holds the new weights in full.
        w2 = {k: (v.astype(np.float32) * 1.5).astype(ml_dtypes.bfloat16) for k, v in w1.items()}
        assert t.write_delta(iter(w2.items()), base, 0.05) is None
        for name, arr in base.items():
            np.testing.assert_array_equal(arr.view(np.uint16),
                                          np.asarray(w2[name]).view(np.uint16))


def test_segments_of_dead_processes_are_removed_and_no_others(tmp_path):
    """A trainer killed with SIGKILL cannot remove its segment; the next one does. Live
    processes' segments, other users' and other files stay."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {"stale": f"{seg.SHM_PREFIX}{dead.pid}-0a1b2c3d",
             "live": f"{seg.SHM_PREFIX}{os.getpid()}-0a1b2c3d",
             "other_user": f"{seg.SHM_PREFIX}{dead.pid}-ffffffff",
             "not_ours": "psm_1234", "no_pid": f"{seg.SHM_PREFIX}staging"}
    if os.getuid() != 0:  # only root can give a file to another user
        del names["other_user"]
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    if "other_user" in names:
        os.chown(tmp_path / names["other_user"], 12345, 12345)
    assert weight_sync.remove_stale_segments(tmp_path) == [names["stale"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k != "stale")
