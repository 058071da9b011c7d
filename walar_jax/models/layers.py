"""Layers shared by every family.

Einsum letters: B batch, T query sequence, S key sequence, N query heads, K kv heads,
G query heads per kv head (N = K*G), H head dim, D model dim, F ffn dim, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from walar_jax.models.attention import attend, check_implementation
from walar_jax.models.config import ModelConfig
from walar_jax.sharding import constrain


def _init(rngs: nnx.Rngs, shape, fan_in: int, dtype) -> jax.Array:
    return jax.random.normal(rngs.params(), shape, dtype) * (fan_in**-0.5)


class RMSNorm(nnx.Module):
    """RMSNorm computed in fp32 and scaled after casting back, as `transformers` does."""

    def __init__(self, dim: int, eps: float, *, param_dtype, offset: float = 0.0):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype) - offset, axes=("norm",))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # Gemma scales in fp32, then casts
            return (xf * (self.scale[...].astype(jnp.float32) + self.offset)).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * xf.astype(x.dtype)


def rope_inv_freq(theta: float, head_dim: int, scaling: tuple | None) -> jax.Array:
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv
    if scaling[0] == "linear":
        return inv / scaling[1]
    # Llama 3: long wavelengths are divided by `factor`, short ones kept, a smooth ramp between.
    _, factor, low, high, orig = scaling
    wavelen = 2 * jnp.pi / inv
    smooth = (orig / wavelen - low) / (high - low)
    scaled = (1 - smooth) * inv / factor + smooth * inv
    inv = jnp.where(wavelen > orig / low, inv / factor, inv)
    mid = (wavelen <= orig / low) & (wavelen >= orig / high)
    return jnp.where(mid, scaled, inv)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates [B, T, heads, H] by `positions` [B, T] (half-split layout, as HF)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class Attention(nnx.Module):
    """GQA with RoPE (and QK-norm where the family has it). The caller passes the mask
    and RoPE frequencies of the layer's kind, so sliding-window and global layers share
    one structure (and can be stacked and scanned)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype,
                 attention: str = "dense"):
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nnx.Param(_init(rngs, (D, N, H), D, param_dtype), axes=("embed", "q_heads", "head_dim"))
        self.k_proj = nnx.Param(_init(rngs, (D, K, H), D, param_dtype), axes=("embed", "kv_heads", "head_dim"))
        self.v_proj = nnx.Param(_init(rngs, (D, K, H), D, param_dtype), axes=("embed", "kv_heads", "head_dim"))
        self.o_proj = nnx.Param(_init(rngs, (N, H, D), N * H, param_dtype), axes=("q_heads", "head_dim", "embed"))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(H, cfg.rms_eps, param_dtype=param_dtype, offset=cfg.norm_offset)
            self.k_norm = RMSNorm(H, cfg.rms_eps, param_dtype=param_dtype, offset=cfg.norm_offset)
        self.cfg = cfg
        self.dtype = dtype
        self.impl = check_implementation(attention)
        self.scale = (cfg.query_pre_attn_scalar or H) ** -0.5

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 inv_freq: jax.Array, window: int | None = None) -> jax.Array:
        cfg, dt = self.cfg, self.dtype
        q = jnp.einsum("BTD,DNH->BTNH", x, self.q_proj[...].astype(dt))
        k = jnp.einsum("BSD,DKH->BSKH", x, self.k_proj[...].astype(dt))
        v = jnp.einsum("BSD,DKH->BSKH", x, self.v_proj[...].astype(dt))
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = constrain(apply_rope(q, positions, inv_freq), "batch", "length", "q_heads", None)
        k = constrain(apply_rope(k, positions, inv_freq), "batch", "length", "kv_heads", None)
        out = attend(q, k, v, mask, scale=self.scale, impl=self.impl, window=window)
        out = constrain(out, "batch", "length", "q_heads", None)
        return jnp.einsum("BTNH,NHD->BTD", out, self.o_proj[...].astype(dt))


ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class MLP(nnx.Module):
    """Gated MLP: down(act(gate(x)) * up(x)) (SwiGLU, or GeGLU for Gemma)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
        D, F = cfg.d_model, cfg.ffn_dim
        self.gate_proj = nnx.Param(_init(rngs, (D, F), D, param_dtype), axes=("embed", "mlp"))
        self.up_proj = nnx.Param(_init(rngs, (D, F), D, param_dtype), axes=("embed", "mlp"))
        self.down_proj = nnx.Param(_init(rngs, (F, D), F, param_dtype), axes=("mlp", "embed"))
        self.dtype = dtype
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {cfg.activation!r}; one of {sorted(ACTIVATIONS)}")
        self.act = cfg.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = dense(x, self.gate_proj[...].astype(dt))
        up = dense(x, self.up_proj[...].astype(dt))
        h = constrain(ACTIVATIONS[self.act](gate) * up, "batch", "length", "mlp")
        return dense(h, self.down_proj[...].astype(dt))


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] @ w [in, out] -> [..., out], as one 2-D matmul over the flattened
    leading (batch and length) axes. The same product as an einsum keeping B and T apart,
    but its gradient's weight term then contracts two axes, and XLA:CPU lays the
    activation gradient out transposed for it in a slow fused loop (the MLP's backward:
    0.22 s against 0.165 s flattened, bench notes in the README)."""
    y = x.reshape(-1, x.shape[-1]) @ w
    return y.reshape(*x.shape[:-1], w.shape[-1])
