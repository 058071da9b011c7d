"""The sidecar serves Llama 3 and Gemma 3 exports, takes their weights from the JAX
policy (vLLM names), and its log-probs match the JAX policy's after the update."""

import pytest

from walar_jax.clients.rollout import RolloutClient
from walar_jax.models.tiny import make_tiny_checkpoint, tiny_gemma_config, tiny_llama_config
from tests.walar_jax.test_rollout_sidecar import (
    PROMPTS,
    max_logprob_diff,
    perturbed,
    push,
    sidecar_service,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("family,cfg", [("llama", tiny_llama_config), ("gemma3", tiny_gemma_config)])
def test_sidecar_serves_family_after_weight_update(tmp_path, family, cfg):
    ckpt = make_tiny_checkpoint(str(tmp_path / family), cfg=cfg())
    new = perturbed(ckpt)
    long_prompts = [p * 3 for p in PROMPTS]  # > Gemma's window of 8 tokens
    with sidecar_service(ckpt, tmp_path) as svc:
        client = RolloutClient(svc.address)
        before = client.generate(long_prompts, n=2, temperature=1.0, max_tokens=12, seed=3)
        res = push(client, new, transport="shm")
        assert res.changed and res.version == before[0][0].weights_version + 1
        after = client.generate(long_prompts, n=2, temperature=1.0, max_tokens=12, seed=3)
        assert after[0][0].weights_version == res.version
        diff = max_logprob_diff(new, after)
        assert diff < 1e-3, diff
        # and the old weights really are gone: their log-probs no longer match
        assert max_logprob_diff(new, before) > 1e-2
        client.close()
