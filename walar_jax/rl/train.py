"""`train.py`'s body: check the config and plan the run (before any service starts, so a
bad value fails in seconds, not after vLLM has loaded a model), start or reach the
services, then train."""

from __future__ import annotations

import logging
import os

import jax

from walar_jax import config as cfglib
from walar_jax import hosts, launch, services
from walar_jax import sharding as shd
from walar_jax.rl.plan import device_list, make_plan
from walar_jax.rl.trainer import Trainer, reward_from_service

log = logging.getLogger(__name__)


def main(config, workdir: str) -> None:
    # before anything starts JAX's backend (jax.distributed included), or it is too late
    shd.set_memory_fraction(config.jax_memory_fraction)
    shd.set_visible_devices(device_list(config, "trainer"))
    if config.distributed.initialize:
        d = config.distributed
        shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                                   d.process_id if d.process_id >= 0 else None)
    plan = make_plan(config, n_devices=jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    if hosts.is_primary():
        cfglib.save(config, workdir)
    model_dir = launch.resolve_model_path(config.model.path)
    with services.TrainingServices(config, model_dir, workdir) as svc:
        trainer = Trainer(config, workdir, rollout=svc.rollout,
                          reward_fn=reward_from_service(svc.reward), model_dir=model_dir,
                          plan=plan, services=svc)
        trainer.run()
    log.info("done: checkpoints in %s/checkpoints, HF export in %s/hf/final, metrics in "
             "%s/metrics.jsonl (TensorBoard: %s/tensorboard)", workdir, workdir, workdir, workdir)
