"""Delta weight sync against a real sidecar (--delta_sync, tiny Qwen3, fp32 so that
log-probs tell any weight apart): a full update, then deltas, leave the sidecar holding
bit for bit what one full update of the final weights gives; a delta against another
base version is refused and the client sends a full update; big deltas go full."""

from __future__ import annotations

import sys

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from protos import rollout_pb2 as pb
from rollout import weights as W
from tests.rollout.tiny import make_tiny_qwen3
from walar_jax import weight_sync
from walar_jax.clients.common import InvalidRequestError
from walar_jax.clients.rollout import RolloutClient
from walar_jax.launch import Service

pytestmark = pytest.mark.e2e
PROMPTS = [[72, 101, 108, 108, 111], [5, 9, 40, 7]]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    ckpt = make_tiny_qwen3(tmp_path_factory.mktemp("delta"), max_position_embeddings=128)
    log = tmp_path_factory.mktemp("logs") / "rollout.log"
    argv = [sys.executable, "rollout_server.py", "--model", str(ckpt), "--dtype", "float32",
            "--kv_cache_gib", "0.25", "--enforce_eager", "--delta_sync"]
    with Service("rollout", argv, log_path=str(log)) as svc, RolloutClient(svc.address) as c:
        c.weights0 = load_file(str(ckpt / "model.safetensors"))
        yield c


def _digest(arrays: dict[str, np.ndarray]) -> str:
    with weight_sync.ShmTransport() as t:
        specs = [W.seg.from_proto(s) for s in t.write(iter(arrays.items()))]
        return W.segment_digest(t.path, specs)


def _live_hash(client) -> str:
    return client.stub.Info(pb.InfoRequest(hash_live=True), timeout=60).live_hash


def _sample(client):
    res = client.generate(PROMPTS, temperature=0.0, max_tokens=10)
    return [(r[0].token_ids, r[0].logprobs) for r in res]


def _step(w: dict[str, np.ndarray], rng, frac: float = 0.01) -> tuple[dict, int]:
    """New weights with `frac` of the elements of most tensors moved; changed count."""
    out, changed = {}, 0
    for i, (name, a) in enumerate(sorted(w.items())):
        a = a.copy()
        if i % 4:  # every fourth tensor stays as it was
            flat = a.reshape(-1)
            idx = np.unique(rng.integers(0, flat.size, max(1, int(frac * flat.size))))
            flat[idx] += np.float32(1e-2)
            changed += int((flat[idx] != w[name].reshape(-1)[idx]).sum())
        out[name] = a
    return out, changed


def test_deltas_then_a_full_update_are_identical_bit_for_bit(client):
    rng = np.random.default_rng(0)
    w = client.weights0
    w, _ = _step(w, rng)
    first = client.update_weights_shm(w.items(), delta=True, content_id="s0")
    assert first.changed and not first.delta and first.fell_back == ""
    total = sum(a.size for a in w.values())
    for k in range(1, 4):
        w, changed = _step(w, rng)
        res = client.update_weights_shm(w.items(), delta=True, content_id=f"s{k}")
        assert res.changed and res.delta and res.delta_elements == changed, res
        assert res.num_bytes == 8 * changed < 0.05 * 4 * total  # fp32 values + uint32 ids
        assert res.version == first.version + k
    assert _live_hash(client) == _digest(w)
    after_deltas = _sample(client)
    # Other weights, then the same final weights in one full update.
    assert client.update_weights(client.weights0.items()).changed
    assert _sample(client) != after_deltas
    full = client.update_weights(w.items())
    assert full.changed and _live_hash(client) == _digest(w)
    assert _sample(client) == after_deltas  # token ids and every log-prob, exactly


def test_a_delta_on_the_wrong_base_is_refused_and_a_full_update_follows(client):
    rng = np.random.default_rng(1)
    w, _ = _step(client.weights0, rng)
    assert not client.update_weights_shm(w.items(), delta=True).delta
    w, _ = _step(w, rng)
    live = client.info().weights_version
    client._delta_base.version = live - 1  # the client believes an older base is live
    res = client.update_weights_shm(w.items(), delta=True)
    assert f"delta against version {live - 1} refused: version {live} is live" in res.fell_back
    assert res.changed and not res.delta and res.version == live + 1
    assert _live_hash(client) == _digest(w)
    # The raw refusal, as the sidecar states it.
    with weight_sync.ShmTransport() as t:
        t.write(iter([("unused", np.zeros(4, np.float32))]))
        h = pb.WeightUpdateHeader(transport="shm", shm_path=t.path, base_version=live - 5)
        with pytest.raises(grpc.RpcError) as err:
            client.stub.UpdateWeights(iter([pb.WeightUpdateMessage(header=h)]), timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A delta that changes more than the threshold goes as a full update.
    w = {k: v * np.float32(1.5) for k, v in w.items()}
    res = client.update_weights_shm(w.items(), delta=True, delta_max_fraction=0.05)
    assert res.fell_back == "more than 0.05 of the elements changed" and not res.delta
    assert _live_hash(client) == _digest(w)
    # Nothing changed: nothing installed.
    same = client.update_weights_shm(w.items(), delta=True)
    assert not same.changed and same.version == res.version


def test_a_bad_delta_is_refused_whole_and_the_next_update_is_full(client):
    rng = np.random.default_rng(2)
    w, _ = _step(client.weights0, rng)
    client.update_weights_shm(w.items(), delta=True)
    before, live = _sample(client), client.info().weights_version
    bad, _ = _step(w, rng)
    bad["model.norm.weight"] = bad["model.norm.weight"].copy()
    bad["model.norm.weight"][3] = np.nan
    with pytest.raises(InvalidRequestError, match="NaN or Inf in model.norm.weight"):
        client.update_weights_shm(bad.items(), delta=True)
    assert _sample(client) == before and client.info().weights_version == live
    assert _live_hash(client) == _digest(w)  # the shadow was not touched either
    res = client.update_weights_shm(w.items(), delta=True)  # base dropped: full
    assert not res.delta and _live_hash(client) == _digest(w)
    # Indices that do not rise strictly, or run past the tensor, are refused.
    with weight_sync.ShmTransport() as t:
        nxt, _ = _step(w, rng)
        specs, _ = t.write_delta(iter(nxt.items()), weight_sync_base(w), 1.0)
        s = specs[0]
        ids = np.frombuffer(t.mm, np.uint32, s.delta_count, s.index_offset)
        for fill, match in [(ids[0], "indices must rise strictly"), (1 << 30, "within")]:
            ids[-1] = fill
            h = pb.WeightUpdateHeader(transport="shm", shm_path=t.path, tensors=specs,
                                      base_version=res.version)
            with pytest.raises(grpc.RpcError, match=match):
                client.stub.UpdateWeights(iter([pb.WeightUpdateMessage(header=h)]), timeout=60)
        del ids  # a view of the segment's mapping
    assert _live_hash(client) == _digest(w)


def weight_sync_base(w: dict[str, np.ndarray]) -> weight_sync.DeltaBase:
    base = weight_sync.DeltaBase()
    for name, a in w.items():
        base.record(name, a)
    return base
