"""Placement: which devices each process uses, the plan's refusals, the environment the
services are started with, and colocation (the sidecar asleep across every update) on
the in-process engine, whose sleep mode follows the sidecar's."""

import os
import sys

import jax
import numpy as np
import pytest

from walar_jax import config as cfglib
from walar_jax import launch, models
from walar_jax.rl import plan as plan_lib
from walar_jax.rl import trainer as trainer_lib
from walar_jax.rl.rollout import AsleepError, InProcessRollout
from walar_jax.services import TrainingServices, device_env


from tests.walar_jax.test_loop import latin_share, loop_config, rows

COLOCATE = {"placement.colocate": True, "rollout.server.enable_sleep_mode": True}


def run_loop(tiny_dir, workdir, **overrides):
    """Two rollouts of two updates each; the engine's `events` also get "update" for each
    optimizer step, so sleeps, updates and generations are read off one list."""
    c = loop_config(tiny_dir, rollout_batch_prompts=8, train_batch_size=16, total_steps=4,
                    checkpoint_every=100, **overrides)
    engine = InProcessRollout(tiny_dir)
    t = trainer_lib.Trainer(c, str(workdir), rollout=engine, reward_fn=latin_share,
                            model_dir=tiny_dir)
    update = t.update

    def recorded(part):
        engine.events.append("update")
        assert engine.sleep_level == (c.placement.sleep_level if c.placement.colocate else 0)
        return update(part)

    t.update = recorded
    t.run()
    return t, engine


def test_colocated_sidecar_sleeps_across_every_update_and_trains_the_same(
        tiny_dir, tmp_path):
    off, e_off = run_loop(tiny_dir, tmp_path / "off")
    on, e_on = run_loop(tiny_dir, tmp_path / "on", **COLOCATE)
    # two updates per rollout batch: asleep before the first, awake for the sync after
    # the second, and every generation awake (the engine refuses one while asleep)
    per_rollout = ["generate", "sleep", "update", "update", "wake_up", "update_weights"]
    assert e_on.events == ["update_weights"] + per_rollout * 2
    assert e_off.events == ["update_weights"] + [c for c in per_rollout
                                                if c not in ("sleep", "wake_up")] * 2
    r_off, r_on = rows(tmp_path / "off"), rows(tmp_path / "on")
    assert [x["step"] for x in r_on] == [1, 2, 3, 4]
    for a, b in zip(r_off, r_on):
        same = {k: v for k, v in a.items() if not k.startswith(("time_", "tokens_per_s"))}
        assert {k: b[k] for k in same} == same
        assert "time_sleep_s" in b and "time_sleep_s" not in a
    for x, y in zip(jax.tree.leaves(off.params), jax.tree.leaves(on.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert e_on.updates == e_off.updates == 2 and e_on.sleep_level == 0


def test_in_process_engine_refuses_work_while_asleep(tiny_dir):
    engine = InProcessRollout(tiny_dir)
    tensors = list(models.hf_tensors(models.from_pretrained(tiny_dir)))
    assert engine.sleep(1) == 1 and engine.sleep(2) == 1  # asleep already: stays at 1
    with pytest.raises(AsleepError, match=r"generation refused: the engine is asleep \(level 1"):
        engine.generate([[5, 6]], max_tokens=2)
    with pytest.raises(AsleepError, match="a weight push refused"):
        engine.update_weights(tensors)
    engine.wake_up()
    assert len(engine.generate([[5, 6]], max_tokens=2)[0]) == 1
    engine.sleep(2)
    engine.wake_up()
    with pytest.raises(AsleepError, match="level 2 discarded the weights"):
        engine.generate([[5, 6]], max_tokens=2)
    res = engine.update_weights(tensors)  # the same bytes, installed again
    assert (res.changed, res.version) == (True, 1)
    assert len(engine.generate([[5, 6]], max_tokens=2)[0]) == 1


def check(tiny_dir, **overrides):
    plan_lib.check(loop_config(tiny_dir, **overrides), n_devices=jax.device_count())


@pytest.mark.parametrize("overrides, message", [
    ({**COLOCATE, "placement.trainer": "0,1", "placement.rollout": "2,3"},
     r"placement.colocate=True, but placement.trainer='0,1' and placement.rollout='2,3' "
     "share no device"),
    ({**COLOCATE, "placement.rollout": "none"}, "share no device"),
    ({"placement.trainer": "0,1", "placement.rollout": "1,2"},
     r"share devices \[1\]: set placement.colocate=True"),
    ({"placement.rollout": "0"}, r"placement.trainer='all' and placement.rollout='0' share"),
    ({"placement.trainer": "0,9"}, r"placement.trainer='0,9': devices \[9\] are out of range; "
                                   r"this process sees devices \[0, 1, 2, 3, 4, 5, 6, 7\]"),
    ({"placement.trainer": "0,1", "mesh.fsdp": 4},
     r"does not fit the 2 devices of placement.trainer='0,1'"),
    ({"placement.trainer": "0;1"}, "placement.trainer='0;1': comma-separated device indices"),
    ({"placement.reward": "1,1"}, "placement.reward='1,1': indices must be distinct"),
    ({"placement.trainer": "none"}, "the trainer needs devices"),
    ({**COLOCATE, "rollout.max_staleness": 1}, "placement.colocate=True needs "
                                               r"rollout.max_staleness=0 \(is 1\)"),
    ({"placement.colocate": True}, "needs rollout.server.enable_sleep_mode=True"),
    ({**COLOCATE, "placement.sleep_level": 3}, "placement.sleep_level=3: 1 or 2"),
    ({"placement.trainer": "0,1", "placement.rollout": "2",
      "rollout.server.tensor_parallel_size": 2},
     r"tensor_parallel_size=2 needs 2 GPUs; placement.rollout='2' gives 1"),
    ({"rollout.addresses": ("127.0.0.1:1",), "placement.rollout": "3"},
     "placement.rollout='3' is for the rollout service train.py starts"),
])
def test_plan_refuses_a_placement_that_cannot_work(tiny_dir, overrides, message):
    with pytest.raises(plan_lib.ConfigError, match=message):
        check(tiny_dir, **overrides)


def test_trainer_mesh_spans_the_listed_devices(tiny_dir):
    c = loop_config(tiny_dir, **{"placement.trainer": "4,5,6,7", "placement.rollout": "0,1",
                                 "placement.reward": "2"})
    plan_lib.check(c, n_devices=jax.device_count())
    assert [d.id for d in plan_lib.trainer_devices(c)] == [4, 5, 6, 7]
    # a mesh of the 4 devices fits; 8 of them would not
    with pytest.raises(plan_lib.ConfigError, match="does not fit the 4 devices of"):
        check(tiny_dir, **{"placement.trainer": "4,5,6,7", "mesh.fsdp": 8})


@pytest.mark.parametrize("name", ["qwen3_8b", "llamax3_8b", "translategemma_4b"])
def test_paper_configs_place_walars_layout(name):
    c = cfglib.load(f"configs/{name}.py", {"data.paths": ("data/tiny",),
                                           "reward.server.lid_model": ""})
    p = c.placement
    assert (p.trainer, p.rollout, p.reward, p.colocate) == ("0,1,2,3", "0,1,2,3", "4", True)
    assert c.rollout.server.enable_sleep_mode and c.rollout.server.tensor_parallel_size == 4
    # both shares fit one device with the engine awake, with room for CUDA contexts
    assert c.jax_memory_fraction + c.rollout.server.gpu_memory_utilization <= 0.9
    plan_lib.check(c, n_devices=jax.device_count())  # 8 fake devices: 4 for the trainer
    # the README's 8-GPU layout: the trainer on all 8, the reward beside it on GPU 7
    c.placement.update(trainer="0,1,2,3,4,5,6,7", reward="7")
    c.update({"jax_memory_fraction": 0.5})
    c.rollout.server.gpu_memory_utilization = 0.4
    plan_lib.check(c, n_devices=jax.device_count())


def test_device_env_maps_indices_through_the_parents_visible_devices():
    assert device_env(None, parent="") == {}
    assert device_env((0, 2), parent="") == {"CUDA_VISIBLE_DEVICES": "0,2"}
    assert device_env((), parent="") == {"CUDA_VISIBLE_DEVICES": ""}
    assert device_env((0, 2), parent="4,5,6,7") == {"CUDA_VISIBLE_DEVICES": "4,6"}
    with pytest.raises(ValueError, match=r"devices \[4\] are out of range: this process was "
                                         "given CUDA_VISIBLE_DEVICES=4,5,6,7"):
        device_env((1, 4), parent="4,5,6,7")


PROBE = """import os, sys
args = sys.argv[1:]
out, port_file = args[0], args[args.index("--port_file") + 1]
open(out, "w").write(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
open(port_file, "w").write("1")
import time; time.sleep(60)
"""


def test_started_services_get_their_devices(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4,5,6,7")  # train.py's own GPUs
    c = loop_config(tiny_dir, **{"placement.trainer": "0,1", "placement.rollout": "2,3",
                                 "placement.reward": "4"})
    services = TrainingServices(c, tiny_dir, str(tmp_path))
    rollout, reward = services.build("rollout"), services.build("reward")
    assert rollout.argv[1:3] == ["rollout_server.py", "--model"]
    assert rollout.env == {"CUDA_VISIBLE_DEVICES": "5,6"}
    assert reward.env == {"CUDA_VISIBLE_DEVICES": "7"}
    default = TrainingServices(loop_config(tiny_dir), tiny_dir, str(tmp_path))
    assert default.build("rollout").env == {} == default.build("reward").env
    # what a child started with that environment sees
    out = tmp_path / "seen"
    probe = launch.Service("probe", [sys.executable, "-c", PROBE, str(out)], env=rollout.env)
    with probe:
        assert out.read_text() == "5,6"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,4,5,6,7"  # ours is untouched


def test_trainer_gpus_are_set_before_jax_starts():
    import subprocess

    from walar_jax import sharding as shd

    code = ("from walar_jax import sharding; sharding.set_visible_devices((0, 2)); "
            "from jax._src import xla_bridge as xb; "
            "print(xb.CUDA_VISIBLE_DEVICES.value, xb._ROCM_VISIBLE_DEVICES.value)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=launch.REPO_ROOT)
    assert out.stdout.split() == ["0,2", "0,2"]
    jax.devices()  # started in this process
    with pytest.raises(RuntimeError, match="before JAX starts its backend"):
        shd.set_visible_devices((0,))
    shd.set_visible_devices(None)  # "all": nothing to set
