"""Attention behind one call, the implementation picked by name (`model.attention`).

- "dense": the reference. Scores [B, K, G, T, S] in fp32, a boolean mask, softmax;
  the backward keeps the probabilities (bounded per layer by rematerialisation).
- "xla": `jax.nn.dot_product_attention` on its portable XLA path (CPU, GPU, TPU).
- "cudnn": the same call on cuDNN's fused flash-attention kernel (NVIDIA GPUs, bf16 or
  fp16 compute): logits are never materialised, forward or backward. Only when asked;
  it raises on backends and dtypes it does not support.

Padding and packing arrive as one boolean mask [B, T, S] (causal, same segment, key not
padding, and the sliding window where there is one), built once per forward pass and
shared by every layer. Einsum letters as in layers.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("dense", "xla", "cudnn")
NEG_INF = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, not NaN


def causal_segment_mask(segment_ids: jax.Array, window: int | None = None) -> jax.Array:
    """[B, T, S] boolean: query t sees key s <= t of the same non-padding segment (and,
    with a sliding window, only the last `window` of them, t - s < window)."""
    T = segment_ids.shape[1]
    t = jnp.arange(T)[:, None]
    s = jnp.arange(T)[None, :]
    causal = s <= t
    if window is not None:
        causal &= t - s < window
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal[None] & same & (segment_ids[:, None, :] != 0)


def check_implementation(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={name!r}; one of {IMPLEMENTATIONS}")
    return name


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
           impl: str = "dense", window: int | None = None) -> jax.Array:
    """Grouped-query attention: q [B, T, N, H], k and v [B, S, K, H], mask [B, T, S]
    -> [B, T, N, H]. `window` (when static) lets a fused kernel skip the masked-out
    blocks of a sliding-window layer; the mask already carries it either way."""
    if impl == "dense":
        return _dense(q, k, v, mask, scale)
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"model.attention='cudnn' needs bf16 or fp16 compute, got {q.dtype}; "
                         "use model.dtype=bfloat16 or model.attention='xla'")
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask[:, None], scale=scale, is_causal=True,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=check_implementation(impl))


def _dense(q, k, v, mask, scale):
    B, T, N, H = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, k).astype(jnp.float32) * scale
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(B, T, N, H)
