"""Scanned layers whose backward pass adds each layer's weight gradient into the
gradient accumulator in place.

With gradient accumulation, plain autodiff of a layer scan first builds the micro-batch's
gradient of the whole stack (one more fp32 copy of the layer weights per device), then
adds it to the accumulator. Here the backward is a reverse scan that carries the
accumulator and updates layer i's slice where it lies, so the only full-size gradient
buffer is the accumulator itself. The forward saves each layer's input and the backward
recomputes the layer (the nothing_saveable policy, at layer granularity). Exact: the
same per-layer VJPs, summed in the same order as `acc + grad`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _layer(graphdef, w, x, ctx, flag):
    return nnx.merge(graphdef, w)(x, ctx, flag)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan_accumulating(graphdef, stack, x, ctx, flags, acc):
    """Runs the stacked block `stack` (pure dict, leading axis = layers) over x; under
    differentiation, the cotangent returned for `stack` is `acc` plus its gradient."""
    def body(x, xs):
        w, flag = xs
        return _layer(graphdef, w, x, ctx, flag), None
    return jax.lax.scan(body, x, (stack, flags))[0]


def _fwd(graphdef, stack, x, ctx, flags, acc):
    def body(x, xs):
        w, flag = xs
        return _layer(graphdef, w, x, ctx, flag), x
    y, inputs = jax.lax.scan(body, x, (stack, flags))
    return y, (stack, inputs, ctx, flags, acc)


def _bwd(graphdef, res, dy):
    stack, inputs, ctx, flags, acc = res

    def body(carry, xs):
        dy, acc = carry
        i, w, x, flag = xs
        _, vjp = jax.vjp(lambda w, x: _layer(graphdef, w, x, ctx, flag), w, x)
        dw, dx = vjp(dy)
        acc = jax.tree.map(
            lambda a, g: jax.lax.dynamic_update_index_in_dim(
                a, jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False) + g.astype(a.dtype),
                i, 0),
            acc, dw)
        return (dx, acc), None

    n = flags.shape[0]
    (dx, acc), _ = jax.lax.scan(body, (dy, acc), (jnp.arange(n), stack, inputs, flags),
                                reverse=True)
    return acc, dx, None, None, None


scan_accumulating.defvjp(_fwd, _bwd)
