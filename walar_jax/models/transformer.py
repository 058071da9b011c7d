"""The decoder-only policy: embeddings, blocks, final norm, log-probs of given tokens.

Padding and packing both come in as segment ids [B, T] (0 = padding, equal ids attend
to each other, causally); positions count from 0 at each segment's first real token,
as vLLM does, unless given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from walar_jax.models.config import ModelConfig
from walar_jax.models.layers import MLP, Attention, RMSNorm
from walar_jax.sharding import constrain


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment, starting at 0."""
    T = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(T), segment_ids.shape)
    prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    start = jnp.where(segment_ids != prev, idx, 0)
    return idx - jax.lax.cummax(start, axis=1)


def causal_segment_mask(segment_ids: jax.Array, window: int | None = None) -> jax.Array:
    """[B, T, S] boolean: query t sees key s <= t of the same non-padding segment (and,
    with a sliding window, only the last `window` of them, t - s < window)."""
    T = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    if window is not None:
        causal &= ~jnp.tril(jnp.ones((T, T), bool), k=-window)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal[None] & same & (segment_ids[:, None, :] != 0)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, sliding=False):
        norm = functools.partial(RMSNorm, cfg.d_model, cfg.rms_eps, param_dtype=param_dtype,
                                 offset=cfg.norm_offset)
        self.pre_attn_norm = norm()
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, sliding=sliding)
        self.pre_mlp_norm = norm()
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        if cfg.post_norms:
            self.post_attn_norm = norm()
            self.post_mlp_norm = norm()
        self.post_norms = cfg.post_norms
        self.sliding = sliding

    def __call__(self, x, positions, masks):
        h = self.attn(self.pre_attn_norm(x), positions, masks[1] if self.sliding else masks[0])
        x = x + (self.post_attn_norm(h) if self.post_norms else h)
        h = self.mlp(self.pre_mlp_norm(x))
        x = x + (self.post_mlp_norm(h) if self.post_norms else h)
        return constrain(x, "batch", "length", "act_embed")


class Transformer(nnx.Module):
    """Calling it returns logits [B, T, V]; `token_logprobs` avoids materialising them."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool = False):
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (V, D), param_dtype) * 0.02,
                               axes=("vocab", "embed"))
        self.layers = nnx.List([
            Block(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, sliding=i in cfg.sliding_layers)
            for i in range(cfg.n_layers)
        ])
        self.final_norm = RMSNorm(D, cfg.rms_eps, param_dtype=param_dtype, offset=cfg.norm_offset)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(jax.random.normal(rngs.params(), (V, D), param_dtype) * D**-0.5,
                                     axes=("vocab", "embed"))
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat

    def unembedding(self) -> jax.Array:
        w = self.embed if self.cfg.tie_embeddings else self.lm_head
        return w[...].astype(self.dtype)

    def hidden_states(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None):
        """Final-normed hidden states [B, T, D]."""
        if segment_ids is None:
            segment_ids = (jnp.ones_like(input_ids) if attention_mask is None
                           else attention_mask.astype(jnp.int32))
        if positions is None:
            positions = segment_positions(segment_ids)
        masks = (causal_segment_mask(segment_ids),
                 causal_segment_mask(segment_ids, self.cfg.sliding_window)
                 if self.cfg.sliding_layers else None)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
        if self.cfg.embed_scale:  # Gemma: the scale is rounded to the compute dtype first
            x = x * jnp.asarray(self.cfg.d_model**0.5, self.dtype)
        x = constrain(x, "batch", "length", "act_embed")
        for block in self.layers:
            if self.remat:
                x = nnx.remat(lambda b, *a: b(*a), prevent_cse=False)(block, x, positions, masks)
            else:
                x = block(x, positions, masks)
        return self.final_norm(x)

    def __call__(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None):
        h = self.hidden_states(input_ids, attention_mask, segment_ids=segment_ids, positions=positions)
        logits = jnp.einsum("BTD,VD->BTV", h, self.unembedding()).astype(jnp.float32)
        return constrain(logits, "batch", "length", "vocab")

    def token_logprobs(self, input_ids, targets, attention_mask=None, *, segment_ids=None,
                       positions=None, chunk: int = 256, with_entropy: bool = False):
        """log p(targets[b, t] | input_ids[b, :t+1]) as [B, T] (and entropy [B, T]).

        Logits exist only one chunk of the sequence at a time, and are recomputed in
        the backward pass, so peak memory is B x chunk x V instead of B x T x V.
        """
        h = self.hidden_states(input_ids, attention_mask, segment_ids=segment_ids, positions=positions)
        return chunked_logprobs(h, self.unembedding(), targets, chunk=chunk, with_entropy=with_entropy)


def chunked_logprobs(h, unembed, targets, *, chunk: int, with_entropy: bool):
    B, T, D = h.shape
    chunk = min(chunk, T)
    pad = (-T) % chunk
    hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    tp = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (T + pad) // chunk
    hc = hp.reshape(B, n, chunk, D).swapaxes(0, 1)
    tc = tp.reshape(B, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def one(args):
        hx, tx = args
        logits = jnp.einsum("BTD,VD->BTV", hx, unembed).astype(jnp.float32)
        logits = constrain(logits, "batch", "length", "vocab")
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tx[..., None], axis=-1)[..., 0]
        ent = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return picked - lse, ent

    lp, ent = jax.lax.map(one, (hc, tc))
    lp = lp.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    ent = ent.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    return (lp, ent) if with_entropy else lp
