"""Hostile and malformed Generate and UpdateWeights calls against one real sidecar (vLLM
on the tiny Qwen3, rollout env): every call gets a clear status naming the problem, the
server keeps serving, and after every refused update the greedy output is the baseline's,
token for token. Segments a hostile local user could plant (a symlink to a file
elsewhere, a file of another owner or mode) hold a complete valid update of *other*
weights, so a sidecar that read them would change its greedy output."""

from __future__ import annotations

import glob
import math
import os
import pathlib
import sys
import threading

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from protos import rollout_pb2 as pb
from protos import weights as seg
from tests.rollout.tiny import make_tiny_qwen3
from walar_jax import weight_sync
from walar_jax.clients.common import InvalidRequestError
from walar_jax.clients.rollout import RolloutClient
from walar_jax.launch import Service

pytestmark = pytest.mark.e2e
MAX_LEN = 128
PROMPTS = [[72, 101, 108, 108, 111], [5, 9, 40, 7]]
COUNTS = {"generate": 0, "update": 0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("fuzz"), max_position_embeddings=MAX_LEN)


@pytest.fixture(scope="module")
def sidecar(ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "rollout.log"
    argv = [sys.executable, "rollout_server.py", "--model", str(ckpt), "--dtype", "float32",
            "--kv_cache_gib", "0.25", "--enforce_eager", "--max_num_seqs", "16"]
    with Service("rollout", argv, log_path=str(log)) as svc, RolloutClient(svc.address) as c:
        yield svc, c
    print(f"\nfuzz cases: {COUNTS}")


@pytest.fixture(scope="module")
def client(sidecar):
    return sidecar[1]


def greedy(client: RolloutClient) -> list[list[int]]:
    return [r[0].token_ids for r in client.generate(PROMPTS, temperature=0.0, max_tokens=12)]


@pytest.fixture(scope="module")
def baseline(client):
    return greedy(client), client.info().weights_version


@pytest.fixture(scope="module")
def tensors(ckpt) -> dict[str, np.ndarray]:
    return load_file(str(ckpt / "model.safetensors"))


@pytest.fixture(scope="module")
def other(tensors) -> dict[str, np.ndarray]:
    """Valid weights that greedy decoding tells apart from the checkpoint's."""
    return {k: (-v if k == "lm_head.weight" else v) for k, v in tensors.items()}


def _layout(arrays: dict[str, np.ndarray]) -> tuple[bytes, list[pb.TensorSpec]]:
    """A segment's bytes and manifest, laid out as the trainer's sender lays them out."""
    with weight_sync.ShmTransport() as t:
        specs = list(t.write(iter(arrays.items())))
        raw = pathlib.Path(t.path).read_bytes()
    return raw, specs


def _plant(path: pathlib.Path, raw: bytes, mode: int = 0o600) -> pathlib.Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, raw)
    os.close(fd)
    os.chmod(path, mode)
    return path


def _shm_update(client, path, specs) -> None:
    header = pb.WeightUpdateHeader(transport="shm", shm_path=str(path), tensors=specs)
    client.stub.UpdateWeights(iter([pb.WeightUpdateMessage(header=header)]), timeout=120)


def _refused(client, baseline, send, match: str, code=grpc.StatusCode.INVALID_ARGUMENT):
    """`send()` fails with `code` and a message matching `match`; old weights stay."""
    COUNTS["update"] += 1
    with pytest.raises(grpc.RpcError) as err:
        send()
    assert err.value.code() == code, err.value.details()
    assert match in err.value.details(), err.value.details()
    assert greedy(client) == baseline[0] and client.info().weights_version == baseline[1]
    return err.value.details()


@pytest.fixture
def shm_path(request):
    path = pathlib.Path(f"/dev/shm/walar-weights-fuzz-{os.getpid()}-{request.node.name[-40:]}")
    path = pathlib.Path(str(path).replace("[", "-").replace("]", ""))
    yield path
    path.unlink(missing_ok=True)


# ---- Generate ---------------------------------------------------------------------

GENERATE_CASES = {
    "out of vocab": ([[1, 512]], {}, "token ids outside [0, 512): [512]"),
    "negative id": ([[-1, 3]], {}, "token ids outside [0, 512): [-1]"),
    "int32 max": ([[2**31 - 1]], {}, "token ids outside"),
    "empty prompt": ([[]], {}, "prompt 0 is empty"),
    "no prompts": ([], {}, "no prompts"),
    "over-long": ([[3] * MAX_LEN], {}, f"max_model_len {MAX_LEN} leaves no room"),
    "empty text": ([""], {}, "empty text prompt"),
    "n=0": ([[3]], {"n": 0}, "n must be >= 1, got 0"),
    "n<0": ([[3]], {"n": -5}, "n must be >= 1, got -5"),
    "huge n": ([[3]], {"n": 2**31 - 1}, "n must be at most 65536"),
    "n x prompts": ([[3]] * 3, {"n": 30000}, "asks for more than 65536 completions"),
    "temperature<0": ([[3]], {"temperature": -0.5}, "temperature must be finite and >= 0"),
    "temperature nan": ([[3]], {"temperature": math.nan}, "temperature must be finite"),
    "temperature inf": ([[3]], {"temperature": math.inf}, "temperature must be finite"),
    "top_p=0": ([[3]], {"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
    "top_p>1": ([[3]], {"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    "top_p nan": ([[3]], {"top_p": math.nan}, "top_p must be in (0, 1], got nan"),
    "top_k<0": ([[3]], {"top_k": -2}, "top_k must be 0 (off) or >= 1"),
    "max_tokens=0": ([[3]], {"max_tokens": 0}, "max_tokens must be >= 1"),
    "max_tokens<0": ([[3]], {"max_tokens": -1}, "max_tokens must be >= 1"),
    "min>max": ([[3]], {"max_tokens": 2, "min_tokens": 3}, "min_tokens must be in"),
    "stop id": ([[3]], {"stop_token_ids": [-7]}, "stop_token_ids outside [0, 512): [-7]"),
    "greedy n>1": ([[3]], {"n": 2, "temperature": 0.0}, ""),  # vLLM's own refusal
}


@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_bad_generate_gets_a_clear_error_and_the_server_serves_on(client, baseline, case):
    prompts, kw, match = GENERATE_CASES[case]
    COUNTS["generate"] += 1
    with pytest.raises(InvalidRequestError) as err:
        client.generate(prompts, **kw)
    assert match in str(err.value)
    assert greedy(client) == baseline[0]


def test_huge_max_tokens_is_cut_at_the_model_length(client, baseline):
    COUNTS["generate"] += 1
    (res,) = client.generate([PROMPTS[0]], temperature=0.0, max_tokens=2**31 - 1,
                             min_tokens=MAX_LEN)
    assert res[0].finish_reason == "length"
    assert len(PROMPTS[0]) + len(res[0].token_ids) == MAX_LEN
    assert res[0].token_ids[:12] == baseline[0][0]


# ---- UpdateWeights: the manifest ---------------------------------------------------

def _manifests(specs: list[pb.TensorSpec]) -> dict[str, tuple[list[pb.TensorSpec], str]]:
    def edit(i: int, **kw) -> list[pb.TensorSpec]:
        out = [pb.TensorSpec() for _ in specs]
        for o, s in zip(out, specs):
            o.CopyFrom(s)
        for k, v in kw.items():
            if k == "shape":
                del out[i].shape[:]
                out[i].shape.extend(v)
            else:
                setattr(out[i], k, v)
        return out

    a, b = specs[0], specs[1]
    return {
        "wrong name": (edit(0, name="model.embed_tokens.weigth"),
                       "unexpected tensor model.embed_tokens.weigth"),
        "missing": (specs[1:], f"missing 1 tensors: {a.name}"),
        "duplicate": (specs + [specs[0]], f"duplicate tensor {a.name}"),
        "wrong shape": (edit(0, shape=[a.shape[1], a.shape[0]]), f"{a.name}: shape"),
        "wrong dtype": (edit(0, dtype="int8"), f"{a.name}: unsupported dtype 'int8'"),
        "float64": (edit(0, dtype="float64"), f"{a.name}: unsupported dtype 'float64'"),
        "dtype vs bytes": (edit(0, dtype="bfloat16"), f"{a.name}: {a.nbytes} bytes for bfloat16"),
        "overlap": (edit(1, offset=a.offset), f"{b.name}: bytes [{a.offset}, "),
        "off by one": (edit(1, offset=b.offset + 1), f"{b.name}: offset {b.offset + 1} is not"),
        "off by -1": (edit(1, offset=b.offset - 1), f"{b.name}: offset {b.offset - 1} is not"),
        "one align early": (edit(1, offset=b.offset - seg.ALIGN), "overlap"),
        "past the end": (edit(len(specs) - 1, offset=1 << 40), "past segment end"),
    }


def test_malformed_manifests_are_refused_whole(client, baseline, other, shm_path):
    raw, specs = _layout(other)
    _plant(shm_path, raw)
    for case, (bad, match) in _manifests(specs).items():
        details = _refused(client, baseline, lambda b=bad: _shm_update(client, shm_path, b), match)
        assert "old weights stay live" in details, case


def test_nan_and_inf_weights_are_refused_naming_the_tensor(client, baseline, other, shm_path):
    for value, name in [(np.nan, "model.layers.1.mlp.down_proj.weight"),
                        (np.inf, "model.norm.weight"), (-np.inf, "lm_head.weight")]:
        bad = dict(other)
        bad[name] = bad[name].copy()
        bad[name].reshape(-1)[7] = value
        raw, specs = _layout(bad)
        shm_path.unlink(missing_ok=True)
        _plant(shm_path, raw)
        _refused(client, baseline, lambda s=specs: _shm_update(client, shm_path, s),
                 f"NaN or Inf in {name}")
        # The streamed transport is checked the same way.
        COUNTS["update"] += 1
        with pytest.raises(InvalidRequestError, match=f"NaN or Inf in {name}"):
            client.update_weights(bad.items(), transport="grpc")
        assert greedy(client) == baseline[0]


# ---- UpdateWeights: the segment file -------------------------------------------------

def test_foreign_and_truncated_paths_are_refused(client, baseline, other, shm_path, tmp_path):
    raw, specs = _layout(other)
    elsewhere = _plant(tmp_path / "walar-weights-x", raw)
    for path, match in [("/etc/passwd", "shm_path must be"),
                        ("/dev/shm/../etc/passwd", "shm_path must be"),
                        (str(elsewhere), "shm_path must be"),
                        ("/dev/shm/not-ours", "shm_path must be"),
                        ("/dev/shm/walar-weights-missing-0", "does not exist"),
                        ("", "shm_path must be")]:
        _refused(client, baseline, lambda p=path: _shm_update(client, p, specs), match)
    _plant(shm_path, raw[: len(raw) // 2])
    _refused(client, baseline, lambda: _shm_update(client, shm_path, specs), "past segment end")
    os.truncate(shm_path, 0)
    _refused(client, baseline, lambda: _shm_update(client, shm_path, specs), "")


@pytest.mark.parametrize("plant", ["symlink", "mode", "owner", "hardlink"])
def test_planted_segments_are_never_read(client, baseline, other, shm_path, tmp_path, plant):
    """Each holds a valid update of other weights: reading it would change the output.
    The refusal never tells the size of the file behind the name."""
    raw, specs = _layout(other)
    size = str(len(raw))
    if plant == "symlink":
        shm_path.symlink_to(_plant(tmp_path / "elsewhere.bin", raw))
    elif plant == "hardlink":
        target = _plant(pathlib.Path(f"{shm_path}-target"), raw)
        os.link(target, shm_path)
    else:
        _plant(shm_path, raw, 0o644 if plant == "mode" else 0o600)
        if plant == "owner":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(shm_path, 65534, 65534)
    try:
        details = _refused(client, baseline, lambda: _shm_update(client, shm_path, specs),
                           "refused")
    finally:
        pathlib.Path(f"{shm_path}-target").unlink(missing_ok=True)
    assert size not in details and "bytes" not in details


def test_a_refused_stream_leaves_no_staging_file(sidecar, client, baseline, tensors):
    """The first streamed update creates the sidecar's staging segment; a refused one
    (bytes missing, NaN) removes it before the call returns."""
    svc, _ = sidecar
    assert client.update_weights(tensors.items(), transport="grpc").changed is False

    def staged() -> list[str]:
        fds = glob.glob(f"/proc/{svc.proc.pid}/fd/*")
        links = [os.readlink(f) for f in fds if os.path.islink(f)]
        return [p for p in links if p.startswith(f"{seg.SHM_DIR}/{seg.SHM_PREFIX}sidecar-")]

    for case in ["truncated", "nan", "wrong shape"]:
        (path,) = staged() or [None]
        if path is None:  # dropped by the previous case: make one again
            client.update_weights(tensors.items(), transport="grpc")
            (path,) = staged()
        assert os.path.exists(path)
        bad = dict(tensors)
        name = "model.layers.0.mlp.up_proj.weight"
        if case == "nan":
            bad[name] = np.full_like(bad[name], np.nan)
        elif case == "wrong shape":
            bad[name] = bad[name][:-1]

        def send(b=bad, truncate=case == "truncated"):
            msgs = list(weight_sync.GrpcTransport(chunk_bytes=1 << 14).messages(
                iter(b.items()), None))
            if truncate:  # the stream ends inside a tensor
                last = msgs[-1].batch.chunks[-1]
                last.data = last.data[:-4]
            client.stub.UpdateWeights(iter(msgs), timeout=120)

        _refused(client, baseline, send, "old weights stay live" if case != "truncated"
                 else "bytes")
        assert staged() == [] and not os.path.exists(path), case


# ---- UpdateWeights: protocol and races -------------------------------------------------

def test_protocol_errors_are_refused(client, baseline, tensors):
    header = pb.WeightUpdateMessage(header=pb.WeightUpdateHeader(transport="shm"))
    batch = pb.WeightUpdateMessage(batch=pb.TensorBatch())
    cases = [
        ([batch], "the first UpdateWeights message must be a header"),
        ([], "the first UpdateWeights message must be a header"),
        ([pb.WeightUpdateMessage(header=pb.WeightUpdateHeader(transport="nccl"))],
         "unknown transport 'nccl'"),
        ([header, batch], "an shm update is a single header message"),
        ([pb.WeightUpdateMessage(header=pb.WeightUpdateHeader(transport="grpc")), header],
         "only tensor batches may follow the header"),
        ([pb.WeightUpdateMessage(header=pb.WeightUpdateHeader(transport="grpc")),
          pb.WeightUpdateMessage(batch=pb.TensorBatch(chunks=[pb.TensorChunk(data=b"xx")]))],
         "a chunk without a spec must follow a tensor's first"),
    ]
    for msgs, match in cases:
        _refused(client, baseline, lambda m=msgs: client.stub.UpdateWeights(iter(m), timeout=60),
                 match)
    _refused(client, baseline, lambda: _stale_version(client, tensors, baseline[1]),
             "is not newer")


def _stale_version(client, tensors, v):
    bumped = dict(tensors)
    bumped["model.norm.weight"] = bumped["model.norm.weight"] + np.float32(1.0)
    msgs = list(weight_sync.GrpcTransport().messages(iter(bumped.items()), v))
    client.stub.UpdateWeights(iter(msgs), timeout=120)


def test_an_update_racing_generations_never_mixes_weights(client, baseline, tensors, other):
    """Generations run while new weights install: each answer carries one version and
    equals that version's greedy output (never a mix); then the old weights come back."""
    COUNTS["update"] += 1
    v0, want0 = baseline[1], baseline[0]
    out, errors = [], []

    def generate():
        try:
            for _ in range(6):
                res = client.generate(PROMPTS, temperature=0.0, max_tokens=12)
                out.append((res[0][0].weights_version, [r[0].token_ids for r in res]))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for t in threads:
        t.start()
    res = client.update_weights(other.items(), version=v0 + 1)
    for t in threads:
        t.join()
    assert not errors and res.changed and res.version == v0 + 1
    want1 = greedy(client)
    assert want1 != want0
    assert {v for v, _ in out} <= {v0, v0 + 1}
    for v, ids in out:
        assert ids == (want0 if v == v0 else want1)
    back = client.update_weights(tensors.items(), version=v0 + 2)
    assert back.changed and greedy(client) == want0
