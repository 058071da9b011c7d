"""Multi-host on one machine: train.py as 2 processes x 4 fake CPU devices (one global
mesh of 8, gloo collectives), each process with its own sidecar, one shared reward
service, against the 1-process 8-device run: same per-step losses and rewards, data
positions and final weights; the same after a kill -9 of one process and a resume; and
only process 0 writes metrics, config and exports while every process writes its
checkpoint shards."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from walar_jax import launch, models
from tests.walar_jax.e2e_services import cpu_reward, tiny_sidecar

pytestmark = pytest.mark.e2e
STEPS = 3
# Records every file a Python process opens for writing (tensorstore's C++ writes of
# checkpoint shards do not pass through here; their per-process directories show them).
AUDIT = textwrap.dedent("""
    import os, sys
    _log = os.environ.get("WALAR_WRITE_AUDIT")
    if _log:  # the log is opened before the hook exists: writing it raises no event
        _fd = os.open(f"{_log}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        def _hook(event, args):
            if event == "open" and args[0] and isinstance(args[0], (str, bytes)):
                mode, flags = args[1], args[2] if len(args) > 2 else 0
                if (mode and any(m in mode for m in "wax+")) or (flags and flags & 3):
                    os.write(_fd, os.fsencode(args[0]) + b"\\n")
        sys.addaudithook(_hook)
""")



@pytest.fixture(scope="module")
def fleet(tiny_dir, tmp_path_factory):
    """Two sidecars (one per 'host') and one reward service shared by both."""
    logs = tmp_path_factory.mktemp("logs")

    # the language gate off: the tiny random policy's samples then get different
    # rewards, so every step trains and the final weights say something
    reward = cpu_reward(logs / "w.log", "--no_lid")
    with (tiny_sidecar(tiny_dir, logs / "r0.log", name="rollout0") as s0,
          tiny_sidecar(tiny_dir, logs / "r1.log", name="rollout1") as s1, reward):
        yield [s0.address, s1.address], reward.address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_run(tiny_dir, workdir, rollouts, reward, *, processes, audit_dir=None, extra=()):
    """train.py as `processes` processes sharing 8 devices; returns the Popen objects."""
    port = free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}"}
        if audit_dir is not None:
            env["PYTHONPATH"] = f"{audit_dir}{os.pathsep}{env.get('PYTHONPATH', '')}"
            env["WALAR_WRITE_AUDIT"] = str(audit_dir / f"writes.p{i}")
        cmd = [sys.executable, "train.py", "--config=configs/tiny.py", f"--workdir={workdir}",
               f"--config.model.path={tiny_dir}", f"--config.total_steps={STEPS}",
               f"--config.rollout.addresses={tuple(rollouts)!r}",
               f"--config.reward.addresses=('{reward}',)", "--config.tensorboard=True",
               "--config.checkpoint_every=1",
               "--config.reward.allow_ungated=True", *extra]  # its service runs --no_lid
        if processes > 1:
            cmd += ["--config.distributed.initialize=True",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    f"--config.distributed.num_processes={processes}",
                    f"--config.distributed.process_id={i}"]
        log = open(os.path.join(workdir, f"train.{i}.log") if os.path.isdir(workdir)
                   else os.devnull, "a")
        procs.append(subprocess.Popen(cmd, cwd=launch.REPO_ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def finish(procs, timeout=1200):
    codes = [p.wait(timeout=timeout) for p in procs]
    assert codes == [0] * len(procs), codes


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_weights(workdir):
    return dict(models.hf_tensors(models.from_pretrained(os.path.join(workdir, "hf", "final"))))


def assert_same(reference, other):
    a, b = rows(reference), rows(other)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert [r["data_position"] for r in a] == [r["data_position"] for r in b]
    np.testing.assert_allclose([r["reward_mean"] for r in a], [r["reward_mean"] for r in b],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5,
                               atol=1e-7)
    wa, wb = final_weights(reference), final_weights(other)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def reference(tiny_dir, fleet, tmp_path_factory):
    work = tmp_path_factory.mktemp("one_process")
    rollouts, reward = fleet
    # the single process serves the whole batch from the first sidecar
    finish(launch_run(tiny_dir, work, rollouts[:1], reward, processes=1))
    initial = dict(models.hf_tensors(models.from_pretrained(tiny_dir)))
    final = final_weights(work)
    assert all(not np.array_equal(initial[k], final[k]) for k in initial)  # it trained
    return work


def test_two_processes_train_the_same_model_as_one(tiny_dir, fleet, reference, tmp_path):
    rollouts, reward = fleet
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    work = tmp_path / "run"
    work.mkdir()
    start = time.perf_counter()
    finish(launch_run(tiny_dir, work, rollouts, reward, processes=2, audit_dir=audit))
    # the README's figures (a correctness run on 2 shared cores, not a speed claim)
    print(json.dumps({"wall_s_2x4": round(time.perf_counter() - start, 1), **{
        f"step_s_{name}": [round(r["time_step_s"], 2) for r in rows(w)]
        for name, w in (("1x8", reference), ("2x4", work))}}))
    assert_same(reference, work)
    # each process wrote its own checkpoint shards ...
    last = work / "checkpoints" / str(STEPS) / "state"
    assert (last / "ocdbt.process_0").is_dir() and (last / "ocdbt.process_1").is_dir()
    # ... and only process 0 wrote metrics, the config, TensorBoard and the export
    written = {i: [line for f in audit.glob(f"writes.p{i}.*") for line in f.read_text().split()]
               for i in (0, 1)}
    single = ("metrics.jsonl", "config.json", os.sep + "hf" + os.sep, "tensorboard")
    assert any(str(work) in w and any(s in w for s in single) for w in written[0])
    offending = [w for w in written[1] if str(work) in w and any(s in w for s in single)]
    assert not offending, offending


def test_kill_one_process_then_resume_both(tiny_dir, fleet, reference, tmp_path):
    rollouts, reward = fleet
    work = tmp_path / "run"
    work.mkdir()
    procs = launch_run(tiny_dir, work, rollouts, reward, processes=2)
    manifest = work / "checkpoints" / "2" / "walar_manifest.json"
    deadline = time.monotonic() + 900
    while not manifest.exists() and all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "step 2's checkpoint never appeared"
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)  # one host dies mid-run
    procs[1].wait()
    procs[0].send_signal(signal.SIGKILL)  # its peer cannot go on without it
    procs[0].wait()
    assert manifest.exists()
    finish(launch_run(tiny_dir, work, rollouts, reward, processes=2))
    assert_same(reference, work)
