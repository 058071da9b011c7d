"""The decoder-only policy: embeddings, blocks, final norm, log-probs of given tokens.

Padding and packing both come in as segment ids [B, T] (0 = padding, equal ids attend
to each other, causally); positions count from 0 at each segment's first real token,
as vLLM does, unless given.

Layers are either a list of blocks or, with `scan_layers`, one block whose parameters
are stacked on a leading `layers` axis and run by `nnx.scan`: the compiled program then
holds one layer's gathered weights at a time, whatever the backend's scheduler does.
Gemma 3's sliding-window and global layers share one block structure; each layer's kind
is a scanned boolean that picks its mask and RoPE frequencies.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from walar_jax.models.attention import causal_segment_mask, check_implementation
from walar_jax.models.config import ModelConfig
from walar_jax.models.fused_scan import scan_accumulating
from walar_jax.models.layers import MLP, Attention, RMSNorm, dense, rope_inv_freq
from walar_jax.sharding import constrain

# model.remat: what the backward pass may keep of each block's forward instead of
# recomputing it. True/False are accepted as "nothing_saveable"/"none".
REMAT_POLICIES = {
    "none": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy_name(remat: bool | str) -> str:
    name = {True: "nothing_saveable", False: "none"}.get(remat, remat)
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r}; one of {sorted(REMAT_POLICIES)} (or a bool)")
    return name


def options_from_config(model_cfg: Any) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained`/`init_random` from a config's `model`
    section (dtype, param_dtype, remat, scan_layers, attention)."""
    return dict(dtype=jnp.dtype(model_cfg.dtype), param_dtype=jnp.dtype(model_cfg.param_dtype),
                remat=model_cfg.remat, scan_layers=bool(model_cfg.get("scan_layers", False)),
                attention=model_cfg.get("attention", "dense"))


def add_micro_grads(model: "Transformer", acc: dict, grads: dict) -> dict:
    """acc + grads leaf by leaf (pure dicts of the parameters), except the scanned layers
    of a model that already added them into `acc["layers"]` in place (see
    `Transformer.fuses_grad_accumulation`)."""
    fused = model.fuses_grad_accumulation
    out = {k: jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc[k], grads[k])
           for k in acc if not (fused and k == "layers")}
    if fused:
        out["layers"] = grads["layers"]
    return out


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment, starting at 0."""
    T = segment_ids.shape[1]
    idx = jnp.broadcast_to(jnp.arange(T), segment_ids.shape)
    prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    start = jnp.where(segment_ids != prev, idx, 0)
    return idx - jax.lax.cummax(start, axis=1)


def _pick(sliding, local, full):
    """The sliding-window variant when `sliding` (a bool, or a traced scalar under scan)."""
    if local is None or sliding is False:
        return full
    if sliding is True:
        return local
    return jnp.where(sliding, local, full)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention="dense"):
        norm = functools.partial(RMSNorm, cfg.d_model, cfg.rms_eps, param_dtype=param_dtype,
                                 offset=cfg.norm_offset)
        self.pre_attn_norm = norm()
        self.attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                              attention=attention)
        self.pre_mlp_norm = norm()
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        if cfg.post_norms:
            self.post_attn_norm = norm()
            self.post_mlp_norm = norm()
        self.post_norms = cfg.post_norms
        self.window = cfg.sliding_window

    def __call__(self, x, ctx: dict, sliding=False):
        mask = _pick(sliding, ctx["mask_local"], ctx["mask"])
        inv_freq = _pick(sliding, ctx["inv_freq_local"], ctx["inv_freq"])
        window = self.window if sliding is True else None
        h = self.attn(self.pre_attn_norm(x), ctx["positions"], mask, inv_freq, window)
        x = x + (self.post_attn_norm(h) if self.post_norms else h)
        h = self.mlp(self.pre_mlp_norm(x))
        x = x + (self.post_mlp_norm(h) if self.post_norms else h)
        return constrain(x, "batch", "length", "act_embed")


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs, **kw) -> Block:
    """One Block whose parameters carry a leading axis of n_layers (logical name `layers`)."""
    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0,
              transform_metadata={nnx.PARTITION_NAME: "layers", "axes": "layers"})
    def make(r):
        return Block(cfg, rngs=r, **kw)
    return make(rngs)


class Transformer(nnx.Module):
    """Calling it returns logits [B, T, V]; `token_logprobs` avoids materialising them."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool | str = "none", scan_layers: bool = False,
                 attention: str = "dense"):
        V, D = cfg.vocab_size, cfg.d_model
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (V, D), param_dtype) * 0.02,
                               axes=("vocab", "embed"))
        kw = dict(dtype=dtype, param_dtype=param_dtype, attention=check_implementation(attention))
        if scan_layers:
            self.layers = stacked_blocks(cfg, rngs, **kw)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs, **kw) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(D, cfg.rms_eps, param_dtype=param_dtype, offset=cfg.norm_offset)
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Param(jax.random.normal(rngs.params(), (V, D), param_dtype) * D**-0.5,
                                     axes=("vocab", "embed"))
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat_policy_name(remat)
        self.scan_layers = scan_layers
        self.attention = attention

    @property
    def fuses_grad_accumulation(self) -> bool:
        """Whether token_logprobs(..., grad_acc=) adds the layers' gradients into the
        accumulator in place (scanned layers recomputed in the backward)."""
        return self.scan_layers and self.remat == "nothing_saveable"

    def unembedding(self) -> jax.Array:
        w = self.embed if self.cfg.tie_embeddings else self.lm_head
        return w[...].astype(self.dtype)

    def _context(self, segment_ids, positions) -> dict:
        """What every layer shares: positions, masks and RoPE frequencies of both kinds."""
        cfg = self.cfg
        local = bool(cfg.sliding_layers)
        return {
            "positions": positions,
            "mask": causal_segment_mask(segment_ids),
            "mask_local": causal_segment_mask(segment_ids, cfg.sliding_window) if local else None,
            "inv_freq": rope_inv_freq(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling),
            "inv_freq_local": (rope_inv_freq(cfg.rope_local_theta or cfg.rope_theta, cfg.head_dim,
                                             None) if local else None),
        }

    def _run_layers(self, x, ctx, grad_acc=None):
        policy = REMAT_POLICIES[self.remat]
        sliding = [i in self.cfg.sliding_layers for i in range(self.cfg.n_layers)]
        if grad_acc is not None and self.fuses_grad_accumulation:
            graphdef, stack = nnx.split(self.layers)
            return scan_accumulating(graphdef, nnx.to_pure_dict(stack), x, ctx,
                                     jnp.asarray(sliding), grad_acc)

        def run(block, x, flag):
            return block(x, ctx, flag)
        if self.remat != "none":
            run = nnx.remat(run, policy=policy, prevent_cse=not self.scan_layers)
        if not self.scan_layers:
            for block, flag in zip(self.layers, sliding):
                x = run(block, x, flag)
            return x

        @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)
        def scanned(block, x, flag):
            return run(block, x, flag)
        return scanned(self.layers, x, jnp.asarray(sliding))

    def hidden_states(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None,
                      grad_acc=None):
        """Final-normed hidden states [B, T, D]. `grad_acc`: the layers' part of a gradient
        accumulator, for `fuses_grad_accumulation` (ignored otherwise)."""
        if segment_ids is None:
            segment_ids = (jnp.ones_like(input_ids) if attention_mask is None
                           else attention_mask.astype(jnp.int32))
        if positions is None:
            positions = segment_positions(segment_ids)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
        if self.cfg.embed_scale:  # Gemma: the scale is rounded to the compute dtype first
            x = x * jnp.asarray(self.cfg.d_model**0.5, self.dtype)
        x = constrain(x, "batch", "length", "act_embed")
        x = self._run_layers(x, self._context(segment_ids, positions), grad_acc)
        return self.final_norm(x)

    def __call__(self, input_ids, attention_mask=None, *, segment_ids=None, positions=None):
        h = self.hidden_states(input_ids, attention_mask, segment_ids=segment_ids, positions=positions)
        logits = jnp.einsum("BTD,VD->BTV", h, self.unembedding()).astype(jnp.float32)
        return constrain(logits, "batch", "length", "vocab")

    def token_logprobs(self, input_ids, targets, attention_mask=None, *, segment_ids=None,
                       positions=None, chunk: int = 256, with_entropy: bool = False,
                       entropy_grad: bool = True, grad_acc=None):
        """log p(targets[b, t] | input_ids[b, :t+1]) as [B, T] (and entropy [B, T]; a
        metric only, without a gradient, when not `entropy_grad`).

        Logits exist one chunk of the sequence at a time; unless remat is "none", they
        are recomputed in the backward pass, so peak memory is B x chunk x V instead of
        B x T x V.
        """
        h = self.hidden_states(input_ids, attention_mask, segment_ids=segment_ids,
                               positions=positions, grad_acc=grad_acc)
        return chunked_logprobs(h, self.unembedding(), targets, chunk=chunk,
                                with_entropy=with_entropy, entropy_grad=entropy_grad,
                                remat=self.remat != "none")


def chunked_logprobs(h, unembed, targets, *, chunk: int, with_entropy: bool,
                     entropy_grad: bool = True, remat: bool = True):
    B, T, D = h.shape
    chunk = min(chunk, T)
    pad = (-T) % chunk
    hp = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    tp = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (T + pad) // chunk
    hc = hp.reshape(B, n, chunk, D).swapaxes(0, 1)
    tc = tp.reshape(B, n, chunk).swapaxes(0, 1)

    def one(args):
        hx, tx = args
        logits = dense(hx, unembed.T)  # flattened rows: layers.dense says why
        logits = constrain(logits.astype(jnp.float32), "logits_batch", "length", "vocab")
        lse = jax.nn.logsumexp(logits, axis=-1)
        # a masked sum, not a gather: its backward is elementwise and fuses with the
        # softmax's instead of scattering into a [B, chunk, V] buffer of zeros
        hit = tx[..., None] == jnp.arange(logits.shape[-1], dtype=tx.dtype)
        picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
        if not with_entropy:
            return picked - lse, jnp.zeros_like(lse)
        if not entropy_grad:  # a metric: its backward (a softmax over V) would be waste
            logits = jax.lax.stop_gradient(logits)
        ent = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        return picked - lse, ent

    lp, ent = jax.lax.map(jax.checkpoint(one) if remat else one, (hc, tc))
    lp = lp.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    ent = ent.swapaxes(0, 1).reshape(B, n * chunk)[:, :T]
    return (lp, ent) if with_entropy else lp
