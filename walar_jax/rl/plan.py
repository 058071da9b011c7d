"""What a run will do, worked out and checked before any service starts: the tasks, the
update schedule (rollouts per optimizer step and the reverse), the number of steps, and
every config value that would otherwise fail minutes later (after vLLM has loaded an 8B
model): batch divisibility, the placement and the mesh against the devices, paths that
must exist."""

from __future__ import annotations

import dataclasses
import logging
import math
import os

from walar_jax import data

log = logging.getLogger(__name__)
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "microbatch_token_mean")
PROMPT_TRUNCATION = ("right", "left")
IS_CORRECTIONS = ("none", "tis", "mask")
# `reward.server.lid_model` names the reward service resolves itself (reward/flores_lid.py)
BUNDLED_LIDS = ("flores26", "lid176")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Plan:
    tasks: tuple[data.Task, ...]
    rollout_seqs: int         # sequences one rollout batch yields
    updates_per_rollout: int  # optimizer steps one rollout batch feeds (>= 1)
    rollouts_per_update: int  # rollout batches one optimizer step consumes (>= 1)
    total_steps: int          # optimizer steps of the run


def make_plan(config, *, n_devices: int | None = None) -> Plan:
    """Reads the data, checks the config, and returns the plan (raises ConfigError)."""
    check(config, n_devices=n_devices)
    c = config
    sources = data.read_sources(list(c.data.paths), input_key=c.data.input_key,
                                lang_key=c.data.lang_key, label_key=c.data.label_key,
                                input_format=c.data.input_format)
    tasks = data.make_tasks(sources, list(c.data.target_langs),
                            targets_per_source=c.data.targets_per_source, seed=c.seed)
    seqs = c.rollout_batch_prompts * c.rollout.n
    updates = max(1, seqs // c.train_batch_size)
    rollouts = max(1, c.train_batch_size // seqs)
    epoch_rollouts = math.ceil(len(tasks) / c.rollout_batch_prompts)
    epoch_steps = max(1, epoch_rollouts * updates // rollouts)
    total = c.total_steps or epoch_steps
    log.info("%d tasks; rollout batch %d x %d = %d sequences, train batch %d: %s; "
             "%d optimizer steps (%s)", len(tasks), c.rollout_batch_prompts, c.rollout.n, seqs,
             c.train_batch_size,
             f"{updates} optimizer steps per rollout" if updates > 1 else
             f"{rollouts} rollouts per optimizer step", total,
             "config" if c.total_steps else "one epoch")
    return Plan(tuple(tasks), seqs, updates, rollouts, total)


def check(config, *, n_devices: int | None = None) -> None:
    """Every check that needs no model and no service."""
    c = config
    _check_batches(c)
    _check_placement(c)
    if n_devices is not None:
        _check_mesh(c, _trainer_device_count(c, n_devices))
    g = c.grpo
    if g.loss_agg not in LOSS_AGGREGATIONS:
        raise ConfigError(f"grpo.loss_agg={g.loss_agg!r}: one of {LOSS_AGGREGATIONS}")
    if g.loss_agg == "microbatch_token_mean" and (
            g.loss_agg_group <= 0 or c.train_batch_size % g.loss_agg_group):
        raise ConfigError(f"grpo.loss_agg_group={g.loss_agg_group} must divide "
                          f"train_batch_size={c.train_batch_size}")
    if c.rollout.prompt_truncation not in PROMPT_TRUNCATION:
        raise ConfigError(f"rollout.prompt_truncation={c.rollout.prompt_truncation!r}: one of "
                          f"{PROMPT_TRUNCATION}")
    if not 0 <= c.rollout.min_tokens <= c.rollout.max_tokens:
        raise ConfigError(f"rollout.min_tokens={c.rollout.min_tokens} must lie in "
                          f"[0, rollout.max_tokens={c.rollout.max_tokens}]")
    if c.rollout.max_staleness < 0:
        raise ConfigError(f"rollout.max_staleness={c.rollout.max_staleness} must be >= 0")
    seqs = c.rollout_batch_prompts * c.rollout.n
    if c.rollout.max_staleness and seqs > c.train_batch_size:
        raise ConfigError(f"rollout.max_staleness={c.rollout.max_staleness} needs each rollout "
                          f"batch ({seqs} sequences) to fit in one optimizer step "
                          f"(train_batch_size={c.train_batch_size}): several updates on one "
                          "stale batch would compound two kinds of off-policyness")
    if c.grpo.is_correction not in IS_CORRECTIONS:
        raise ConfigError(f"grpo.is_correction={c.grpo.is_correction!r}: one of {IS_CORRECTIONS}")
    import jax

    if c.rollout_batch_prompts % jax.process_count():
        raise ConfigError(f"rollout_batch_prompts={c.rollout_batch_prompts} must split evenly "
                          f"over the {jax.process_count()} trainer processes (each generates "
                          "its share on its own sidecars)")
    _check_paths(c)


def _check_batches(c) -> None:
    seqs = c.rollout_batch_prompts * c.rollout.n
    for key, value in (("rollout_batch_prompts", c.rollout_batch_prompts),
                       ("rollout.n", c.rollout.n), ("train_batch_size", c.train_batch_size),
                       ("micro_batch_size", c.micro_batch_size)):
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    if seqs % c.train_batch_size and c.train_batch_size % seqs:
        raise ConfigError(f"train_batch_size={c.train_batch_size} and the rollout batch "
                          f"rollout_batch_prompts x rollout.n = {c.rollout_batch_prompts} x "
                          f"{c.rollout.n} = {seqs} must divide one another")
    if c.train_batch_size % c.micro_batch_size:
        raise ConfigError(f"micro_batch_size={c.micro_batch_size} must divide "
                          f"train_batch_size={c.train_batch_size}")


def device_list(config, key: str) -> tuple[int, ...] | None:
    """`placement.<key>` as device indices; None for "all" / "" (every device this
    process sees) and () for "none"."""
    value = str(config.placement[key]).strip()
    if value in ("all", ""):
        return None
    if value == "none":
        return ()
    try:
        ids = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise ConfigError(f"placement.{key}={value!r}: comma-separated device indices "
                          "(e.g. \"0,1\"), \"all\", \"\" or \"none\"") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"placement.{key}={value!r}: indices must be distinct and >= 0")
    return ids


def trainer_devices(config) -> list:
    """The JAX devices the trainer's mesh spans: on every process, the local devices
    `placement.trainer` names (by their hardware id: the GPU's index, a CPU device's
    number), in jax.devices() order."""
    import jax

    ids = device_list(config, "trainer")
    if ids is None:
        return list(jax.devices())
    if ids == ():
        raise ConfigError("placement.trainer='none': the trainer needs devices")
    local = sorted(d.local_hardware_id for d in jax.local_devices())
    missing = sorted(set(ids) - set(local))
    if missing:
        raise ConfigError(f"placement.trainer={config.placement.trainer!r}: devices {missing} "
                          f"are out of range; this process sees devices {local}")
    return [d for d in jax.devices() if d.local_hardware_id in ids]


def _trainer_device_count(c, n_devices: int) -> int:
    """Devices of the mesh: `n_devices` (all), or the listed ones on every process."""
    return n_devices if device_list(c, "trainer") is None else len(trainer_devices(c))


def _check_placement(c) -> None:
    p = c.placement
    trainer, rollout = device_list(c, "trainer"), device_list(c, "rollout")
    device_list(c, "reward")  # its syntax
    for name in ("rollout", "reward"):
        if [a for a in c[name].addresses if a] and device_list(c, name) is not None:
            raise ConfigError(f"placement.{name}={p[name]!r} is for the {name} service "
                              f"train.py starts; {name}.addresses is set, so leave it \"\"")
    tp = c.rollout.server.get("tensor_parallel_size") or 1
    if rollout and len(rollout) < tp:
        raise ConfigError(f"rollout.server.tensor_parallel_size={tp} needs {tp} GPUs; "
                          f"placement.rollout={p.rollout!r} gives {len(rollout)}")
    # "all" covers every device, the sidecar's included; "" leaves the sidecar's unsaid
    shared = (None if rollout is None else list(rollout) if trainer is None
              else sorted(set(trainer) & set(rollout)))
    if not p.colocate:
        if shared:
            raise ConfigError(f"placement.trainer={p.trainer!r} and placement.rollout="
                              f"{p.rollout!r} share devices {shared}: set placement.colocate="
                              "True (the sidecar sleeps during updates) or separate them")
        return
    if shared == []:
        raise ConfigError(f"placement.colocate=True, but placement.trainer={p.trainer!r} and "
                          f"placement.rollout={p.rollout!r} share no device")
    if c.rollout.max_staleness:
        raise ConfigError(f"placement.colocate=True needs rollout.max_staleness=0 (is "
                          f"{c.rollout.max_staleness}): the sidecar sleeps during each "
                          "update, so no generation can overlap it")
    if p.sleep_level not in (1, 2):
        raise ConfigError(f"placement.sleep_level={p.sleep_level}: 1 or 2")
    if not [a for a in c.rollout.addresses if a] and not c.rollout.server.get(
            "enable_sleep_mode"):
        raise ConfigError("placement.colocate=True needs rollout.server.enable_sleep_mode="
                          "True (the sidecar train.py starts frees its GPU memory during "
                          "updates)")


def _check_mesh(c, n_devices: int) -> None:
    sizes = {k: int(c.mesh[k]) for k in ("data", "fsdp", "tensor")}
    if list(sizes.values()).count(-1) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
        raise ConfigError(f"mesh {sizes}: sizes must be positive, at most one may be -1")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if n_devices % fixed or (-1 not in sizes.values() and fixed != n_devices):
        raise ConfigError(f"mesh {sizes} does not fit the {n_devices} devices of "
                          f"placement.trainer={c.placement.trainer!r}")
    resolved = {k: (n_devices // fixed if v == -1 else v) for k, v in sizes.items()}
    batch_shards = resolved["data"] * resolved["fsdp"]
    if c.micro_batch_size % batch_shards:
        raise ConfigError(f"micro_batch_size={c.micro_batch_size} must be a multiple of "
                          f"mesh.data x mesh.fsdp = {batch_shards} (sequences are sharded "
                          f"over both)")


def _check_paths(c) -> None:
    for p in c.data.paths:
        if not os.path.exists(p):
            raise ConfigError(f"data.paths: {p} does not exist")
    path = c.model.path
    if path != "tiny" and (path.startswith((".", "/")) or os.path.exists(path)):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"model.path={path}: not an HF checkpoint directory "
                              "(no config.json)")
    lid = c.reward.server.get("lid_model")
    # lid None: the service's default, which is on
    if not c.reward.addresses and c.reward.server.get("lid") is not False and lid \
            and lid not in BUNDLED_LIDS and not os.path.isfile(lid):
        raise ConfigError(f"reward.server.lid_model={lid} does not exist (GlotLID: download "
                          "cis-lmu/glotlid's model_v3.bin and point there)")
