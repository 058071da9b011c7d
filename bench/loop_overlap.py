"""The embedded default (configs/tiny.py) with the real sidecar and reward service, the
synchronous loop (rollout.max_staleness=0) against the overlapped one (=1) in the same
run: the trainer pinned to one core, both services to the other (taskset), so overlap
is overlap and not two programs fighting for a core.

    ./walar bench bench/loop_overlap.py [--steps 10] [--chunk 0]

Prints JSON: mean step time of each (the first step, which compiles, left out), their
ratio, and the share of wall time the trainer waited for rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAINER_CORE, SERVICE_CORE = 0, 1


def run(config, workdir: str, clients) -> dict:
    from walar_jax.launch import resolve_model_path
    from walar_jax.rl.trainer import Trainer, reward_from_service

    rollout, reward = clients
    t = Trainer(config, workdir, rollout=rollout, reward_fn=reward_from_service(reward),
                model_dir=resolve_model_path(config.model.path))
    t0 = time.perf_counter()
    t.run()
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steady = rows[1:]
    waited = (rows[-1].get("time_wait_rollout_s") if config.rollout.max_staleness
              else sum(r["time_generate_s"] + r["time_reward_exposed_s"] for r in rows))
    return {
        "max_staleness": config.rollout.max_staleness,
        "step_s_mean": sum(r["time_step_s"] for r in steady) / len(steady),
        "wall_s": wall,
        "wait_share": waited / wall,
        "generate_s_mean": sum(r.get("time_generate_s", 0.0) for r in steady) / len(steady),
        "update_s_mean": sum(r["time_update_s"] for r in steady) / len(steady),
        "staleness": [r["staleness"] for r in rows],
        "reward_mean_last": rows[-1]["reward_mean"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--chunk", type=int, default=0, help="rollout.stream_chunk_prompts")
    args = p.parse_args()
    if os.cpu_count() < 2 or not shutil.which("taskset"):
        sys.exit("needs 2 cores and taskset")
    os.sched_setaffinity(0, {TRAINER_CORE})  # before JAX starts its threads

    from walar_jax import config as cfglib
    from walar_jax import launch, services
    from walar_jax.clients import RewardClient, RolloutClient

    base = cfglib.load("configs/tiny.py", {"total_steps": args.steps, "tensorboard": False,
                                           "checkpoint_every": 1000,
                                           "rollout.stream_chunk_prompts": args.chunk})
    model_dir = launch.resolve_model_path(base.model.path)
    work = tempfile.mkdtemp(prefix="walar-overlap-")
    pin = ["taskset", "-c", str(SERVICE_CORE)]
    roll = services.rollout_service(model_dir, base.rollout.server, f"{work}/rollout.log")
    rew = services.reward_service(base.reward.server, f"{work}/reward.log")
    roll.argv, rew.argv = pin + roll.argv, pin + rew.argv
    results = []
    with roll, rew:
        for staleness in (0, 1):
            c = cfglib.load("configs/tiny.py", {
                "total_steps": args.steps, "tensorboard": False, "checkpoint_every": 1000,
                "rollout.stream_chunk_prompts": args.chunk, "rollout.max_staleness": staleness,
                "rollout.addresses": (roll.address,), "reward.addresses": (rew.address,)})
            clients = (RolloutClient(roll.address), RewardClient([rew.address]))
            results.append(run(c, os.path.join(work, f"s{staleness}"), clients))
    sync, overlapped = results
    print(json.dumps({
        "bench": "loop_overlap", "steps": args.steps, "stream_chunk_prompts": args.chunk,
        "sync": sync, "overlapped": overlapped,
        "step_time_ratio": sync["step_s_mean"] / overlapped["step_s_mean"],
        "wall_ratio": sync["wall_s"] / overlapped["wall_s"],
    }, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
