"""Meshes, logical axis rules and sharding constraints.

Every parameter carries logical axis names (its `axes` metadata); one rules table maps
logical names to mesh axes (`data`, `fsdp`, `tensor`). Activation constraints go
through `constrain`, which stays active on fake CPU devices so CPU tests catch
sharding bugs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)
MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    # Vocabulary-parallel embedding and head: rows split over tensor and fsdp, so the
    # [V, D] matrices (the largest in the model) are never gathered whole; the logits of a
    # chunk are computed where their rows live, for the whole batch ("logits_batch").
    ("vocab", ("tensor", "fsdp")),
    ("logits_batch", "data"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),  # the stacked axis of scanned layers: each device holds every layer
    ("norm", None),
    ("length", None),
    ("act_embed", None),
)


@dataclasses.dataclass(frozen=True)
class ShardingCtx:
    mesh: Mesh
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = DEFAULT_RULES


_CTX: contextvars.ContextVar[ShardingCtx | None] = contextvars.ContextVar("walar_sharding", default=None)


@contextlib.contextmanager
def use_sharding(ctx: ShardingCtx | None):
    """Makes `constrain` active (with this mesh and rules) while tracing inside."""
    token = _CTX.set(ctx)
    try:
        yield ctx
    finally:
        _CTX.reset(token)


def current() -> ShardingCtx | None:
    return _CTX.get()


def make_mesh(shape: Mapping[str, int] | Sequence[int], devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [shape[a] for a in MESH_AXES] if isinstance(shape, Mapping) else list(shape)
    if len(sizes) != 3:
        raise ValueError(f"mesh needs 3 sizes for {MESH_AXES}, got {sizes}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        sizes[sizes.index(-1)] = len(devices) // rest
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                         f"devices, {len(devices)} available")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], ctx: ShardingCtx
) -> P:
    """Maps logical names to a PartitionSpec; a dimension the mesh axes do not divide
    stays replicated (logged once per parameter by `param_shardings`)."""
    rules = dict(ctx.rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        target = rules.get(name) if name else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n not in used and ctx.mesh.shape[n] > 1)
        size = math.prod(ctx.mesh.shape[n] for n in names)
        if not names or dim % size:
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return P(*spec)


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active."""
    ctx = _CTX.get()
    if ctx is None:
        return x
    spec = logical_to_spec(axes, x.shape, ctx)
    return jax.lax.with_sharding_constraint(x, NamedSharding(ctx.mesh, spec))


def param_shardings(flat_abstract: Mapping[str, tuple[tuple, tuple]], ctx: ShardingCtx):
    """{path: NamedSharding} from {path: (shape, logical_axes)}."""
    out = {}
    for path, (shape, axes) in flat_abstract.items():
        if axes is None or len(axes) != len(shape):
            raise ValueError(f"parameter {path} has no logical axes for shape {shape}")
        out[path] = NamedSharding(ctx.mesh, logical_to_spec(axes, shape, ctx))
    return out


def optimizer_shardings(opt_state, params, param_shardings, mesh: Mesh):
    """Shardings for an optax state: every sub-tree shaped like `params` (Adam's moments)
    takes the parameters' shardings; everything else (step counts) is replicated."""
    p_def = jax.tree.structure(params)
    rep = NamedSharding(mesh, P())

    def visit(node):
        if jax.tree.structure(node) == p_def:
            return param_shardings
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[visit(c) for c in node])
        if isinstance(node, (tuple, list)):
            return type(node)(visit(c) for c in node)
        return jax.tree.map(lambda _: rep, node)

    return visit(opt_state)


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Multi-host start-up through jax.distributed: the arguments, or what SLURM / a TPU
    pod slice / Open MPI put in the environment when they are None. On CPU the
    processes talk through gloo (several processes on one machine, as the tests run)."""
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    log.info("jax.distributed: process %d of %d, %d local devices %s; %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             [str(d) for d in jax.local_devices()], jax.device_count())


def set_memory_fraction(fraction: float) -> None:
    """Caps the share of each accelerator's memory JAX's allocator takes (preallocated
    up front on GPU; 0.75 when unset), so a vLLM engine on the same device fits beside
    it. Sets XLA_PYTHON_CLIENT_MEM_FRACTION, which JAX reads once, when its backend
    starts: call this before the first use of any device. 0 leaves JAX's default."""
    if not fraction:
        return
    if not 0 < fraction <= 1:
        raise ValueError(f"jax_memory_fraction={fraction} must be in (0, 1]")
    value = f"{fraction:.3f}".rstrip("0").rstrip(".")
    if _backend_started() and os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") != value:
        raise RuntimeError("jax_memory_fraction must be set before JAX starts its backend "
                           "(before the first jax.devices() or computation)")
    os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = value
    log.info("JAX memory fraction per device: %s", value)


def set_visible_devices(devices: Sequence[int] | None) -> None:
    """Makes JAX open only these of the GPUs this process sees (None: all), so it
    reserves its memory fraction on no GPU that `placement` gives to a service alone.
    JAX reads the option once, when its backend starts: call this before the first use
    of any device. CPU devices are all opened; the mesh picks among them."""
    if devices is None:
        return
    if _backend_started():
        raise RuntimeError("placement.trainer must be applied before JAX starts its backend")
    value = ",".join(str(i) for i in devices)
    for option in ("jax_cuda_visible_devices", "jax_rocm_visible_devices"):
        jax.config.update(option, value)
    log.info("JAX opens GPUs %s", value)


def _backend_started() -> bool:
    """Whether JAX has opened its devices (after which its start-up options are read)."""
    from jax._src import xla_bridge

    return getattr(xla_bridge, "backends_are_initialized", lambda: False)()
