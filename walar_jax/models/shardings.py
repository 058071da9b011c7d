"""Abstract models, parameter shardings and random initialisation straight into shards."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax import sharding as shd
from walar_jax.models.config import ModelConfig
from walar_jax.models.transformer import Transformer

log = logging.getLogger(__name__)


def flat_params(model_or_state) -> dict[str, nnx.Variable]:
    """{"layers.0.attn.q_proj": Param, ...} of a model or its state."""
    state = (model_or_state if isinstance(model_or_state, nnx.State)
             else nnx.state(model_or_state, nnx.Param))
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def abstract_model(cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                   **options) -> Transformer:
    """The model with shapes and metadata but no arrays (`options`: remat, scan_layers,
    attention, as Transformer takes them)."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                              param_dtype=param_dtype, **options))


def shardings_for(model: Transformer, mesh) -> dict[str, jax.sharding.Sharding]:
    """{path: sharding} from each parameter's logical axes (one device without a mesh)."""
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return {k: dev for k in flat_params(model)}
    ctx = shd.ShardingCtx(mesh)
    return shd.param_shardings(
        {k: (v.shape, v.get_metadata().get("axes")) for k, v in flat_params(model).items()}, ctx
    )


def _path_str(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def sharding_tree(model: Transformer, mesh):
    """Shardings in the structure of `nnx.to_pure_dict(nnx.state(model))`, for jit."""
    shards = shardings_for(model, mesh)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.tree_util.tree_map_with_path(lambda p, _: shards[_path_str(p)], pure)


def log_model(model: Transformer, shardings: dict[str, jax.sharding.Sharding]) -> None:
    n = sum(int(np.prod(v.shape)) for v in flat_params(model).values())
    log.info("model %s: %s parameters (%.2f B), scan_layers=%s, remat=%s, attention=%s",
             model.cfg.family, f"{n:,}", n / 1e9, model.scan_layers, model.remat,
             model.attention)
    for k, v in flat_params(model).items():
        spec = getattr(shardings[k], "spec", "single device")
        log.info("  %-40s %-20s %s", k, tuple(v.shape), spec)


def init_random(cfg: ModelConfig, *, seed: int = 0, mesh=None, dtype=jnp.float32,
                param_dtype=jnp.float32, **options) -> Transformer:
    """A randomly initialised model, each tensor created directly in its shards."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, **options)
    abstract = abstract_model(cfg, **kw)
    graphdef, abs_state = nnx.split(abstract)
    shards = shardings_for(abstract, mesh)
    flat_keys = list(flat_params(abs_state))

    def make():
        state = nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed), **kw))
        return [v[...] for v in flat_params(state).values()]

    values = jax.jit(make, out_shardings=[shards[k] for k in flat_keys])()
    for var, val in zip(flat_params(abs_state).values(), values):
        var.set_value(val)
    model = nnx.merge(graphdef, abs_state)
    log_model(model, shards)
    return model
