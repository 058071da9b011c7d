"""Llama 3 and Gemma 3 policies against `transformers`: log-probs with padding (Gemma
across its sliding window), export and reload, sharded equals unsharded; layers listed
and scanned (Gemma's sliding/global pattern as a scanned flag), every CPU attention."""

import json

import numpy as np
import pytest

from walar_jax import models
from walar_jax.models import gemma3, llama3
from tests.walar_jax.hf_fixtures import (OPTION_SETS, hf_token_logprobs, jax_logprobs,
                                         make_hf_gemma3, make_hf_llama, option_id, padded_batch,
                                         sharded_and_single_logprobs)

MAKERS = {
    "llama3": lambda p: make_hf_llama(p),
    "llama3_tied": lambda p: make_hf_llama(p, tie=True),
    "gemma3": lambda p: make_hf_gemma3(p),
    "gemma3_multimodal": lambda p: make_hf_gemma3(p, multimodal=True),
    "gemma3_untied": lambda p: make_hf_gemma3(p, tie=False),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("left", [False, True])
def test_logprobs_match_transformers(tmp_path, name, left):
    hf = MAKERS[name](tmp_path)
    # 24 tokens: far past Gemma's window of 4, and past Llama's original 64/8 wavelengths
    ids, mask = padded_batch(np.random.default_rng(1), 380, [24, 9, 17], 24, left)
    ref = hf_token_logprobs(hf, ids, mask)
    real = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    for opts in OPTION_SETS:
        got = jax_logprobs(models.from_pretrained(str(tmp_path), **opts), ids, mask)
        assert np.abs(got - ref)[real].max() <= 1e-4, option_id(opts)


def _first_token_influence(model, T=16):
    """|change| of every log-prob when only token 0 of a sequence changes, [T-1]."""
    ids = np.random.default_rng(2).integers(1, 380, (1, T))
    changed = ids.copy()
    changed[0, 0] = (ids[0, 0] + 1) % 380
    ones = np.ones_like(ids)
    return np.abs(jax_logprobs(model, ids, ones) - jax_logprobs(model, changed, ones))[0]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=option_id)
def test_sliding_window_really_limits_attention(opts):
    from walar_jax.models.tiny import tiny_gemma_config

    # Only sliding layers (window 4, two of them): token 0 reaches position t only
    # through t - 0 < 4 at each layer, so nothing at t >= 2 * 3 + 1 may depend on it.
    local = models.init_random(tiny_gemma_config(n_layers=2, sliding_layers=(0, 1),
                                                 sliding_window=4), **opts)
    d = _first_token_influence(local)
    assert d[:6].min() > 1e-6            # inside the receptive field: it matters
    assert np.all(d[7:] == 0.0)          # outside: exactly no influence
    # One global layer between two sliding ones: token 0 reaches every position again.
    mixed = models.init_random(tiny_gemma_config(sliding_window=4), **opts)
    assert mixed.cfg.sliding_layers == (0, 2)
    assert _first_token_influence(mixed)[7:].min() > 1e-6


@pytest.mark.parametrize("name", ["llama3", "gemma3", "gemma3_multimodal", "gemma3_untied"])
def test_export_reload_in_transformers(tmp_path, name):
    import torch
    from transformers import AutoModelForCausalLM

    src, out = tmp_path / "src", tmp_path / "out"
    hf = MAKERS[name](src)
    model = models.from_pretrained(str(src), scan_layers=True)
    models.save_pretrained(model, str(out), dtype=np.float32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == (name != "gemma3_untied" and name != "llama3")
    assert cfg["architectures"] == [{"llama3": "LlamaForCausalLM"}.get(name, "Gemma3ForCausalLM")]
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.randint(1, 380, (2, 13))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(ids).logits.numpy(), hf(ids).logits.numpy(), atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", ["llama3", "gemma3"])
def test_sharded_equals_single_device(tmp_path, name, scan):
    MAKERS[name](tmp_path)
    ids, mask = padded_batch(np.random.default_rng(3), 380, [16, 7, 12, 16], 16, left=True)
    got, ref, _ = sharded_and_single_logprobs(tmp_path, ids, mask, chunk=8, scan_layers=scan,
                                              attention="xla")
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_named_constructors_match_published_configs():
    l8 = llama3.llama3_8b()
    assert (l8.d_model, l8.n_layers, l8.n_heads, l8.n_kv_heads, l8.ffn_dim, l8.vocab_size,
            l8.rope_theta, l8.tie_embeddings) == (4096, 32, 32, 8, 14336, 128256, 5e5, False)
    assert 8.0e9 < l8.num_params < 8.05e9
    assert llama3.llama3p2_1b().rope_scaling == ("llama3", 32.0, 1.0, 4.0, 8192)
    g4 = gemma3.translategemma_4b()
    assert (g4.d_model, g4.n_layers, g4.n_heads, g4.n_kv_heads, g4.head_dim, g4.sliding_window,
            g4.vocab_size) == (2560, 34, 8, 4, 256, 1024, 262208)
    assert g4.sliding_layers[:6] == (0, 1, 2, 3, 4, 6) and len(g4.sliding_layers) == 34 - 5
