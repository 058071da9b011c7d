"""Chaos: a tiny run through train.py survives kill -9 of the reward service and of the
sidecar mid-run, kill -9 of the trainer during a checkpoint save, and a truncated latest
checkpoint. Each run ends with every step done and the same data positions and rewards
as an uninterrupted run, and leaves no process behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from walar_jax import launch
from tests.walar_jax.e2e_services import cpu_reward, tiny_sidecar

pytestmark = pytest.mark.e2e
STEPS = 4
# the language gate off: the tiny random policy's samples then get different rewards,
# so every step really trains (with it nearly all fail the gate alike)
REWARD_FLAGS = ["--config.reward.server.lid=False", "--config.reward.server.device=cpu"]


@pytest.fixture(scope="module")
def shared(tiny_dir, tmp_path_factory):
    """Services for the runs that are given addresses (train.py does not start them)."""
    logs = tmp_path_factory.mktemp("logs")
    rollout = tiny_sidecar(tiny_dir, logs / "r.log")
    reward = cpu_reward(logs / "w.log", "--no_lid")
    with rollout, reward:
        yield [f"--config.rollout.addresses=('{rollout.address}',)",
               f"--config.reward.addresses=('{reward.address}',)"]


def train_cmd(tiny_dir, workdir, *extra):
    return [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.model.path={tiny_dir}", f"--config.total_steps={STEPS}",
            "--config.tensorboard=False", "--config.service_start_timeout_s=600",
            "--config.reward.allow_ungated=True",  # the gate is off (REWARD_FLAGS)
            *REWARD_FLAGS, *extra]


def rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def service_pids() -> set[int]:
    """Processes started by a launcher (their command lines name a port file)."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"--port_file" in cmd and b"--exit_with_parent" in cmd:
            out.add(int(pid))
    return out


def marked(mark: str) -> list[int]:
    """Live processes that inherited this run's marker (train.py and what it started)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"WALAR_CHAOS_MARK={mark}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(pid))
        except OSError:
            continue
    return out


def children(pid: int, needle: bytes) -> list[int]:
    found = []
    for child in service_pids():
        try:
            with open(f"/proc/{child}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == pid and needle in cmd:
            found.append(child)
    return found


def wait_until(predicate, timeout_s=600.0, what=""):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def same_run(a, b):
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in rb] == list(range(1, STEPS + 1))
    assert [r["data_position"] for r in ra] == [r["data_position"] for r in rb]
    np.testing.assert_allclose([r["reward_mean"] for r in ra], [r["reward_mean"] for r in rb],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([r["loss"] for r in ra], [r["loss"] for r in rb], rtol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, shared, tmp_path_factory):
    work = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_cmd(tiny_dir, work, *shared), check=True, cwd=launch.REPO_ROOT,
                   capture_output=True)
    return work


def test_killed_reward_service_and_sidecar_are_restarted(tiny_dir, uninterrupted, tmp_path):
    """kill -9 of the reward service, then of the sidecar, then a reward service that
    hangs (SIGSTOP): each is brought back and the step redone."""
    mark = uuid.uuid4().hex
    log = open(tmp_path / "train.log", "w")
    # a hung service is noticed through the deadline of the call, then its health check
    cmd = train_cmd(tiny_dir, tmp_path, "--config.reward.timeout_s=30",
                    "--config.supervision.health_timeout_s=5")
    proc = subprocess.Popen(cmd, cwd=launch.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "WALAR_CHAOS_MARK": mark})
    killed = []

    def chaos():
        for after_rows, needle, sig in ((1, b"reward.server", signal.SIGKILL),
                                        (2, b"rollout_server.py", signal.SIGKILL),
                                        (3, b"reward.server", signal.SIGSTOP)):
            wait_until(lambda: len(rows(tmp_path)) >= after_rows or proc.poll() is not None)
            target = children(proc.pid, needle)
            if proc.poll() is None and target:
                os.killpg(target[0], sig)
                killed.append((needle, sig))

    watcher = threading.Thread(target=chaos)
    watcher.start()
    code = proc.wait(timeout=1800)
    watcher.join()
    assert code == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert [n for n, _ in killed] == [b"reward.server", b"rollout_server.py", b"reward.server"]
    same_run(uninterrupted, tmp_path)
    assert rows(tmp_path)[-1]["service_restarts"] == 3.0
    text = (tmp_path / "train.log").read_text()
    assert "reward service does not answer; restarting it" in text  # the SIGSTOPped one
    wait_until(lambda: not marked(mark), 60, "the run's services to exit")


def test_trainer_killed_during_a_save_then_its_latest_checkpoint_truncated(
        tiny_dir, shared, uninterrupted, tmp_path):
    cmd = train_cmd(tiny_dir, tmp_path, *shared, "--config.checkpoint_every=1")
    proc = subprocess.Popen(cmd, cwd=launch.REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "checkpoints"
    wait_until(lambda: len(rows(tmp_path)) >= 2 or proc.poll() is not None, what="step 2")

    def saving():  # a save of step >= 3 under way: only Orbax's tmp directory exists
        return [int(p.name.split(".")[0]) for p in ckpts.glob("*.orbax-checkpoint-tmp*")
                if int(p.name.split(".")[0]) >= 3]

    caught = []
    while proc.poll() is None and not caught:
        caught = saving()
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # kill -9 in the middle of writing that step
    proc.wait()
    assert caught, "the run finished before a save could be caught in progress"
    s = caught[0]
    assert not (ckpts / str(s)).exists() and (ckpts / str(s - 1)).exists()
    # ... and the newest complete checkpoint is damaged as well: the one before is used
    victim = max((p for p in (ckpts / str(s - 1)).rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    res = subprocess.run(cmd, cwd=launch.REPO_ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"checkpoints/{s - 1} cannot be restored" in res.stderr
    assert f"resumed from step {s - 2}" in res.stderr
    same_run(uninterrupted, tmp_path)
