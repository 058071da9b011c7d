"""The training checkpoint layout, owned here and nowhere else.

`<workdir>/checkpoints/<step>/` is one Orbax composite:
  state:   {"params": ..., "opt_state": ...}, restored straight into shards;
  meta:    JSON {"step", "data_position", "seed", "pending", ...};
  pending: (when meta["pending"] > 0) host arrays of the train batches of a rollout that
           feeds several optimizer steps and was not used up at this step, so a resume
           continues with exactly those batches.
Only committed steps count: a save that died half way leaves Orbax's tmp directory,
which `latest_step` never returns.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
DIRNAME = "checkpoints"


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
