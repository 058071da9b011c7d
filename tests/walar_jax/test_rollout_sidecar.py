"""The real rollout sidecar (vLLM in .venv/rollout) driven from the trainer env:
generation, log-prob parity with the JAX policy, weight updates, bad input."""

from __future__ import annotations

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from walar_jax import launch, models
from walar_jax.clients.common import AuthenticationError, InvalidRequestError, ServiceError
from walar_jax.clients.rollout import RolloutClient
from walar_jax.models.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.e2e
# Small engine for 2 CPU cores; fp32 so parity is about the computation, not rounding.
ENGINE = ["--max_model_len", "256", "--dtype", "float32", "--max_num_seqs", "32"]
CPU_ENGINE = [*ENGINE, "--enforce_eager"]  # the CPU default KV cache: 1 GiB
# Up to two sidecars share one GPU during this module (CUDA graphs stay on).
GPU_ENGINE = [*ENGINE, "--gpu_memory_utilization", "0.3"]
PROMPTS = [[72, 101, 108, 108, 111, 32], [84, 114, 97, 110, 115, 108, 97, 116, 101, 58],
           [66, 111, 110, 106, 111, 117, 114]]


def sidecar_service(model_dir, log_dir, *extra: str, name: str = "rollout",
                    token: str | None = None) -> launch.Service:
    """The sidecar as a service; `with` starts it and always stops it."""
    flags = GPU_ENGINE if has_gpu() else CPU_ENGINE
    argv = [launch.env_python("rollout"), "rollout_server.py", "--model", str(model_dir),
            *flags, *extra]
    return launch.Service(name, argv, log_path=str(log_dir / f"{name}.log"), token=token)


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def greedy(client: RolloutClient, **kw):
    out = client.generate(PROMPTS, temperature=0.0, max_tokens=12, **kw)
    return [r[0].token_ids for r in out], np.array([r[0].logprobs for r in out]), out


def jax_logprobs(model, prompts, completions) -> list[np.ndarray]:
    """The policy's log-prob of each completion token, as the trainer computes it."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    T = max(map(len, seqs)) - 1
    ids, tgt, mask = (np.zeros((len(seqs), T), np.int32) for _ in range(3))
    for b, s in enumerate(seqs):
        ids[b, : len(s) - 1], tgt[b, : len(s) - 1], mask[b, : len(s) - 1] = s[:-1], s[1:], 1
    lp = np.asarray(model.token_logprobs(jnp.asarray(ids), jnp.asarray(tgt), jnp.asarray(mask)))
    return [lp[b, len(p) - 1 : len(s) - 1] for b, (p, s) in enumerate(zip(prompts, seqs))]


def max_logprob_diff(model, results) -> float:
    prompts, comps, lps = [], [], []
    for r in results:
        for c in r:
            prompts.append(r.prompt_token_ids)
            comps.append(c.token_ids)
            lps.append(np.array(c.logprobs))
    ref = jax_logprobs(model, prompts, comps)
    return max(float(np.abs(a - b).max()) for a, b in zip(ref, lps))


def push(client: RolloutClient, model, **kw):
    """What the trainer does: the model as HF tensors in the engine's dtype, then send."""
    return client.update_weights(models.hf_tensors(model, client.engine_dtype()), **kw)


def perturbed(ckpt, seed: int = 1):
    model = models.from_pretrained(str(ckpt))
    for i, var in enumerate(models.flat_params(model).values()):
        noise = jax.random.normal(jax.random.key(seed * 1000 + i), var.shape, var.dtype)
        var.set_value(var[...] * (1 + 0.5 * noise) + 0.02 * noise)
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("rollout") / "tiny"), seed=0)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def sidecar(ckpt, logs):
    with sidecar_service(ckpt, logs) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(sidecar):
    with RolloutClient(sidecar.address) as c:
        yield c


def test_info_reports_engine_model_and_version(client, ckpt):
    info = client.info()
    assert info.engine == "vllm" and info.model == ckpt and info.weights_version == 0
    assert info.device == ("cuda" if has_gpu() else "cpu") and info.dtype == "float32"
    assert info.max_model_len == 256 and info.logprobs_mode == "raw_logprobs"
    assert list(info.transports) == ["shm", "grpc"] and info.has_chat_template
    assert info.num_tensors == len(list(models.hf_tensors(models.from_pretrained(ckpt))))


def test_generate_token_and_chat_text_prompts(client, ckpt):
    from transformers import AutoTokenizer

    out = client.generate([PROMPTS[0], "Bonjour"], n=3, max_tokens=5, seed=0,
                          apply_chat_template=True, enable_thinking=False)
    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": "Bonjour"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert out[0].prompt_token_ids == PROMPTS[0]
    assert out[1].prompt_token_ids == tok.encode(text, add_special_tokens=False)
    assert "</think>" in tok.decode(out[1].prompt_token_ids)
    for r in out:
        assert len(r) == 3
        for c in r:
            assert 1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids)
            assert c.finish_reason in ("stop", "length") and c.weights_version == 0
            assert all(lp <= 0 for lp in c.logprobs)
            # vLLM's incremental detokenizer holds back a trailing partial UTF-8 byte run.
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True).rstrip("\ufffd")


def test_seeded_sampling_is_reproducible(client):
    a = client.generate(PROMPTS, n=2, max_tokens=8, seed=7)
    b = client.generate(PROMPTS, n=2, max_tokens=8, seed=7)
    c = client.generate(PROMPTS, n=2, max_tokens=8, seed=8)

    def ids(out):
        return [x.token_ids for r in out for x in r]

    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert ids(a)[0] != ids(a)[1]  # the n samples of one prompt differ


def test_sidecar_logprobs_match_the_jax_policy(client, ckpt):
    """vLLM returns raw log-probs (temperature 1, before top-k/top-p) whatever the
    sampling settings: exactly what the trainer's PPO ratio needs."""
    policy = models.from_pretrained(ckpt)
    plain = client.generate(PROMPTS, n=4, max_tokens=24, seed=0)
    shaped = client.generate(PROMPTS, n=4, max_tokens=24, seed=0, temperature=0.6, top_k=20,
                             top_p=0.9)
    diffs = {"t1": max_logprob_diff(policy, plain), "t0.6_k20_p0.9": max_logprob_diff(policy, shaped)}
    print("JAX-vs-vLLM max |logprob diff|:", json.dumps(diffs))
    assert max(diffs.values()) <= 1e-3


def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(client):
    cases = {
        "prompt 0 is empty": {"prompts": [[]]},
        "leaves no room": {"prompts": [[65] * 256]},
        "n must be >= 1": {"prompts": PROMPTS, "n": 0},
        "outside [0, 384)": {"prompts": [[65, 100000]]},
        "no prompts": {"prompts": []},
        "empty text prompt": {"prompts": [""]},
        "top_p must be in (0, 1]": {"prompts": PROMPTS, "top_p": 0.0},
        "n must be 1 when using greedy": {"prompts": PROMPTS, "n": 2, "temperature": 0.0},
    }
    for reason, kw in cases.items():
        with pytest.raises(InvalidRequestError, match="INVALID_ARGUMENT") as err:
            client.generate(**kw)
        assert reason in str(err.value)
    assert len(client.generate(PROMPTS, max_tokens=2)) == len(PROMPTS)


def test_expected_version_mismatch_fails_precondition(client):
    live = client.info().weights_version
    assert client.generate(PROMPTS[:1], max_tokens=2, expected_version=live)[0][0].weights_version == live
    with pytest.raises(ServiceError, match="FAILED_PRECONDITION.*caller expects"):
        client.generate(PROMPTS[:1], max_tokens=2, expected_version=live + 5)


@pytest.fixture(scope="module")
def updated(client, ckpt):
    """Greedy outputs before, the update (shm) with perturbed weights, outputs after."""
    before = greedy(client)  # also fills the prefix cache that the update must drop
    model = perturbed(ckpt)
    v0 = client.info().weights_version
    res = push(client, model)
    assert res.changed and res.version == v0 + 1 and res.num_tensors == client.info().num_tensors
    return model, before, greedy(client), res


def test_update_serves_new_weights_equal_to_a_fresh_sidecar(updated, client, ckpt, logs,
                                                            tmp_path):
    model, before, after, res = updated
    assert after[0] != before[0] or not np.allclose(after[1], before[1])
    assert {c.weights_version for r in after[2] for c in r} == {res.version}
    print("JAX-vs-vLLM max |logprob diff| after update:", max_logprob_diff(model, after[2]))
    assert max_logprob_diff(model, after[2]) <= 1e-3
    sampled = client.generate(PROMPTS, n=4, max_tokens=16, seed=3)
    assert max_logprob_diff(model, sampled) <= 1e-3

    fresh_dir = models.save_pretrained(model, str(tmp_path / "perturbed"), tokenizer_dir=ckpt)
    token = launch.new_token()  # as train.py starts it: a token file, never argv
    fresh = sidecar_service(fresh_dir, logs, name="fresh", token=token)
    with fresh, RolloutClient(fresh.address, token=token) as fc:
        assert token not in " ".join(map(str, fresh.proc.args))
        fc.verify_identity()  # it proves it holds the token
        tokens, lps, _ = greedy(fc)
        assert fc.info().weights_digest == res.digest  # same bytes, same hash
        with RolloutClient(fresh.address, max_attempts=1) as anon:
            with pytest.raises(AuthenticationError):
                anon.info()
            with pytest.raises(AuthenticationError):  # an unauthenticated weight update
                push(anon, perturbed(ckpt, seed=2), transport="grpc")
        assert greedy(fc)[0] == tokens and fc.info().weights_digest == res.digest
    assert fresh.proc.returncode == 0  # SIGTERM shut it down cleanly, no SIGKILL needed
    assert tokens == after[0]
    print("fresh-vs-updated max |logprob diff|:", float(np.abs(lps - after[1]).max()))
    np.testing.assert_allclose(lps, after[1], rtol=0, atol=1e-6)


def test_version_moves_only_when_weights_really_change(updated, client, ckpt):
    model, before, after, res = updated
    same = push(client, model, transport="grpc")  # identical bytes
    assert not same.changed and same.version == res.version and same.digest == res.digest
    tensors = list(models.hf_tensors(model))
    bad_updates = {
        "missing 1 tensors: model.norm.weight": [t for t in tensors if t[0] != "model.norm.weight"],
        "shape [3, 64]": [(n, a[:3]) if n == "lm_head.weight" else (n, a) for n, a in tensors],
        "unexpected tensor model.extra": tensors + [("model.extra", tensors[0][1])],
    }
    for reason, bad in bad_updates.items():
        for transport in ("shm", "grpc"):
            with pytest.raises(InvalidRequestError, match=re.escape(reason)):
                client.update_weights(iter(bad), transport=transport)
    with pytest.raises(InvalidRequestError, match="not newer than the live version"):
        push(client, perturbed(ckpt, seed=2), version=res.version)
    assert client.info().weights_version == res.version
    assert greedy(client)[0] == after[0]  # old weights stayed live
    np.testing.assert_array_equal(greedy(client)[1], after[1])

    back = push(client, models.from_pretrained(ckpt), transport="grpc",
                                 version=res.version + 10)
    assert back.changed and back.version == res.version + 10
    tokens, lps, _ = greedy(client)
    assert tokens == before[0]
    np.testing.assert_allclose(lps, before[1], rtol=0, atol=1e-6)


def test_tied_embeddings_model_updates_without_a_head(tmp_path, logs):
    """Qwen3 0.6B-4B tie the head to the embedding: no lm_head.weight is sent."""
    from walar_jax.models.tiny import tiny_config

    ckpt = make_tiny_checkpoint(str(tmp_path / "tied"), seed=0,
                                cfg=tiny_config(tie_embeddings=True))
    names = [n for n, _ in models.hf_tensors(models.from_pretrained(ckpt))]
    assert "lm_head.weight" not in names
    with sidecar_service(ckpt, logs, name="tied") as svc, RolloutClient(svc.address) as c:
        assert c.info().num_tensors == len(names)
        before = greedy(c)
        assert max_logprob_diff(models.from_pretrained(ckpt), before[2]) <= 1e-3
        model = perturbed(ckpt)
        res = push(c, model, transport="grpc")
        assert res.changed and res.version == 1
        after = greedy(c)
        assert after[0] != before[0] or not np.allclose(after[1], before[1])
        assert max_logprob_diff(model, c.generate(PROMPTS, n=2, max_tokens=12, seed=0)) <= 1e-3


def test_bfloat16_engine_takes_bf16_updates(ckpt, logs):
    """The client sends the engine's dtype (half the bytes); identical bytes stay a no-op."""
    with sidecar_service(ckpt, logs, "--dtype", "bfloat16", name="bf16") as svc, \
            RolloutClient(svc.address) as c:
        assert c.info().dtype == "bfloat16"
        model = perturbed(ckpt)
        res = push(c, model)
        n_params = sum(a.size for _, a in models.hf_tensors(model))
        assert res.changed and res.version == 1 and res.num_bytes == 2 * n_params
        again = push(c, model, transport="grpc")
        assert not again.changed and again.version == 1 and again.digest == res.digest
        diff = max_logprob_diff(model, c.generate(PROMPTS, n=2, max_tokens=12, seed=0))
        print("bf16 engine vs fp32 JAX max |logprob diff|:", diff)
        assert diff <= 0.1  # bf16 rounding; stale weights were off by ~0.6 here


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu(), reason="needs a GPU (CUDA vLLM)")
def test_cuda_sidecar_runs_the_same_path(client):
    """On a GPU host every test above ran against CUDA vLLM; make sure it really did."""
    info = client.info()
    assert info.device == "cuda" and info.engine == "vllm"
