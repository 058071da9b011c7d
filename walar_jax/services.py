"""The two sidecar services as train.py and evaluate.py start them: the vLLM rollout
sidecar (rollout env) and the reward service (reward env), each on a free loopback port,
started one after the other and stopped on exit (also on errors and Ctrl-C), each on
the GPUs `placement` gives it (as its CUDA_VISIBLE_DEVICES)."""

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


def device_env(devices: Sequence[int] | None,
                parent: str | None = None) -> dict[str, str]:
    """The environment that gives a child process `devices` (indices of the GPUs this
    process sees; None: the same as this process, (): none). When this process was
    itself given CUDA_VISIBLE_DEVICES (`parent`, default: its environment), the indices
    are positions in it, so the child gets the same physical GPUs."""
    import os

    if devices is None:
        return {}
    parent = os.environ.get("CUDA_VISIBLE_DEVICES") if parent is None else parent
    names = [str(i) for i in devices]
    if parent and parent.strip():
        seen = [x.strip() for x in parent.split(",") if x.strip()]
        bad = [i for i in devices if i >= len(seen)]
        if bad:
            raise ValueError(f"devices {bad} are out of range: this process was given "
                             f"CUDA_VISIBLE_DEVICES={parent} ({len(seen)} GPUs)")
        names = [seen[i] for i in devices]
    return {"CUDA_VISIBLE_DEVICES": ",".join(names)}


def rollout_service(model_dir: str, section: Mapping, log_path: str | None,
                    name: str = "rollout", token: str | None = None,
                    env: Mapping[str, str] | None = None) -> launch.Service:
    """`rollout_server.py --model DIR [flags of section]` in the rollout environment
    (not started); with `token`, every call must carry it; `env` is added to this
    process's environment (see `device_env`)."""
    return launch.Service(name, [launch.env_python("rollout"), "rollout_server.py",
                                 "--model", model_dir, *service_flags(section)],
                          log_path=log_path, token=token, env=dict(env or {}))


def reward_service(section: Mapping, log_path: str | None,
                   name: str = "reward", token: str | None = None,
                   env: Mapping[str, str] | None = None) -> launch.Service:
    """`python -m reward.server [flags of section]` in the reward environment (not started)."""
    return launch.Service(name, [launch.env_python("reward"), "-m", "reward.server",
                                 *service_flags(section)], log_path=log_path, token=token,
                          env=dict(env or {}))


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


def secret(value: str) -> str | None:
    """A token from the config: "env:NAME" reads $NAME and "file:PATH" a file only you
    can read, so it need not stand on a command line (which every user sees in ps)."""
    import os

    if not value:
        return None
    if value.startswith("env:"):
        name = value[4:]
        if not os.environ.get(name):
            raise ValueError(f"token env:{name}: ${name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = value[5:]
        if os.stat(path).st_mode & 0o077:
            raise ValueError(f"token file:{path} must be readable by you alone (chmod 600)")
        with open(path) as f:
            return f.read().strip()
    return value


class SupervisionError(RuntimeError):
    """A service kept failing past its restart bound, or a given address never came back."""


def check_gated(reward, targets, allow: bool, timeout: float | None = 30.0) -> list[str]:
    """The targets among `targets` the reward service's language gate cannot check
    (RewardClient.ungated). Raises ConfigError naming them unless `allow`
    (reward.allow_ungated): scored without a gate, any text in any language passes."""
    from walar_jax.rl.plan import ConfigError

    ungated = reward.ungated(list(targets), timeout=timeout)
    if ungated and not allow:
        raise ConfigError(
            f"data.target_langs {ungated}: the reward service's language identifier has no "
            "label for them, so their outputs would skip the language gate (a copy of the "
            "source or digits would pass); drop them, serve an identifier that names them "
            "(GlotLID), or set reward.allow_ungated=True")
    if ungated:
        log.warning("training into targets without a language gate: %s "
                    "(reward.allow_ungated=True)", ungated)
    return ungated


class TrainingServices:
    """The rollout engine and the reward service of a training run, supervised.

    Each is either a process started here (from its config section, in its own
    environment) or an address from the config. `recover()` is called by the trainer
    after a failed call: a started service that exited or does not answer its health
    check within `supervision.health_timeout_s` is killed and started again (same flags,
    a new port; the clients are rebuilt), at most `supervision.max_restarts` times each;
    a given address is waited for (`supervision.wait_s`), never restarted.
    """

    def __init__(self, config, model_dir: str, workdir: str):
        import os

        import jax

        from walar_jax.rl.plan import device_list

        self.c = config
        self.started: dict[str, launch.Service] = {}
        self.restarts = {"rollout": 0, "reward": 0}
        self.ungated: list[str] = []  # targets scored without a gate (reward.allow_ungated)
        self._make = {}
        # one log per process when several train one model (one per host)
        tag = f".{jax.process_index()}" if jax.process_count() > 1 else ""
        self.env = {n: device_env(device_list(config, n)) for n in ("rollout", "reward")}
        if not [a for a in config.rollout.addresses if a]:
            self._make["rollout"] = lambda: rollout_service(
                model_dir, config.rollout.server,
                os.path.join(workdir, f"rollout_server{tag}.log"), token=launch.new_token(),
                env=self.env["rollout"])
        if not [a for a in config.reward.addresses if a]:
            self._make["reward"] = lambda: reward_service(
                config.reward.server, os.path.join(workdir, f"reward_server{tag}.log"),
                token=launch.new_token(), env=self.env["reward"])
        self.rollout = self.reward = None

    # ------------------------------------------------------------ start, stop
    def __enter__(self) -> TrainingServices:
        try:
            for name in ("rollout", "reward"):  # one after the other: start-up is CPU-heavy
                if name in self._make:
                    self._start(name)
            self._connect("rollout")
            self._connect("reward")
            self.ungated = check_gated(self.reward, self.c.data.target_langs,
                                       self.c.reward.allow_ungated,
                                       timeout=self.c.supervision.health_timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for client in (self.rollout, self.reward):
            if client is not None:
                client.close()
        for svc in reversed(list(self.started.values())):
            svc.stop()

    def build(self, name: str) -> launch.Service:
        """The `name` service as it is (re)started: command line and environment."""
        return self._make[name]()

    def _start(self, name: str) -> None:
        svc = self.build(name)
        svc.start(timeout_s=self.c.service_start_timeout_s)
        self.started[name] = svc
        log.info("%s service listening on %s (log: %s)", name, svc.address, svc.log_path)

    def _connect(self, name: str) -> None:
        from walar_jax.clients import RewardClient, RolloutClient

        c = self.c
        svc = self.started.get(name)
        if name == "rollout":
            if self.rollout is not None:
                self.rollout.close()
            if svc is not None:
                self.rollout = RolloutClient(svc.address, token=svc.token)
            else:  # this process's share of the given sidecars
                from walar_jax.hosts import local_addresses
                from walar_jax.rl.rollout import MultiRollout

                mine = local_addresses([a for a in c.rollout.addresses if a])
                engines = [RolloutClient(a, token=secret(c.rollout.token)) for a in mine]
                self.rollout = engines[0] if len(engines) == 1 else MultiRollout(engines)
        else:
            if self.reward is not None:
                self.reward.close()
            self.reward = RewardClient([svc.address] if svc else
                                       [a for a in c.reward.addresses if a],
                                       token=svc.token if svc else secret(c.reward.token),
                                       timeout_s=c.reward.timeout_s)
        if svc is not None:  # it is the process started here, not whatever took the port
            (self.rollout if name == "rollout" else self.reward).verify_identity(
                timeout=c.supervision.health_timeout_s)

    # --------------------------------------------------------------- recovery
    def healthy(self, name: str) -> bool:
        timeout = self.c.supervision.health_timeout_s
        try:
            if name == "rollout":
                self.rollout.info(timeout=timeout)
            else:
                self.reward.health(timeout=timeout)
            return True
        except Exception as err:  # noqa: BLE001 - any failure of the check means unhealthy
            log.warning("%s service failed its health check: %s", name, err)
            return False

    def recover(self, err: BaseException) -> list[str]:
        """Brings back every service that is down; returns their names (empty when both
        answer, so the failure was not theirs)."""
        recovered = []
        for name in ("rollout", "reward"):
            svc = self.started.get(name)
            if svc is not None and svc.proc.poll() is None and self.healthy(name):
                continue
            if svc is None:
                if not self._wait_for(name):
                    raise SupervisionError(
                        f"the {name} service at its configured address did not answer for "
                        f"{self.c.supervision.wait_s:g}s after: {err}") from err
                self._connect(name)
                recovered.append(name)
                continue
            self.restarts[name] += 1
            if self.restarts[name] > self.c.supervision.max_restarts:
                raise SupervisionError(
                    f"the {name} service failed {self.restarts[name]} times (bound "
                    f"supervision.max_restarts={self.c.supervision.max_restarts}); last: "
                    f"{err}; see {svc.log_path}") from err
            code = svc.proc.poll()
            log.error("%s service %s; restarting it (%d/%d): %s", name,
                      f"exited with code {code}" if code is not None else "does not answer",
                      self.restarts[name], self.c.supervision.max_restarts, err)
            svc.stop(grace_s=0.0)
            self._start(name)
            self._connect(name)
            recovered.append(name)
        return recovered

    def _wait_for(self, name: str) -> bool:
        import time

        end = time.monotonic() + self.c.supervision.wait_s
        while time.monotonic() < end:
            self._connect(name)
            if self.healthy(name):
                return True
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        return False
