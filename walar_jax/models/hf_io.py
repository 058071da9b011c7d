"""The Hugging Face round trip: load a checkpoint into (sharded) parameters, export one.

`from_pretrained` reads config.json, builds the model abstractly, and places each
checkpoint tensor straight into its shards (a scanned model's layer slices go one at a
time into their place in the stacked parameter, on the devices that hold it);
`save_pretrained` and `hf_tensors` walk the same table backwards, gathering one
(per-layer) tensor at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from walar_jax.models import safetensors_io
from walar_jax.models.hf_table import Rule, Slot
from walar_jax.models.registry import family, read_config, resolve_checkpoint
from walar_jax.models.shardings import abstract_model, flat_params, log_model, shardings_for
from walar_jax.models.transformer import Transformer

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model",
)
SHARD_BYTES = 4 << 30


def _layer_sharding(stack: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """The sharding of one layer of a stacked parameter (its leading axis dropped)."""
    if isinstance(stack, NamedSharding):
        return NamedSharding(stack.mesh, P(*tuple(stack.spec)[1:]))
    return stack


@functools.lru_cache(maxsize=None)
def _stack_ops(shape, dtype, sharding):
    """(make a zero stack in its shards, write one layer into it in place), compiled once
    per stack shape and sharding."""
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    update = jax.jit(lambda s, x, i: jax.lax.dynamic_update_index_in_dim(s, x, i, 0),
                     donate_argnums=0, out_shardings=sharding)
    return zeros, update


class _Placer:
    """Puts checkpoint tensors into their shards: whole parameters directly, layers of a
    stacked parameter by a donated in-place update of that layer's slice."""

    def __init__(self, params: dict[str, nnx.Variable], shards: dict[str, jax.sharding.Sharding],
                 stacked: bool):
        self.params, self.shards, self.stacked = params, shards, stacked
        self.stacks: dict[str, jax.Array] = {}
        self.loaded: set[tuple[str, int | None]] = set()

    def put(self, slot: Slot, arr: np.ndarray) -> None:
        var, sharding = self.params[slot.path], self.shards[slot.path]
        if slot.layer is None:
            var.set_value(jax.make_array_from_callback(var.shape, sharding, lambda i: arr[i]))
        else:
            zeros, update = _stack_ops(var.shape, np.dtype(var.dtype), sharding)
            if slot.path not in self.stacks:
                self.stacks[slot.path] = zeros()
            layer = jax.make_array_from_callback(var.shape[1:], _layer_sharding(sharding),
                                                 lambda i: arr[i])
            stack = update(self.stacks[slot.path], layer, jnp.int32(slot.layer))
            self.stacks[slot.path] = stack.block_until_ready()
        self.loaded.add((slot.path, slot.layer))

    def _is_stack(self, path: str) -> bool:
        return self.stacked and path.startswith("layers.")

    def finish(self, directory: str, table) -> None:
        """Installs the stacks; raises naming the HF tensors the checkpoint lacked."""
        missing = []
        for path, var in self.params.items():
            layers = var.shape[0] if self._is_stack(path) else None
            for name, slot in table.to_hf(path, n_layers=layers):
                if (slot.path, slot.layer) not in self.loaded:
                    missing.append(f"{name} ({path}{'' if layers is None else f'[{slot.layer}]'})")
        if missing:
            raise ValueError(f"{directory}: checkpoint lacks {len(missing)} tensors, "
                             f"e.g. {missing[:5]}")
        for path, stack in self.stacks.items():
            self.params[path].set_value(stack)


def _skippable(cfg, name: str, slot: Slot | None) -> bool:
    """Tensors a checkpoint may hold that the policy does not use."""
    if slot is not None and slot.path == "lm_head" and cfg.tie_embeddings:
        return True  # some tied checkpoints still store the head
    ignore = getattr(family(cfg), "IGNORE", None)
    return ignore is not None and bool(ignore.search(name))  # e.g. a vision tower


def from_pretrained(path_or_id: str, *, dtype=jnp.float32, param_dtype=jnp.float32, mesh=None,
                    **options) -> Transformer:
    """Loads an HF checkpoint (local directory or hub id) into a (sharded) JAX model.
    `options`: remat, scan_layers, attention (see Transformer)."""
    directory = resolve_checkpoint(path_or_id)
    cfg = read_config(directory)
    table = family(cfg).HF_TABLE
    abstract = abstract_model(cfg, dtype=dtype, param_dtype=param_dtype, **options)
    graphdef, abs_state = nnx.split(abstract)
    params = flat_params(abs_state)
    shards = shardings_for(abstract, mesh)
    placer = _Placer(params, shards, abstract.scan_layers)
    for name, hf_arr in safetensors_io.iter_checkpoint(directory):
        slot = table.from_hf(name, stacked=abstract.scan_layers)
        if slot is None or slot.path not in params or (
                slot.layer is not None and slot.layer >= params[slot.path].shape[0]):
            if _skippable(cfg, name, slot):
                continue
            raise ValueError(f"{directory}: checkpoint tensor {name} {hf_arr.shape} has no "
                             f"place in the {cfg.family} model")
        shape = params[slot.path].shape[0 if slot.layer is None else 1:]
        try:
            arr = slot.rule.to_jax(hf_arr, shape).astype(params[slot.path].dtype)
        except ValueError as e:
            raise ValueError(f"{name}: shape {hf_arr.shape} does not fit {slot.path} "
                             f"{shape}") from e
        placer.put(slot, arr)
    placer.finish(directory, table)
    model = nnx.merge(graphdef, abs_state)
    model.source_dir = directory
    log_model(model, shards)
    return model


def _order(name_slot: tuple[str, Slot]):
    """Export order, the same for stacked and listed layers: by parameter path with the
    layer index in place (numbers compared as numbers)."""
    slot = name_slot[1]
    parts = slot.path.split(".")
    if slot.layer is not None:
        parts.insert(1, str(slot.layer))
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def export_plan(model: Transformer) -> list[tuple[str, Slot]]:
    """(HF name, slot) of every exported tensor, in export order."""
    table = family(model.cfg).HF_TABLE
    n_layers = model.cfg.n_layers if model.scan_layers else None
    plan = [hit for path in flat_params(model) for hit in table.to_hf(path, n_layers=n_layers)]
    return sorted(plan, key=_order)


def _out_dtype(model: Transformer, dtype) -> np.dtype:
    return np.dtype(dtype or safetensors_io.HF_DTYPES[model.cfg.hf_dtype])


def hf_specs(model: Transformer, dtype=None) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(HF name, HF shape, dtype) of every exported tensor, in export order."""
    params, out_dtype = flat_params(model), _out_dtype(model, dtype)
    specs = []
    for name, slot in export_plan(model):
        shape = params[slot.path].shape[0 if slot.layer is None else 1:]
        specs.append((name, slot.rule.hf_shape(shape), out_dtype))
    return specs


def gather(x: jax.Array) -> np.ndarray:
    """One parameter as a host array, gathered across hosts when needed."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


@functools.lru_cache(maxsize=None)
def _exporter(layout: Rule, stacked: bool, out_dtype: np.dtype):
    """One jitted program per layout (a Rule without names, so that rules of the same
    kind share it): (a layer of) a parameter, cast to the output
    dtype and laid out as HF stores it, on the devices. The layer is a traced argument, so
    the programs compile once per parameter shape (not once per layer) and stay cached for
    every later export or weight sync; the host receives finished bytes (half of them for
    a bf16 engine) and copies nothing more. The rules only permute, so casting first is
    bit-identical to casting the permuted float32 array."""

    def export(x, layer):
        if stacked:
            x = jax.lax.dynamic_index_in_dim(x, layer, keepdims=False)
        return layout.to_hf(x.astype(out_dtype))

    return jax.jit(export)


def hf_tensors(model: Transformer, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named host tensors, one (per-layer) tensor at a time (export and weight sync):
    each sliced, cast and transposed on the devices (`_exporter`), then gathered."""
    params, out_dtype = flat_params(model), _out_dtype(model, dtype)
    for name, slot in export_plan(model):
        layout = dataclasses.replace(slot.rule, hf="", jax="")
        fn = _exporter(layout, slot.layer is not None, out_dtype)
        yield name, gather(fn(params[slot.path][...], np.int32(slot.layer or 0)))


def _shard_groups(specs, shard_bytes: int) -> list[list]:
    groups, size = [[]], 0
    for spec in specs:
        nbytes = int(np.prod(spec[1])) * spec[2].itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += nbytes
    return groups


def save_pretrained(model: Transformer, out_dir: str, *, dtype=None,
                    tokenizer_dir: str | None = None, shard_bytes: int = SHARD_BYTES) -> str:
    """Writes config.json, safetensors (sharded with an index past `shard_bytes`) and the
    tokenizer files of `tokenizer_dir` (default: the directory the model came from)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg_json = family(model.cfg).config_to_hf(model.cfg)
    if dtype is not None:
        cfg_json["torch_dtype"] = np.dtype(dtype).name
    specs = hf_specs(model, dtype)
    groups = _shard_groups(specs, shard_bytes)
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
        _copy_tokenizer(tokenizer_dir or getattr(model, "source_dir", None), out_dir)
    return out_dir


def _copy_tokenizer(src: str | None, out_dir: str) -> None:
    if not src or os.path.abspath(src) == os.path.abspath(out_dir):
        return
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(out_dir, name))
