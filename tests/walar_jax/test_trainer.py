"""The GRPO trainer against the real services: vLLM sidecar (rollout env) and the
reward service (reward env), both started once for this module."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from walar_jax import config as cfglib
from walar_jax import launch, models
from walar_jax.rl import trainer as trainer_lib
from tests.walar_jax.e2e_services import cpu_reward, tiny_sidecar

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def services(tiny_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    rollout = tiny_sidecar(tiny_dir, logs / "rollout.log")
    reward = cpu_reward(logs / "reward.log")
    # without the language gate the tiny random policy's samples get different rewards,
    # so updates move the weights (with it, nearly all fail the gate alike)
    ungated = cpu_reward(logs / "reward_ungated.log", "--no_lid", name="reward-ungated")
    with rollout, reward, ungated:
        yield rollout.address, reward.address, ungated.address


def tiny_config(tiny_dir, services, **overrides):
    rollout_addr, reward_addr, _ = services
    return cfglib.load("configs/tiny.py", {
        "model.path": tiny_dir, "rollout.addresses": [rollout_addr],
        "reward.addresses": [reward_addr], "tensorboard": False, **overrides})


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_end_to_end_steps_with_real_services(tiny_dir, services, tmp_path):
    from walar_jax.clients import RewardClient, RolloutClient

    c = tiny_config(tiny_dir, services, total_steps=3, checkpoint_every=2)
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=RolloutClient(services[0]),
                            reward_fn=trainer_lib.reward_from_service(RewardClient([services[1]])),
                            model_dir=tiny_dir)
    t.run()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["data_position"] for r in rows] == [4, 8, 12]
    for r in rows:
        assert 0.0 <= r["reward_gate_penalised_share"] <= 1.0
        assert r["logprob_mismatch_max"] < 1e-3  # sidecar and trainer agree on log-probs
        assert r["grad_norm"] >= 0 and np.isfinite(r["loss"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    exported = models.from_pretrained(str(tmp_path / "hf" / "final"))
    trained = dict(models.hf_tensors(t.policy()))
    for name, arr in models.hf_tensors(exported):
        np.testing.assert_array_equal(arr, trained[name])


def test_failed_reward_call_stops_the_step(tiny_dir, services, tmp_path):
    from walar_jax.clients import RewardClient, RolloutClient
    from walar_jax.clients.common import ServiceUnavailableError

    c = tiny_config(tiny_dir, services, total_steps=2)
    dead = RewardClient(["127.0.0.1:9"], max_attempts=2, base_delay_s=0.01, timeout_s=2)
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=RolloutClient(services[0]),
                            reward_fn=trainer_lib.reward_from_service(dead), model_dir=tiny_dir)
    before = dict(models.hf_tensors(t.policy()))
    with pytest.raises(ServiceUnavailableError):
        t.run()
    assert t.step == 0 and not os.path.exists(tmp_path / "metrics.jsonl")
    for name, arr in models.hf_tensors(t.policy()):
        np.testing.assert_array_equal(arr, before[name])


def latin_share_reward(items):
    """Share of the hypothesis' characters that are ASCII letters or spaces: a reward
    the tiny random policy can reach, so learning is visible in a few dozen steps."""
    def share(text):
        return sum(ch.isascii() and (ch.isalpha() or ch == " ") for ch in text) / max(len(text), 1)
    return [share(it["hypothesis"]) for it in items], {}


def test_reward_rises_through_the_real_update(tiny_dir, services, tmp_path):
    from walar_jax.clients import RolloutClient

    c = tiny_config(tiny_dir, services, total_steps=30, checkpoint_every=100,
                    **{"optim.lr": 2e-3, "optim.warmup_frac": 0.0, "grpo.kl_coef": 0.0,
                       "rollout.max_tokens": 16, "rollout.n": 8, "rollout_batch_prompts": 4,
                       "train_batch_size": 32})
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=RolloutClient(services[0]),
                            reward_fn=latin_share_reward, model_dir=tiny_dir)
    t.run()
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path)]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.2, rewards


def _train_cmd(tiny_dir, services, workdir, steps):
    rollout_addr, _, ungated_addr = services
    return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.model.path={tiny_dir}", f"--config.rollout.addresses=('{rollout_addr}',)",
            f"--config.reward.addresses=('{ungated_addr}',)", f"--config.total_steps={steps}",
            "--config.checkpoint_every=2", "--config.tensorboard=False",
            "--config.reward.allow_ungated=True"]  # the --no_lid service


def _train(cmd):
    """Runs train.py; a failure shows the end of its log."""
    done = subprocess.run(cmd, cwd=launch.REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _final_state(workdir):
    """Params and AdamW state of the run's last checkpoint, as host arrays."""
    import jax
    import orbax.checkpoint as ocp

    from walar_jax import checkpoint

    step = checkpoint.steps(str(workdir))[-1]
    state = ocp.PyTreeCheckpointer().restore(
        os.path.join(checkpoint.directory(str(workdir)), str(step), "state"))
    return step, [np.asarray(x) for x in jax.tree.leaves(state)]


def test_kill_and_resume_continues_with_the_same_data(tiny_dir, services, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _train(_train_cmd(tiny_dir, services, full, 5))
    proc = subprocess.Popen(_train_cmd(tiny_dir, services, killed, 5), cwd=launch.REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "2").exists()
    _train(_train_cmd(tiny_dir, services, killed, 5))
    a, b = read_metrics(full), read_metrics(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert [r["data_position"] for r in a] == [r["data_position"] for r in b]
    # same data, same restored weights, same per-step sampling seeds -> same rewards
    np.testing.assert_allclose([r["reward_mean"] for r in a], [r["reward_mean"] for r in b],
                               atol=1e-6)
    # ... and the same final weights and optimizer state, bit for bit
    (step_a, state_a), (step_b, state_b) = _final_state(full), _final_state(killed)
    assert step_a == step_b == 5
    for x, y in zip(state_a, state_b):
        np.testing.assert_array_equal(x, y)
    initial = dict(models.hf_tensors(models.from_pretrained(tiny_dir)))
    final = dict(models.hf_tensors(models.from_pretrained(str(killed / "hf" / "final"))))
    assert all(not np.array_equal(initial[k], final[k]) for k in initial)  # it trained


def test_two_rollouts_per_update_and_an_unfinished_save_is_never_loaded(tiny_dir, services, tmp_path):
    import shutil

    from walar_jax.clients import RewardClient, RolloutClient

    # rollout batch 4 prompts x 4 samples = 16 sequences; train batch 32 = two rollouts
    c = tiny_config(tiny_dir, services, total_steps=2, checkpoint_every=1, train_batch_size=32)
    clients = dict(rollout=RolloutClient(services[0]),
                   reward_fn=trainer_lib.reward_from_service(RewardClient([services[1]])),
                   model_dir=tiny_dir)
    trainer_lib.Trainer(c, str(tmp_path), **clients).run()
    assert [r["data_position"] for r in read_metrics(tmp_path)] == [8, 16]
    # A crash in the middle of saving step 3 leaves only Orbax's uncommitted tmp dir.
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "2", ckpts / "3.orbax-checkpoint-tmp")
    resumed = trainer_lib.Trainer(c, str(tmp_path), **clients)
    assert resumed.step == 2 and resumed.stream.position == 16
