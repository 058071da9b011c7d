"""The sidecar's weight receiver without an engine: checkpoint table, validation,
digests, staging and zero-copy mapping of the trainer's segment (rollout env)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from protos import weights as seg
from rollout import weights as W
from tests.rollout.tiny import make_tiny_qwen3
from walar_jax import weight_sync

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny"))


def _specs(header) -> list[seg.Spec]:
    return [seg.from_proto(t) for t in header.tensors]


def test_checkpoint_table_matches_safetensors(ckpt):
    table = W.read_checkpoint_table(ckpt)
    ref = load_file(str(ckpt / "model.safetensors"))
    assert set(table) == set(ref)
    for name, arr in ref.items():
        assert table[name].shape == arr.shape and table[name].dtype == "float32"
        assert table[name].nbytes == arr.nbytes


def test_segment_of_checkpoint_tensors_has_the_checkpoint_digest(ckpt):
    ref = load_file(str(ckpt / "model.safetensors"))
    with weight_sync.ShmTransport() as t:
        header = next(iter(t.messages(iter(ref.items()), None))).header
        specs = _specs(header)
        seg.validate(specs, W.read_checkpoint_table(ckpt), os.path.getsize(t.path))
        assert W.segment_digest(t.path, specs) == W.checkpoint_digest(ckpt)
        name = "model.norm.weight"
        ref[name] = ref[name] + np.float32(1e-3)  # one changed tensor changes the digest
        header = next(iter(t.messages(iter(ref.items()), None))).header
        assert W.segment_digest(t.path, _specs(header)) != W.checkpoint_digest(ckpt)


def test_validate_names_every_problem_and_refuses(ckpt):
    table = W.read_checkpoint_table(ckpt)
    good, off = [], 0
    for s in table.values():
        good.append(seg.Spec(s.name, "float32", s.shape, off, s.nbytes))
        off = seg.aligned(off + s.nbytes)
    seg.validate(good, table, None)
    cases = {
        "missing 1 tensors: model.norm.weight": [s for s in good if s.name != "model.norm.weight"],
        "shape [3] != checkpoint [64]": [
            seg.Spec(s.name, s.dtype, (3,), s.offset, 12) if s.name == "model.norm.weight" else s
            for s in good
        ],
        "unexpected tensor lm_head.bias": good + [seg.Spec("lm_head.bias", "float32", (4,), off, 16)],
        "duplicate tensor model.norm.weight": good + [table["model.norm.weight"]],
        "unsupported dtype 'int8'": [
            seg.Spec(s.name, "int8", s.shape, 0, 1) if s.name == "model.norm.weight" else s
            for s in good
        ],
        "past segment end": good,
        "offset 8 is not a multiple of 64": [
            seg.Spec(s.name, s.dtype, s.shape, 8, s.nbytes) if s.name == "model.norm.weight"
            else s for s in good
        ],
    }
    for reason, specs in cases.items():
        size = 100 if reason == "past segment end" else None
        with pytest.raises(seg.UpdateRefused, match="old weights stay live") as err:
            seg.validate(specs, table, size)
        assert reason in str(err.value)


def test_only_our_shm_segments_are_mapped(tmp_path):
    for bad in ["/etc/passwd", "/dev/shm/../etc/passwd", str(tmp_path / "walar-weights-x")]:
        with pytest.raises(seg.UpdateRefused, match="shm_path must be"):
            seg.resolve_shm_path(bad)
    with pytest.raises(seg.UpdateRefused, match="does not exist"):
        seg.open_segment("/dev/shm/walar-weights-nonexistent-0")


def _secret(tmp_path, nbytes: int = 4096) -> pathlib.Path:
    target = tmp_path / "secret.bin"
    target.write_bytes(b"s" * nbytes)
    return target


@pytest.mark.parametrize("plant, reason", [
    ("symlink", "is a symbolic link; refused"),
    ("mode", "has mode 644; group and others must have no access"),
    ("owner", "is owned by uid 65534, not this sidecar's"),
    ("hardlink", "has 2 hard links"),
    ("fifo", "is not a regular file"),
])
def test_a_planted_segment_is_refused_without_revealing_its_size(tmp_path, plant, reason):
    """Each file a hostile local user could leave under a segment name is refused by
    `open_segment` and by every reader built on it, and no message carries its size."""
    path = pathlib.Path(f"/dev/shm/walar-weights-test-{os.getpid()}-{plant}")
    target = _secret(tmp_path, 12345)
    try:
        if plant == "symlink":
            path.symlink_to(target)
        elif plant == "hardlink":
            shm_target = pathlib.Path(str(path) + "-target")
            shm_target.write_bytes(b"s" * 12345)
            os.chmod(shm_target, 0o600)
            os.link(shm_target, path)
            shm_target.unlink()
            os.link(path, shm_target)  # two names again: the check sees nlink 2
        elif plant == "fifo":
            os.mkfifo(path, 0o600)
        else:
            path.write_bytes(b"s" * 12345)
            os.chmod(path, 0o644 if plant == "mode" else 0o600)
            if plant == "owner":
                if os.geteuid() != 0:
                    pytest.skip("chown to another user needs root")
                os.chown(path, 65534, 65534)
        for read in (seg.open_segment, W.map_segment,
                     lambda p: W.segment_digest(p, []), lambda p: list(W.iter_segment(p, []))):
            with pytest.raises(seg.UpdateRefused, match=reason) as err:
                read(str(path))
            assert "12345" not in str(err.value) and "bytes" not in str(err.value)
    finally:
        path.unlink(missing_ok=True)
        pathlib.Path(str(path) + "-target").unlink(missing_ok=True)


def test_overlapping_and_misaligned_tensors_are_refused_by_name(ckpt):
    table = W.read_checkpoint_table(ckpt)
    good, off = [], 0
    for s in table.values():
        good.append(seg.Spec(s.name, "float32", s.shape, off, s.nbytes))
        off = seg.aligned(off + s.nbytes)
    seg.validate(good, table, off)
    a, b = good[0], good[1]
    overlap = [a, seg.Spec(b.name, b.dtype, b.shape, a.offset, b.nbytes), *good[2:]]
    with pytest.raises(seg.UpdateRefused, match=f"{b.name}: bytes .* overlap {a.name}"):
        seg.validate(overlap, table, off)
    inside = [a, seg.Spec(b.name, b.dtype, b.shape, b.offset - seg.ALIGN, b.nbytes), *good[2:]]
    with pytest.raises(seg.UpdateRefused, match="overlap"):
        seg.validate(inside, table, off)
    one_off = [a, seg.Spec(b.name, b.dtype, b.shape, b.offset + 1, b.nbytes), *good[2:]]
    with pytest.raises(seg.UpdateRefused, match=f"{b.name}: offset .* not a multiple"):
        seg.validate(one_off, table, off)
    last = good[-1]
    past = [*good[:-1], seg.Spec(last.name, last.dtype, last.shape, off, last.nbytes)]
    with pytest.raises(seg.UpdateRefused, match=f"{last.name}: bytes .* past segment end"):
        seg.validate(past, table, off)


def test_nonfinite_tensors_are_named(ckpt):
    ref = load_file(str(ckpt / "model.safetensors"))
    big = ref["model.norm.weight"].copy()
    big[:] = 3e38  # finite values whose float32 sum overflows: not refused
    ref["model.norm.weight"] = big
    nan = ref["model.embed_tokens.weight"].copy()
    nan[3, 5] = np.nan
    ref["model.embed_tokens.weight"] = nan
    inf = ref["lm_head.weight"].copy()
    inf[0, 0] = -np.inf
    ref["lm_head.weight"] = inf
    with weight_sync.ShmTransport() as t:
        specs = _specs(next(iter(t.messages(iter(ref.items()), None))).header)
        with W.map_segment(t.path) as mm:
            assert sorted(W.nonfinite_tensors(mm, specs)) == [
                "lm_head.weight", "model.embed_tokens.weight"]


def test_segment_tensors_are_views_of_the_mapping_not_copies(ckpt):
    ref = load_file(str(ckpt / "model.safetensors"))
    with weight_sync.ShmTransport() as t:
        specs = _specs(next(iter(t.messages(iter(ref.items()), None))).header)
        views = dict(W.iter_segment(t.path, specs))
        maps = pathlib.Path("/proc/self/maps").read_text().splitlines()
        spans = [tuple(int(x, 16) for x in line.split()[0].split("-"))
                 for line in maps if line.endswith(t.path)]
        assert spans, "segment not mapped"
        for name, arr in ref.items():
            v = views[name]
            assert any(lo <= v.data_ptr() < hi for lo, hi in spans), name
            torch.testing.assert_close(v, torch.from_numpy(arr), rtol=0, atol=0)


def test_grpc_staging_segment_grows_and_is_removed():
    s = W.StagingSegment()
    try:
        s.write(0, b"a" * 10)
        s.write(100, b"b" * 5)
        data = s.path.read_bytes()
        assert data[:10] == b"a" * 10 and data[100:105] == b"b" * 5 and s.size >= 105
    finally:
        s.close()
    assert not s.path.exists()


@pytest.mark.parametrize("flags, reason", [
    (["--host", "0.0.0.0"], "only loopback is allowed without --allow_remote"),
    (["--host", "0.0.0.0", "--allow_remote"], "requires a token"),
    (["--tls_cert", "cert.pem"], "--tls_cert and --tls_key go together"),
])
def test_server_refuses_a_wide_bind_before_loading_the_model(flags, reason):
    proc = subprocess.run(
        [sys.executable, "rollout_server.py", "--model", "/nonexistent", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0 and reason in proc.stderr


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret")
    token.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "rollout_server.py", "--model", "/nonexistent", "--token_file",
         str(token)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "readable by you alone (mode 0600), is 0o644" in proc.stderr
    assert "secret" not in proc.stderr


def test_table_follows_the_index_and_skips_a_stored_tied_head(tmp_path):
    from safetensors.numpy import save_file

    tied = make_tiny_qwen3(tmp_path / "tied", tie_word_embeddings=True)
    ref = load_file(str(tied / "model.safetensors"))
    assert "lm_head.weight" not in ref and W.tied_embeddings(tied)
    names = sorted(ref)
    (tied / "model.safetensors").unlink()
    half = len(names) // 2
    save_file({n: ref[n] for n in names[:half]}, str(tied / "model-00001-of-00002.safetensors"))
    rest = {n: ref[n] for n in names[half:]}
    rest["lm_head.weight"] = ref["model.embed_tokens.weight"]  # stored although tied
    save_file(rest, str(tied / "model-00002-of-00002.safetensors"))
    save_file({"stray": np.zeros(2, np.float32)}, str(tied / "consolidated.safetensors"))
    weight_map = {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors"
                  for i, n in enumerate(names)}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (tied / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    table = W.read_checkpoint_table(tied)
    assert sorted(table) == names  # no stray file, no tied head
    with weight_sync.ShmTransport() as t:
        header = next(iter(t.messages(iter(ref.items()), None))).header
        specs = _specs(header)
        seg.validate(specs, table, os.path.getsize(t.path))
        assert W.segment_digest(t.path, specs) == W.checkpoint_digest(tied)


def test_hub_id_resolves_to_its_cached_snapshot(ckpt, tmp_path):
    """A hub id is loaded by vLLM; the sidecar reads its tensor table from the same
    snapshot (offline here: a cache laid out as huggingface_hub writes it)."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--walar--tiny-qwen3"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in ckpt.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    code = ("from rollout.engine import resolve_model_dir; from rollout import weights as W; "
            "d = resolve_model_dir('walar/tiny-qwen3'); print(d, len(W.read_checkpoint_table(d)))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    path, n = proc.stdout.split()
    assert pathlib.Path(path).resolve() == snap.resolve()
    assert int(n) == len(W.read_checkpoint_table(ckpt))
