"""The shared contracts without an engine (rollout env, no ml_dtypes here): safetensors
reading in `protos/safetensors.py`, the segment layout in `protos/weights.py` as the
trainer's sender and the sidecar's gRPC receiver both apply it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch

from protos import safetensors as st
from protos import weights as seg
from rollout.servicer import RolloutServicer
from walar_jax import weight_sync


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((5, 3)).astype(np.float32),
            "b.bias": rng.standard_normal(7).astype(np.float16),
            "c.ids": np.arange(4, dtype=np.int64)}


def test_reader_matches_the_safetensors_package(tmp_path):
    save_file(_arrays(), str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    ref = load_file(str(tmp_path / "m.safetensors"))
    f = st.SafeTensorsFile(tmp_path / "m.safetensors")
    assert sorted(f.keys()) == sorted(ref) and f.metadata == {"format": "pt"}
    for name, arr in ref.items():
        assert f.shape(name) == arr.shape and f.dtype(name) == arr.dtype.name
        np.testing.assert_array_equal(f.get(name), arr)
    raw = (tmp_path / "m.safetensors").read_bytes()
    for e in st.tensor_table(tmp_path / "m.safetensors"):  # absolute byte ranges
        assert raw[e.offset:e.offset + e.nbytes] == ref[e.name].tobytes()


def test_bfloat16_tables_need_no_ml_dtypes(tmp_path):
    t = torch.randn(6, 4).to(torch.bfloat16)
    save_torch({"w": t}, str(tmp_path / "bf16.safetensors"))
    (e,) = st.tensor_table(tmp_path / "bf16.safetensors")
    assert (e.dtype, e.shape, e.nbytes) == ("bfloat16", (6, 4), 48)
    raw = (tmp_path / "bf16.safetensors").read_bytes()[e.offset:e.offset + e.nbytes]
    assert raw == t.view(torch.int16).numpy().tobytes()
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="ml_dtypes"):
            st.SafeTensorsFile(tmp_path / "bf16.safetensors").get("w")


def test_writer_round_trips_through_the_safetensors_package(tmp_path):
    arrays = _arrays(1)
    path = str(tmp_path / "out.safetensors")
    st.write_file(path, [(k, v.shape, v.dtype) for k, v in arrays.items()], arrays.__getitem__)
    back = load_file(path)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
    with pytest.raises(ValueError, match="expected"):
        st.write_file(path, [("a.weight", (2, 2), np.float32)], lambda _: np.zeros(3, np.float32))


def test_corrupt_files_are_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="does not fit"):
        st.read_header(bad)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)  # 8 of 16 bytes
    with pytest.raises(ValueError, match="outside the file"):
        st.tensor_table(bad)


def test_checkpoint_files_follow_the_index_else_take_every_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        st.checkpoint_files(tmp_path)
    for name in ("model-00002.safetensors", "model-00001.safetensors", "stray.safetensors"):
        save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / name))
    assert [p.rsplit("/", 1)[1] for p in st.checkpoint_files(tmp_path)] == [
        "model-00001.safetensors", "model-00002.safetensors", "stray.safetensors"]
    index = {"weight_map": {"a": "model-00002.safetensors", "b": "model-00001.safetensors"}}
    (tmp_path / st.INDEX_FILE).write_text(json.dumps(index))
    assert [p.rsplit("/", 1)[1] for p in st.checkpoint_files(tmp_path)] == [
        "model-00001.safetensors", "model-00002.safetensors"]
    index["weight_map"]["c"] = "model-00003.safetensors"
    (tmp_path / st.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00003"):
        st.checkpoint_files(tmp_path)


def test_grpc_receiver_lays_out_a_stream_exactly_as_the_shm_sender():
    """Both sides place tensors by `protos.weights`: the sidecar's staging segment built
    from a gRPC stream has the offsets and bytes of the trainer's own shm segment."""
    arrays = [(k, v) for k, v in _arrays(2).items() if v.dtype.name in seg.ITEMSIZE]
    arrays.append(("d.big", np.arange(3000, dtype=np.float32)))  # split over chunks
    servicer = RolloutServicer(engine=None)
    with weight_sync.ShmTransport() as shm:
        header = next(iter(shm.messages(iter(arrays), None))).header
        shm_specs = [seg.from_proto(t) for t in header.tensors]
        stream = weight_sync.GrpcTransport(chunk_bytes=1000).messages(iter(arrays), None)
        next(stream)  # the header
        try:
            path, specs = servicer._receive_grpc(stream)
            assert specs == shm_specs
            assert all(s.offset % seg.ALIGN == 0 for s in specs)
            staged, written = open(path, "rb").read(), open(shm.path, "rb").read()
            for s in specs:
                assert staged[s.offset:s.offset + s.nbytes] == written[s.offset:s.offset + s.nbytes]
        finally:
            servicer.close()


def test_segments_grow_by_one_policy():
    assert seg.grown_size(0, 100) == 100  # the first update sizes it exactly
    assert seg.grown_size(100, 100) == 100  # later ones reuse it
    assert seg.grown_size(100, 150) == 100 * seg.GROWTH
    assert seg.grown_size(100, 1000) == 1000
    with weight_sync.ShmTransport() as t:
        t._reserve(100)
        t._reserve(150)
        assert t.size == seg.grown_size(100, 150)
