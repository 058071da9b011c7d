"""The two sidecar services as train.py and evaluate.py start them: the vLLM rollout
sidecar (rollout env) and the reward service (reward env), each on a free loopback port,
started one after the other and stopped on exit (also on errors and Ctrl-C)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

from walar_jax import launch

log = logging.getLogger(__name__)


def service_flags(section: Mapping) -> list[str]:
    """A config section (`configs/common.py:rollout_server` / `reward_server`) -> the
    service's command-line flags: True/False become --k / --no-k; None and "" are left
    out, so the service's own default applies. train.py and evaluate.py both use it."""
    out = []
    for k, v in section.items():
        if v is None or v == "":
            continue
        if isinstance(v, Mapping) or isinstance(v, (list, tuple, set)):
            raise ValueError(f"service flag {k!r}: {v!r} is not a single value")
        if isinstance(v, bool):
            out.append(f"--{k}" if v else f"--no-{k}")
        else:
            out.append(f"--{k}={v}")
    return out


def rollout_service(model_dir: str, section: Mapping, log_path: str | None,
                    name: str = "rollout") -> launch.Service:
    """`rollout_server.py --model DIR [flags of section]` in the rollout environment
    (not started)."""
    return launch.Service(name, [launch.env_python("rollout"), "rollout_server.py",
                                 "--model", model_dir, *service_flags(section)],
                          log_path=log_path)


def reward_service(section: Mapping, log_path: str | None,
                   name: str = "reward") -> launch.Service:
    """`python -m reward.server [flags of section]` in the reward environment (not started)."""
    return launch.Service(name, [launch.env_python("reward"), "-m", "reward.server",
                                 *service_flags(section)], log_path=log_path)


@contextlib.contextmanager
def started(services: Sequence[launch.Service], timeout_s: float) -> Iterator[dict[str, str]]:
    """Starts `services` in order (start-up is CPU-heavy) and yields {name: address};
    every one of them is stopped on exit, in reverse order."""
    try:
        for svc in services:
            svc.start(timeout_s=timeout_s)
            log.info("%s service listening on %s (log: %s)", svc.name, svc.address, svc.log_path)
        yield {s.name: s.address for s in services}
    finally:
        for svc in reversed(services):
            svc.stop()


@contextlib.contextmanager
def training_services(config, model_dir: str, workdir: str):
    """(rollout, reward) clients for train.py: the configured addresses, or processes
    started here (each in its own environment) and stopped on exit."""
    import os

    from walar_jax.clients import RewardClient, RolloutClient

    to_start: list[launch.Service] = []
    rollout_addr = config.rollout.address
    if not rollout_addr:
        to_start.append(rollout_service(model_dir, config.rollout.server,
                                        os.path.join(workdir, "rollout_server.log")))
    reward_addrs = [a for a in config.reward.addresses if a]
    if not reward_addrs:
        to_start.append(reward_service(config.reward.server,
                                       os.path.join(workdir, "reward_server.log")))
    with started(to_start, timeout_s=config.service_start_timeout_s) as by_name:
        rollout = RolloutClient(rollout_addr or by_name["rollout"],
                                token=config.rollout.token or None)
        reward = RewardClient(reward_addrs or [by_name["reward"]],
                              token=config.reward.token or None, timeout_s=config.reward.timeout_s)
        try:
            yield rollout, reward
        finally:
            rollout.close()
