"""Model registry and the Hugging Face round trip.

`from_pretrained` reads config.json, builds the model abstractly, and places each
checkpoint tensor straight into its shards; `save_pretrained` and `hf_tensors` walk the
same table backwards, gathering one tensor at a time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax import sharding as shd
from walar_jax.models import gemma3, llama3, qwen3, safetensors_io
from walar_jax.models.config import ModelConfig
from walar_jax.models.transformer import Transformer

log = logging.getLogger(__name__)

# model_type of config.json (and ModelConfig.family) -> family module
FAMILIES: dict[str, ModuleType] = {
    qwen3.MODEL_TYPE: qwen3, llama3.MODEL_TYPE: llama3,
    **{t: gemma3 for t in (gemma3.MODEL_TYPE, *gemma3.HF_MODEL_TYPES)},
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
)
SHARD_BYTES = 4 << 30


def family(cfg_or_type: ModelConfig | str) -> ModuleType:
    name = cfg_or_type if isinstance(cfg_or_type, str) else cfg_or_type.family
    if name not in FAMILIES:
        raise ValueError(f"unsupported model_type {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def resolve_checkpoint(path_or_id: str) -> str:
    """A local directory as is; otherwise a hub id downloaded (weights, config, tokenizer)."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise ValueError(f"{path_or_id} is a file; expected an HF checkpoint directory or hub id")
    from huggingface_hub import snapshot_download  # only needed for hub ids

    return snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                         "*.model", "*.txt"])


def read_config(directory: str) -> ModelConfig:
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    return family(hf.get("model_type", "")).config_from_hf(hf)


def flat_params(model_or_state) -> dict[str, nnx.Variable]:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}


def abstract_model(cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                   remat: bool = False) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                              param_dtype=param_dtype, remat=remat))


def shardings_for(model: Transformer, mesh) -> dict[str, jax.sharding.Sharding]:
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
    log.info("model %s: %s parameters (%.2f B)", model.cfg.family, f"{n:,}", n / 1e9)
    for k, v in flat_params(model).items():
        spec = getattr(shardings[k], "spec", "single device")
        log.info("  %-40s %-20s %s", k, tuple(v.shape), spec)


def init_random(cfg: ModelConfig, *, seed: int = 0, mesh=None, dtype=jnp.float32,
                param_dtype=jnp.float32, remat: bool = False) -> Transformer:
    """A randomly initialised model, each tensor created directly in its shards."""
    abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat)
    graphdef, abs_state = nnx.split(abstract)
    shards = shardings_for(abstract, mesh)
    flat_keys = list(flat_params(abs_state))

    def make():
        state = nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed), dtype=dtype,
                                      param_dtype=param_dtype, remat=remat))
        return [v[...] for v in flat_params(state).values()]

    values = jax.jit(make, out_shardings=[shards[k] for k in flat_keys])()
    for var, val in zip(flat_params(abs_state).values(), values):
        var.set_value(val)
    model = nnx.merge(graphdef, abs_state)
    log_model(model, shards)
    return model


def from_pretrained(path_or_id: str, *, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None,
                    remat: bool = False) -> Transformer:
    """Loads an HF checkpoint (local directory or hub id) into a (sharded) JAX model."""
    directory = resolve_checkpoint(path_or_id)
    cfg = read_config(directory)
    table = family(cfg).HF_TABLE
    abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat)
    graphdef, abs_state = nnx.split(abstract)
    params = flat_params(abs_state)
    shards = shardings_for(abstract, mesh)
    loaded: set[str] = set()
    for name, hf_arr in safetensors_io.iter_checkpoint(directory):
        hit = table.from_hf(name)
        if hit is None or hit[0] not in params:
            if cfg.tie_embeddings and name == "lm_head.weight":
                continue  # some tied checkpoints still store the head
            ignore = getattr(family(cfg), "IGNORE", None)
            if ignore is not None and ignore.search(name):
                continue  # e.g. the vision tower of a multimodal checkpoint
            raise ValueError(f"{directory}: checkpoint tensor {name} {hf_arr.shape} has no "
                             f"place in the {cfg.family} model")
        path, rule = hit
        var = params[path]
        try:
            arr = rule.to_jax(hf_arr, var.shape).astype(var.dtype)
        except ValueError as e:
            raise ValueError(f"{name}: shape {hf_arr.shape} does not fit {path} {var.shape}") from e
        var.set_value(jax.make_array_from_callback(var.shape, shards[path], lambda idx: arr[idx]))
        loaded.add(path)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"{directory}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]}")
    model = nnx.merge(graphdef, abs_state)
    model.source_dir = directory
    log_model(model, shards)
    return model


def hf_specs(model: Transformer, dtype=None) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(HF name, HF shape, dtype) of every exported tensor, in export order."""
    table = family(model.cfg).HF_TABLE
    out_dtype = np.dtype(dtype or safetensors_io.HF_DTYPES[model.cfg.hf_dtype])
    specs = []
    for path, var in flat_params(model).items():
        name, rule = table.to_hf(path)
        shape = rule.hf_shape(var.shape)
        specs.append((name, shape, out_dtype))
    return specs


def gather(x: jax.Array) -> np.ndarray:
    """One parameter as a host array, gathered across hosts when needed."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def hf_tensors(model: Transformer, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named host tensors, one at a time (for export and weight sync)."""
    table = family(model.cfg).HF_TABLE
    out_dtype = np.dtype(dtype or safetensors_io.HF_DTYPES[model.cfg.hf_dtype])
    for path, var in flat_params(model).items():
        name, rule = table.to_hf(path)
        yield name, rule.to_hf(gather(var[...])).astype(out_dtype)


def save_pretrained(model: Transformer, out_dir: str, *, dtype=None,
                    tokenizer_dir: str | None = None, shard_bytes: int = SHARD_BYTES) -> str:
    """Writes config.json, safetensors (sharded with an index past `shard_bytes`) and the
    tokenizer files of `tokenizer_dir` (default: the directory the model came from)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg_json = family(model.cfg).config_to_hf(model.cfg)
    if dtype is not None:
        cfg_json["torch_dtype"] = np.dtype(dtype).name
    specs = hf_specs(model, dtype)
    groups, size = [[]], 0
    for spec in specs:
        nbytes = int(np.prod(spec[1])) * spec[2].itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += nbytes
    tensors = hf_tensors(model, dtype)
    names = ([f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
             if len(groups) > 1 else ["model.safetensors"])
    weight_map = {}
    for fname, group in zip(names, groups):
        def produce(name, _it=tensors):
            got, arr = next(_it)
            assert got == name, (got, name)
            return arr
        if jax.process_index() == 0:
            safetensors_io.write_file(os.path.join(out_dir, fname), group, produce)
        else:  # other hosts take part in the gathers only
            for spec in group:
                produce(spec[0])
        weight_map.update({s[0]: fname for s in group})
    if jax.process_index() == 0:
        if len(groups) > 1:
            total = sum(int(np.prod(s[1])) * s[2].itemsize for s in specs)
            with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg_json, f, indent=2)
        src = tokenizer_dir or getattr(model, "source_dir", None)
        for name in TOKENIZER_FILES if src else ():
            if os.path.exists(os.path.join(src, name)) and os.path.abspath(src) != os.path.abspath(out_dir):
                shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))
    return out_dir


__all__ = ["ModelConfig", "Transformer", "from_pretrained", "save_pretrained", "hf_tensors",
           "init_random", "read_config", "FAMILIES"]
