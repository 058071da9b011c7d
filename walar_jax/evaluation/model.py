"""The model to evaluate as an HF directory: a directory, a hub id, `tiny`, or a step of a
training work directory exported on the fly (Orbax params -> HF safetensors)."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)


def export_step(workdir: str, step: int | None, out_dir: str) -> str:
    """Writes the params of checkpoint `step` (default: the latest) of a training work
    directory as an HF checkpoint in `out_dir` (reused when already there)."""
    import jax.numpy as jnp
    from flax import nnx

    from walar_jax import checkpoint, models
    from walar_jax.launch import resolve_model_path

    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{workdir} is not a training work directory: no config.json")
    steps = checkpoint.steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no Orbax checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"{workdir} has no checkpoint for step {step}; it has {steps}")
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        log.info("using the existing export of step %d in %s", step, out_dir)
        return out_dir
    with open(cfg_path) as f:
        config = json.load(f)
    base_dir = resolve_model_path(config["model"]["path"])
    param_dtype = jnp.dtype(config["model"].get("param_dtype", "float32"))
    # the checkpoint's layout: layers stacked when the run scanned them
    model = models.from_pretrained(base_dir, dtype=param_dtype, param_dtype=param_dtype,
                                   scan_layers=bool(config["model"].get("scan_layers", False)))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    restored, _ = checkpoint.Checkpointer(workdir).restore_params(
        step, checkpoint.abstract_like(params))  # params only, onto this host's devices
    nnx.replace_by_pure_dict(state, restored)
    models.save_pretrained(nnx.merge(graphdef, state), out_dir, tokenizer_dir=base_dir)
    log.info("exported step %d of %s to %s", step, workdir, out_dir)
    return out_dir


def resolve(model: str | None, workdir: str | None, step: int | None, out: str) -> tuple[str, str]:
    """(HF directory, a name for the report) from --model or --workdir/--step."""
    from walar_jax import checkpoint
    from walar_jax.launch import resolve_model_path

    if bool(model) == bool(workdir):
        raise ValueError("give exactly one of --model (HF dir, hub id or 'tiny') and --workdir")
    if model:
        if model == "tiny" or os.path.isdir(model):
            return resolve_model_path(model), model
        if os.path.exists(model) or model.startswith((".", "/")):
            raise FileNotFoundError(f"--model {model!r} is not an HF checkpoint directory")
        try:
            return resolve_model_path(model), model
        except Exception as err:  # offline, unknown or gated id: say which
            raise ValueError(f"--model {model!r} is not a local directory and could not be "
                             f"downloaded from the Hugging Face hub "
                             f"({type(err).__name__}: {err})") from err
    steps = checkpoint.steps(workdir)
    chosen = step if step is not None else (steps[-1] if steps else None)
    out_dir = os.path.join(out, "model", f"step_{chosen}")
    return export_step(workdir, chosen, out_dir), f"{os.path.abspath(workdir)}@{chosen}"
