"""The real services the e2e tests start themselves (train.py is then given their
addresses): the sidecar on the tiny model and the reward service on the CPU."""

from __future__ import annotations

from walar_jax import launch


def tiny_sidecar(model_dir: str, log_path, name: str = "rollout") -> launch.Service:
    """rollout_server.py on `model_dir` in fp32, 512 tokens of context (not started)."""
    return launch.Service(name, [launch.env_python("rollout"), "rollout_server.py",
                                 "--model", model_dir, "--dtype=float32",
                                 "--max_model_len=512"], log_path=str(log_path))


def cpu_reward(log_path, *flags: str, name: str = "reward") -> launch.Service:
    """The reward service on the embedded default models, on the CPU (not started)."""
    return launch.Service(name, [launch.env_python("reward"), "-m", "reward.server",
                                 "--device=cpu", *flags], log_path=str(log_path))
