"""Qwen3 policy against `transformers`: log-probs, export round trip, sharding, each with
the layers listed and scanned and with every attention implementation CPU has."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from walar_jax import models
from walar_jax.models import qwen3
from tests.walar_jax.hf_fixtures import (OPTION_SETS, hf_token_logprobs, jax_logprobs,
                                         make_hf_qwen3, option_id, padded_batch,
                                         sharded_and_single_logprobs)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("left", [False, True])
def test_logprobs_match_transformers(tmp_path, tie, left):
    make_hf_qwen3(tmp_path, tie=tie)
    ids, mask = padded_batch(np.random.default_rng(1), 384, [13, 7, 20], 20, left)
    ref = hf_token_logprobs(tmp_path, ids, mask)
    real = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    for opts in OPTION_SETS:
        model = models.from_pretrained(str(tmp_path), dtype=jnp.float32, **opts)
        got = jax_logprobs(model, ids, mask)
        assert np.abs(got - ref)[real].max() <= 1e-4, option_id(opts)
        # logits through __call__ agree with the chunked log-prob path
        logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
        lp_full = jax.nn.log_softmax(logits, -1)[:, :-1]
        picked = np.take_along_axis(np.asarray(lp_full), ids[:, 1:, None], -1)[..., 0]
        assert np.abs(picked - got)[real].max() <= 1e-5, option_id(opts)


@pytest.mark.parametrize("opts", OPTION_SETS, ids=option_id)
def test_packed_segments_equal_separate_rows(tmp_path, opts):
    make_hf_qwen3(tmp_path, tie=False)
    model = models.from_pretrained(str(tmp_path), **opts)
    rng = np.random.default_rng(3)
    a, b = rng.integers(1, 384, 6), rng.integers(1, 384, 9)
    packed = jnp.asarray(np.concatenate([a, b, [0]])[None])
    seg = jnp.asarray(np.array([[1] * 6 + [2] * 9 + [0]]))
    lp_packed = np.asarray(model.token_logprobs(packed, jnp.roll(packed, -1, 1), segment_ids=seg))
    lp_a = np.asarray(model.token_logprobs(jnp.asarray(a[None]), jnp.roll(jnp.asarray(a[None]), -1, 1)))
    lp_b = np.asarray(model.token_logprobs(jnp.asarray(b[None]), jnp.roll(jnp.asarray(b[None]), -1, 1)))
    np.testing.assert_allclose(lp_packed[0, :5], lp_a[0, :5], atol=1e-5)
    np.testing.assert_allclose(lp_packed[0, 6:14], lp_b[0, :8], atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_export_reload_in_transformers_identical(tmp_path, tie, scan):
    import torch
    from transformers import AutoModelForCausalLM

    src, out = tmp_path / "src", tmp_path / "out"
    make_hf_qwen3(src, tie=tie)
    model = models.from_pretrained(str(src), scan_layers=scan)
    models.save_pretrained(model, str(out), dtype=np.float32, shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    a = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.randint(1, 384, (2, 11))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    # the other layout reads the export back to the same tensors, in the same order
    reloaded = models.from_pretrained(str(out), scan_layers=not scan)
    for (n1, x1), (n2, x2) in zip(models.hf_tensors(model), models.hf_tensors(reloaded),
                                  strict=True):
        assert n1 == n2 and np.array_equal(x1, x2)


def test_scanned_layers_are_stacked_slices_of_the_listed_ones(tmp_path):
    make_hf_qwen3(tmp_path, tie=False, layers=3)
    listed = models.flat_params(models.from_pretrained(str(tmp_path)))
    stacked = models.flat_params(models.from_pretrained(str(tmp_path), scan_layers=True))
    assert stacked["layers.mlp.up_proj"].shape == (3, 64, 128)
    assert stacked["layers.mlp.up_proj"].get_metadata()["axes"] == ("layers", "embed", "mlp")
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(stacked["layers.attn.q_proj"][...][i]),
                                      np.asarray(listed[f"layers.{i}.attn.q_proj"][...]))


def test_engine_dtype_export_is_the_cast_float32_one_and_compiles_once_per_shape(tmp_path):
    """hf_tensors casts and transposes on the devices; the bf16 tensors equal the float32
    ones cast on the host, bit for bit, and a scanned model's layers reuse one compiled
    program per parameter shape (a second export compiles nothing)."""
    import ml_dtypes

    from walar_jax.models import hf_io

    make_hf_qwen3(tmp_path, tie=False, layers=3)
    model = models.from_pretrained(str(tmp_path), scan_layers=True)
    hf_io._exporter.cache_clear()
    full = list(models.hf_tensors(model, np.float32))
    half = list(models.hf_tensors(model, ml_dtypes.bfloat16))
    for (n1, x1), (n2, x2) in zip(full, half, strict=True):
        assert n1 == n2 and x2.dtype == ml_dtypes.bfloat16 and x2.flags.c_contiguous
        assert np.array_equal(x1.astype(ml_dtypes.bfloat16).view(np.uint16), x2.view(np.uint16))
    programs = sum(fn._cache_size() for fn in _exporters())
    shapes = {(x.shape, str(x.dtype)) for x in models.flat_params(model).values()}
    assert programs <= 2 * len(shapes) < len(full)  # per shape and dtype, not per layer
    list(models.hf_tensors(model, ml_dtypes.bfloat16))
    assert sum(fn._cache_size() for fn in _exporters()) == programs


def _exporters():
    from walar_jax.models import hf_io

    return [hf_io._exporter(hf_io.Rule("", "", kind, d), stacked, np.dtype(dt))
            for kind in ("copy", "linear") for d in (1, 2, 3) for stacked in (False, True)
            for dt in (np.float32, "bfloat16")]


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_forward_equals_single_device(tmp_path, scan):
    make_hf_qwen3(tmp_path, tie=False)
    ids, mask = padded_batch(np.random.default_rng(2), 384, [8, 5, 8, 3], 8, left=True)
    got, ref, sharded = sharded_and_single_logprobs(tmp_path, ids, mask, chunk=4,
                                                    scan_layers=scan, attention="xla")
    specs = {k: v[...].sharding.spec for k, v in models.flat_params(sharded).items()}
    P = jax.sharding.PartitionSpec
    layer = "layers." if scan else "layers.0."
    lead = (None,) if scan else ()  # the stacked axis stays whole on every device
    assert specs[layer + "mlp.gate_proj"] == P(*lead, "fsdp", "tensor")
    assert specs[layer + "attn.k_proj"] == P(*lead, "fsdp", "tensor", None)
    assert specs["lm_head"] == P(("tensor", "fsdp"), None)  # vocabulary-parallel head
    assert len(got.sharding.device_set) == 8
    names = [n for n, _ in models.hf_tensors(sharded)]  # per-layer tensors, gathered
    assert "model.layers.1.mlp.up_proj.weight" in names
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_named_constructors_match_published_configs():
    c = qwen3.qwen3_8b()
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim,
            c.vocab_size, c.rope_theta, c.tie_embeddings) == (
        4096, 36, 32, 8, 128, 12288, 151936, 1e6, False)
    assert 8.1e9 < c.num_params < 8.3e9  # Qwen3-8B: 8.19 B parameters
    assert qwen3.qwen3_0p6b().tie_embeddings and qwen3.qwen3_4b().n_layers == 36
    assert 0.55e9 < qwen3.qwen3_0p6b().num_params < 0.65e9


def test_hf_config_round_trip():
    hf = qwen3.config_to_hf(qwen3.qwen3_8b())
    assert qwen3.config_from_hf(hf).replace(hf_extra=()) == qwen3.qwen3_8b()


@pytest.mark.parametrize("scan", [False, True])
def test_bad_checkpoint_errors_name_the_tensor(tmp_path, scan):
    from walar_jax.models import safetensors_io

    make_hf_qwen3(tmp_path, tie=False)
    f = safetensors_io.SafeTensorsFile(str(tmp_path / "model.safetensors"))
    keep = [k for k in f.keys() if "layers.1.mlp.up_proj" not in k]
    safetensors_io.write_file(str(tmp_path / "model.safetensors"),
                              [(k, f.shape(k), f.get(k).dtype) for k in keep], f.get)
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*model\.layers\.1\.mlp\.up_proj"):
        models.from_pretrained(str(tmp_path), scan_layers=scan)
    # a layer the config does not have is refused, not written into another layer
    extra = "model.layers.2.mlp.up_proj.weight"
    safetensors_io.write_file(str(tmp_path / "model.safetensors"),
                              [(k, f.shape(k), f.get(k).dtype) for k in f.keys()]
                              + [(extra, f.shape(extra.replace(".2.", ".0.")), np.float32)],
                              lambda k: f.get(k.replace(".2.", ".0.") if k == extra else k))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.up_proj\.weight .* has no place"):
        models.from_pretrained(str(tmp_path), scan_layers=scan)


def test_remat_policies_and_scan_give_the_same_gradients_and_bf16_compute(tmp_path):
    from flax import nnx

    make_hf_qwen3(tmp_path, tie=False)
    ids, mask = padded_batch(np.random.default_rng(4), 384, [9, 12], 12, left=False)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def grads(model):
        def loss(m):
            return m.token_logprobs(ids, jnp.roll(ids, -1, 1), mask, chunk=4).mean()
        g = nnx.to_pure_dict(nnx.grad(loss)(model))
        if model.scan_layers:  # list the stacked layers' gradients like the listed model's
            g["layers"] = {i: jax.tree.map(lambda x: x[i], g["layers"]) for i in range(2)}
        return jax.tree.leaves(g)

    plain = models.from_pretrained(str(tmp_path))
    ref = grads(plain)
    for remat in ["nothing_saveable", "dots_saveable", True]:
        for scan in [False, True]:
            got = grads(models.from_pretrained(str(tmp_path), remat=remat, scan_layers=scan))
            for a, b in zip(ref, got, strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ValueError, match="model.remat='everything'"):
        models.from_pretrained(str(tmp_path), remat="everything")
    bf16 = models.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert models.flat_params(bf16)["embed"][...].dtype == jnp.float32  # fp32 master weights
    lp32 = jax_logprobs(plain, ids, mask)
    lp16 = jax_logprobs(bf16, ids, mask)
    assert 0 < np.abs(lp32 - lp16).max() < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_dense_in_bf16(tmp_path):
    make_hf_qwen3(tmp_path, tie=False)
    ids, mask = padded_batch(np.random.default_rng(5), 384, [20, 9, 14], 24, left=True)
    real = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    lp = {impl: jax_logprobs(models.from_pretrained(str(tmp_path), dtype=jnp.bfloat16,
                                                    scan_layers=True, attention=impl), ids, mask)
          for impl in ("dense", "cudnn")}
    assert np.abs(lp["cudnn"] - lp["dense"])[real].max() < 0.05  # bf16 rounding only


def test_attention_choice_errors_are_clear():
    from walar_jax.models.tiny import tiny_config

    with pytest.raises(ValueError, match="model.attention='flash'; one of"):
        models.init_random(tiny_config(), attention="flash")
    fp32 = models.init_random(tiny_config(), attention="cudnn")  # built anywhere, run on GPU
    ids = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="'cudnn' needs bf16 or fp16 compute"):
        fp32.token_logprobs(ids, ids)
