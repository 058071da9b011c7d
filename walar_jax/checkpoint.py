"""The training checkpoint layout, owned here and nowhere else.

`<workdir>/checkpoints/<step>/` is one Orbax composite:
  state:   {"params": ..., "opt_state": ...}, restored straight into shards;
  meta:    JSON {"step", "data_position", "seed", "pending", ...};
  pending: (when meta["pending"] > 0) host arrays of the train batches of a rollout that
           feeds several optimizer steps and was not used up at this step, so a resume
           continues with exactly those batches.
Only committed steps count: a save that died half way leaves Orbax's tmp directory,
which `latest_step` never returns. After each save a manifest (`walar_manifest.json`:
every file's size and CRC-32) is written into the step; `restore_latest` checks it and
the restore itself, and a checkpoint that fails either (a file truncated, missing or
with flipped bytes) is reported by name, moved aside as `<step>.corrupt`, and the
previous complete one is used.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from walar_jax import hosts

log = logging.getLogger(__name__)
DIRNAME = "checkpoints"
MANIFEST = "walar_manifest.json"


class CorruptCheckpointError(RuntimeError):
    """No checkpoint of the work directory could be restored; the message says why."""


def directory(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), DIRNAME)


def steps(workdir: str) -> list[int]:
    """Committed checkpoint steps of a work directory, ascending."""
    d = directory(workdir)
    if not os.path.isdir(d):
        return []
    return sorted(int(name) for name in os.listdir(d) if name.isdigit())


def abstract_like(tree, shardings=None):
    """ShapeDtypeStructs of `tree` (placed like `shardings`, else like the arrays)."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


class Checkpointer:
    """Save / restore of the trainer's state in the layout above."""

    def __init__(self, workdir: str, *, keep: int = 3):
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                            enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(directory(workdir), options=opts)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any],
             pending: list[dict[str, np.ndarray]] = ()) -> None:
        """Writes and commits `state` (params, opt_state), `meta` and the pending batches."""
        items = dict(state=ocp.args.StandardSave(state),
                     meta=ocp.args.JsonSave({**meta, "pending": len(pending)}))
        if pending:
            items["pending"] = ocp.args.StandardSave({str(i): b for i, b in enumerate(pending)})
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()
        hosts.barrier(f"walar-saved-{step}")  # every process's shards are on disk
        if jax.process_index() == 0:
            _write_manifest(os.path.join(self.manager.directory, str(step)))
        hosts.barrier(f"walar-manifest-{step}")

    def restore_latest(self, abstract_state: dict[str, Any]):
        """(step, state, meta, pending) of the newest checkpoint that verifies and
        restores, or None when there is none; corrupt ones are moved aside.

        With several processes, process 0 checks the manifests (and moves bad steps
        aside) and every process restores the step it chose."""
        problems = []
        while True:
            step = hosts.broadcast_int(
                self._first_verified(problems) if jax.process_index() == 0 else 0)
            self.manager.reload()
            if step < 0:
                break
            path = os.path.join(self.manager.directory, str(step))
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as err:  # noqa: BLE001 - any failure means: not this one
                if jax.process_count() > 1:
                    raise  # the processes cannot agree on a fall-back here: report it
                self._reject(path, err, problems)
        if problems:
            raise CorruptCheckpointError("no checkpoint could be restored:\n" + "\n".join(problems))
        return None

    def _first_verified(self, problems: list[str]) -> int:
        """The newest step whose manifest verifies (-1 if none); bad ones moved aside."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = os.path.join(self.manager.directory, str(step))
            try:
                _verify_manifest(path)
                return step
            except Exception as err:  # noqa: BLE001
                self._reject(path, err, problems)
        return -1

    def _reject(self, path: str, err: Exception, problems: list[str]) -> None:
        reason = f"{type(err).__name__}: {str(err)[:500]}"
        log.error("checkpoint %s cannot be restored (%s); trying the previous one", path,
                  reason)
        problems.append(f"{path}: {reason}")
        _move_aside(path)
        self.manager.reload()

    def restore(self, step: int, abstract_state: dict[str, Any]
                ) -> tuple[dict, dict, list[dict[str, np.ndarray]]]:
        """(state, meta, pending batches) of `step`; each array of the state is restored
        into the sharding of its abstract, the pending batches as host arrays."""
        meta = self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if meta.get("pending"):
            items["pending"] = ocp.args.StandardRestore()
        got = self.manager.restore(step, args=ocp.args.Composite(**items))
        pending = [got.pending[str(i)] for i in range(meta.get("pending", 0))]
        return got.state, meta, pending

    def restore_params(self, step: int, abstract_params) -> tuple[Any, dict]:
        """Params only (evaluation, export): the optimizer state is not read."""
        abstract = {"params": abstract_params}
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True),
            meta=ocp.args.JsonRestore()))
        if got.meta["step"] != step:
            raise ValueError(f"checkpoint {step} says it holds step {got.meta['step']}")
        return got.state["params"], got.meta

    def close(self) -> None:
        self.manager.close()


def _file_crcs(step_dir: str) -> dict[str, list[int]]:
    out = {}
    for root, _, files in os.walk(step_dir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel.startswith(MANIFEST):
                continue
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            out[rel] = [os.path.getsize(path), crc]
    return out


def _write_manifest(step_dir: str) -> None:
    crcs = _file_crcs(step_dir)
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(crcs, f)
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def _verify_manifest(step_dir: str) -> None:
    """Raises naming the first file that is missing, truncated or changed. A step saved
    by a process that died before writing the manifest is checked by restoring alone."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        log.warning("%s has no %s: checked by restoring only", step_dir, MANIFEST)
        return
    with open(path) as f:
        want = json.load(f)
    have = _file_crcs(step_dir)
    for rel, (size, crc) in want.items():
        if rel not in have:
            raise FileNotFoundError(f"{rel} is missing")
        if have[rel][0] != size:
            raise ValueError(f"{rel} has {have[rel][0]} bytes, {size} were written")
        if have[rel][1] != crc:
            raise ValueError(f"{rel} does not hold the bytes that were written (CRC-32)")


def _move_aside(step_dir: str) -> None:
    target = f"{step_dir}.corrupt"
    if os.path.exists(target):
        target = f"{step_dir}.corrupt-{int(time.time())}"
    os.replace(step_dir, target)
    log.error("moved %s to %s", step_dir, target)

