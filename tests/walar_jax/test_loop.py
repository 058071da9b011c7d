"""The training loop on the in-process rollout engine (no services): packing, version
checks, the update schedule, checkpoints and exact resume. The same loop against the
real vLLM sidecar and reward service is in test_trainer.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from walar_jax import config as cfglib
from walar_jax import models
from walar_jax.rl import trainer as trainer_lib
from walar_jax.rl.plan import ConfigError, make_plan
from walar_jax.rl.rollout import InProcessRollout, VersionMismatchError


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return InProcessRollout(tiny_dir)


def latin_share(items):
    """Share of ASCII letters/spaces in each hypothesis: a reward a random tiny policy can
    climb, so advantages are non-zero and every update changes the weights."""
    def share(text):
        return sum(ch.isascii() and (ch.isalpha() or ch == " ") for ch in text) / max(len(text), 1)
    return [share(it["hypothesis"]) for it in items], {"calls": 1.0}


def loop_config(tiny_dir, **overrides):
    return cfglib.load("configs/tiny.py", {
        "model.path": tiny_dir, "tensorboard": False, "rollout.max_tokens": 12,
        "optim.lr": 1e-3, "optim.warmup_frac": 0.0, **overrides})


def make_trainer(tiny_dir, workdir, reward_fn=latin_share, **overrides):
    c = loop_config(tiny_dir, **overrides)
    return trainer_lib.Trainer(c, str(workdir), rollout=InProcessRollout(tiny_dir),
                               reward_fn=reward_fn, model_dir=tiny_dir)


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_in_process_engine_log_probs_are_the_policys(tiny_dir, engine):
    res = engine.generate([[5, 6, 7], [9, 10, 11, 12, 13]], n=3, max_tokens=10, min_tokens=10,
                          seed=1)
    model = models.from_pretrained(tiny_dir)
    for r in res:
        for comp in r:
            assert len(comp.token_ids) == 10 and comp.finish_reason == "length"  # min_tokens
            assert not set(comp.token_ids[:-1]) & set(engine.eos)
            ids = jnp.asarray([r.prompt_token_ids + comp.token_ids])
            lp = np.asarray(model.token_logprobs(ids, jnp.roll(ids, -1, axis=1)))[0]
            n_p = len(r.prompt_token_ids)
            np.testing.assert_allclose(comp.logprobs, lp[n_p - 1:n_p - 1 + 10], atol=1e-5)
    again = engine.generate([[5, 6, 7], [9, 10, 11, 12, 13]], n=3, max_tokens=10, min_tokens=10,
                            seed=1)
    assert [c.token_ids for r in again for c in r] == [c.token_ids for r in res for c in r]
    with pytest.raises(VersionMismatchError, match="caller expects 7"):
        engine.generate([[5]], expected_version=7)


def test_weight_push_moves_the_version_only_when_weights_change(tiny_dir):
    engine = InProcessRollout(tiny_dir)
    model = models.from_pretrained(tiny_dir)
    same = engine.update_weights(models.hf_tensors(model))
    assert (same.version, same.changed) == (0, False)
    tensors = dict(models.hf_tensors(model))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2.0
    moved = engine.update_weights(tensors.items())
    assert (moved.version, moved.changed) == (1, True)
    served = dict(models.hf_tensors(nnx_model(engine)))
    np.testing.assert_array_equal(served["model.norm.weight"], tensors["model.norm.weight"])


def nnx_model(engine):
    from flax import nnx
    return nnx.merge(engine.graphdef, engine.state)


def test_two_updates_per_rollout_use_one_old_policy(tiny_dir, tmp_path):
    # 8 prompts x 4 samples = 32 sequences feed two optimizer steps of 16
    t = make_trainer(tiny_dir, tmp_path, rollout_batch_prompts=8, train_batch_size=16,
                     total_steps=4, checkpoint_every=100)
    assert (t.plan.updates_per_rollout, t.plan.rollouts_per_update) == (2, 1)
    t.run()
    r = rows(tmp_path)
    assert [x["step"] for x in r] == [1, 2, 3, 4]  # a row for every optimizer step
    assert [x["data_position"] for x in r] == [8, 8, 16, 16]
    # the first step of a rollout trains on the policy that sampled it (ratio 1); the
    # second on the same old log-probs, after an update: the anchor did not move
    assert r[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert r[2]["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert abs(r[1]["ratio_mean"] - 1.0) > 1e-5 and abs(r[3]["ratio_mean"] - 1.0) > 1e-5
    # weights go out once per rollout, after its last update: both steps of a rollout
    # train on what one engine version sampled
    assert [x["rollout_version"] for x in r] == [0, 0, 1, 1]
    assert t.rollout.updates == 2
    assert [x["reward_calls"] for x in r] == [1.0] * 4


def test_two_rollouts_per_update(tiny_dir, tmp_path):
    t = make_trainer(tiny_dir, tmp_path, train_batch_size=32, total_steps=2)
    assert (t.plan.updates_per_rollout, t.plan.rollouts_per_update) == (1, 2)
    t.run()
    assert [x["data_position"] for x in rows(tmp_path)] == [8, 16]


class CrashAfter:
    """A reward function that fails on its n-th call, like a process dying mid-run."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, items):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return latin_share(items)


def state_leaves(t):
    return [np.asarray(x) for x in jax.tree.leaves({"p": t.params, "o": t.opt_state})]


def test_resume_mid_rollout_equals_the_uninterrupted_run(tiny_dir, tmp_path):
    cfg = dict(rollout_batch_prompts=8, train_batch_size=16, total_steps=6, checkpoint_every=3)
    full = make_trainer(tiny_dir, tmp_path / "full", **cfg)
    initial = [np.asarray(x) for x in jax.tree.leaves(full.params)]
    full.run()
    # rollouts feed steps (1, 2), (3, 4), (5, 6); the checkpoint at step 3 holds step
    # 4's train batch; the third rollout's reward call crashes the run
    broken = make_trainer(tiny_dir, tmp_path / "resumed", reward_fn=CrashAfter(3), **cfg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        broken.run()
    assert broken.step == 4
    resumed = make_trainer(tiny_dir, tmp_path / "resumed", **cfg)
    assert resumed.step == 3 and len(resumed.pending) == 1
    resumed.run()
    a, b = rows(tmp_path / "full"), rows(tmp_path / "resumed")
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    for key in ("data_position", "reward_mean", "loss", "grad_norm"):
        assert [x[key] for x in a] == [x[key] for x in b], key
    for x, y in zip(state_leaves(full), state_leaves(resumed)):
        np.testing.assert_array_equal(x, y)  # params and AdamW moments, bit for bit
    changed = [not np.array_equal(x, np.asarray(y))
               for x, y in zip(initial, jax.tree.leaves(full.params))]
    assert all(changed)  # every tensor moved: the resume test compares real training


def test_rollouts_of_another_version_are_refused(tiny_dir, tmp_path):
    t = make_trainer(tiny_dir, tmp_path, total_steps=1)
    t.sync_weights()
    t.weights_version = 5  # the trainer expects a version the engine does not serve
    with pytest.raises(VersionMismatchError):
        t.collect()

    class Stale(InProcessRollout):
        def generate(self, prompts, **kw):
            kw["expected_version"] = None
            return super().generate(prompts, **kw)

    t.rollout = Stale(tiny_dir)
    with pytest.raises(trainer_lib.RolloutVersionError, match="expected 5"):
        t.collect()


def test_truncated_responses_end_in_eos_and_prompts_cut_on_the_right(tiny_dir, tmp_path):
    t = make_trainer(tiny_dir, tmp_path, total_steps=1, **{"rollout.max_prompt_tokens": 20})
    t.sync_weights()
    task = t.stream.take(1)[0]
    full = t.tokenizer.encode_prompt(trainer_lib.prompts.build_prompt(
        task.text, task.src_lang, task.tgt_lang, template=t.template, tokenizer=t.tokenizer))
    assert len(full) > 20 and t._prompt_ids([task]) == [full[:20]]  # kept from the start
    t.stream.position = 0
    part, _ = t.collect()
    for i in range(len(part["adv"])):
        last = int(np.flatnonzero(part["mask"][i])[-1])
        assert part["ids"][i, last + 1] in t.rollout.eos  # the last trained token is an EOS
        unsampled = (part["mask"][i] > 0) & (part["sampled"][i] == 0)
        assert unsampled.sum() in (0, 1)  # only an appended EOS lacks a sampler log-prob


def test_config_errors_name_the_key(tiny_dir):
    cases = [
        ({"train_batch_size": 24}, "must divide one another"),
        ({"micro_batch_size": 5}, "micro_batch_size=5 must divide train_batch_size=16"),
        ({"data.paths": ("no/such/dir",)}, "data.paths: no/such/dir does not exist"),
        ({"grpo.loss_agg": "mean"}, "grpo.loss_agg='mean'"),
        ({"grpo.loss_agg_group": 5}, "grpo.loss_agg_group=5 must divide"),
        ({"rollout.prompt_truncation": "middle"}, "rollout.prompt_truncation='middle'"),
        ({"model.path": "./nowhere"}, "model.path=./nowhere: not an HF checkpoint"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            make_plan(loop_config(tiny_dir, **overrides))
    with pytest.raises(ConfigError, match="does not fit the 8 devices"):
        make_plan(loop_config(tiny_dir, **{"mesh.fsdp": 3}), n_devices=8)
    with pytest.raises(ConfigError, match="multiple of mesh.data x mesh.fsdp = 16"):
        make_plan(loop_config(tiny_dir, **{"mesh.fsdp": -1}), n_devices=16)


# ---------------------------------------------------------------- bounded staleness
def compare_runs(a, b, keys=("data_position", "reward_mean", "loss", "grad_norm")):
    ra, rb = rows(a), rows(b)
    assert [x["step"] for x in ra] == [x["step"] for x in rb]
    for key in keys:
        assert [x[key] for x in ra] == [x[key] for x in rb], key


def test_staleness_zero_through_the_producer_is_the_synchronous_loop(tiny_dir, tmp_path):
    sync = make_trainer(tiny_dir, tmp_path / "sync", total_steps=3)
    sync.run()
    threaded = make_trainer(tiny_dir, tmp_path / "producer", total_steps=3)
    threaded.use_producer = True
    threaded.run()
    compare_runs(tmp_path / "sync", tmp_path / "producer",
                 ("data_position", "reward_mean", "loss", "grad_norm", "rollout_version",
                  "staleness"))
    for x, y in zip(state_leaves(sync), state_leaves(threaded)):
        np.testing.assert_array_equal(x, y)


def test_staleness_one_trains_one_version_behind(tiny_dir, tmp_path):
    t = make_trainer(tiny_dir, tmp_path, total_steps=5, **{"rollout.max_staleness": 1,
                                                           "grpo.is_correction": "tis"})
    t.run()
    r = rows(tmp_path)
    # rollout j is made with the weights after step j - 1: the first batch has none older
    assert [x["staleness"] for x in r] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [x["rollout_weights_step"] for x in r] == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert [x["data_position"] for x in r] == [4, 8, 12, 16, 20]
    # the sampler's weights are a step old: the importance ratio departs from 1
    assert all(abs(x["is_ratio_mean"] - 1.0) > 1e-6 for x in r[1:])
    assert abs(r[0]["is_ratio_mean"] - 1.0) < 1e-5


def test_a_batch_older_than_the_bound_is_refused(tiny_dir, tmp_path):
    from walar_jax.rl.producer import Made, Producer

    t = make_trainer(tiny_dir, tmp_path, total_steps=5, **{"rollout.max_staleness": 1})
    t.step = 3
    t.producer = Producer(collect=None, install=None, first_index=3, position=0, per_step=1,
                          staleness=1, installed_step=3, version=0)
    t.producer.ready[3] = Made(3, 16, {}, {}, version=1, gen_step=1)  # two steps old
    with pytest.raises(trainer_lib.RolloutVersionError, match="more than rollout.max_stale"):
        t._rollouts_for_step()


def test_resume_with_staleness_one_equals_the_uninterrupted_run(tiny_dir, tmp_path):
    cfg = {"total_steps": 6, "checkpoint_every": 3, "rollout.max_staleness": 1}
    full = make_trainer(tiny_dir, tmp_path / "full", **cfg)
    full.run()
    # the checkpoint at step 3 holds rollout 3 (made with step 2's weights); rollout 4 is
    # made again after the resume; the reward call of rollout 5 crashes the first run
    broken = make_trainer(tiny_dir, tmp_path / "resumed", reward_fn=CrashAfter(6), **cfg)
    with pytest.raises(RuntimeError, match="rollout producer failed"):
        broken.run()
    resumed = make_trainer(tiny_dir, tmp_path / "resumed", **cfg)
    assert resumed.step == 3 and [m.index for m in resumed.saved_rollouts] == [3]
    resumed.run()
    compare_runs(tmp_path / "full", tmp_path / "resumed", ("data_position", "reward_mean",
                                                           "loss", "grad_norm", "staleness"))
    for x, y in zip(state_leaves(full), state_leaves(resumed)):
        np.testing.assert_array_equal(x, y)


def test_streamed_rewards_score_chunks_while_others_generate(tiny_dir, tmp_path):
    import threading

    first_scored = threading.Event()
    lock, arrived = threading.Lock(), []

    class OnlyOneChunkRunsFreely(InProcessRollout):
        """Every chunk but the first to arrive finishes only once a chunk was scored:
        without streamed scoring this would never happen (and the wait fails the test)."""

        def generate(self, prompts, **kw):
            with lock:
                arrived.append(len(arrived))
                me = arrived[-1]
            if me > 0:
                assert first_scored.wait(120), "no chunk was scored while others generated"
            return super().generate(prompts, **kw)

    calls = []

    def reward(items):
        calls.append(len(items))
        first_scored.set()
        return latin_share(items)

    c = loop_config(tiny_dir, **{"rollout.stream_chunk_prompts": 1, "total_steps": 1})
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=OnlyOneChunkRunsFreely(tiny_dir),
                            reward_fn=reward, model_dir=tiny_dir)
    t.sync_weights()
    part, stats = t.collect()
    assert calls == [4, 4, 4, 4] and len(arrived) == 4  # four chunks of 1 prompt x 4 samples
    assert len(part["adv"]) == 16 and stats["reward_calls"] == 1.0
    # the rollout keeps the task order whatever order the chunks came back in, and
    # samples do not depend on the chunking (per-prompt seeds, as vLLM's)
    t.stream.position = 0
    t.rollout = InProcessRollout(tiny_dir)
    whole, _ = trainer_lib.Trainer(
        loop_config(tiny_dir, total_steps=1), str(tmp_path / "whole"), rollout=t.rollout,
        reward_fn=latin_share, model_dir=tiny_dir).collect(version=0)
    for key in ("ids", "mask", "adv"):
        np.testing.assert_array_equal(part[key], whole[key])
    np.testing.assert_allclose(part["rollout_logp"], whole["rollout_logp"], atol=1e-5)


# ------------------------------------------------------------------- supervision
class LatinShareService:
    """The reward service's client interface over latin_share, with a failure switch."""

    def __init__(self, fail_on_call=0):
        self.calls, self.fail_on_call = 0, fail_on_call

    def score(self, items):
        from types import SimpleNamespace

        from walar_jax.clients.common import ServiceUnavailableError

        self.calls += 1
        if self.calls == self.fail_on_call:
            raise ServiceUnavailableError("Reward.Score on 127.0.0.1:1 failed: UNAVAILABLE")
        rewards, metrics = latin_share(items)
        return SimpleNamespace(rewards=rewards, metrics=metrics)


class DiesOnce(InProcessRollout):
    """An engine that fails one Generate call the way a killed sidecar does."""

    def __init__(self, tiny_dir, fail_on_call):
        super().__init__(tiny_dir)
        self.calls, self.fail_on_call = 0, fail_on_call

    def generate(self, prompts, **kw):
        from walar_jax.clients.common import ServiceUnavailableError

        self.calls += 1
        if self.calls == self.fail_on_call:
            raise ServiceUnavailableError("Rollout.Generate on 127.0.0.1:1 failed: UNAVAILABLE")
        return super().generate(prompts, **kw)


class FakeServices:
    """TrainingServices' recovery interface: a "restart" is a fresh engine/service."""

    def __init__(self, tiny_dir, rollout, reward, max_restarts=3):
        self.tiny_dir, self.rollout, self.reward = tiny_dir, rollout, reward
        self.restarts = {"rollout": 0, "reward": 0}
        self.max_restarts = max_restarts

    def recover(self, err):
        from walar_jax.services import SupervisionError

        name = "rollout" if "Generate" in str(err) else "reward"
        self.restarts[name] += 1
        if self.restarts[name] > self.max_restarts:
            raise SupervisionError(f"{name} failed {self.restarts[name]} times: {err}")
        if name == "rollout":
            self.rollout = InProcessRollout(self.tiny_dir)  # a new sidecar: version 0 again
        else:
            self.reward = LatinShareService()
        return [name]


@pytest.mark.parametrize("staleness", [0, 1])
@pytest.mark.parametrize("dead", ["rollout", "reward"])
def test_a_dead_service_is_brought_back_and_the_step_redone(tiny_dir, tmp_path, dead, staleness):
    cfg = {"total_steps": 4, "checkpoint_every": 100, "rollout.max_staleness": staleness}
    full = make_trainer(tiny_dir, tmp_path / "full", **cfg)
    full.run()
    engine = DiesOnce(tiny_dir, 3 if dead == "rollout" else 0)
    reward = LatinShareService(fail_on_call=3 if dead == "reward" else 0)
    services = FakeServices(tiny_dir, engine, reward)
    c = loop_config(tiny_dir, **cfg)
    t = trainer_lib.Trainer(c, str(tmp_path / "flaky"), rollout=engine,
                            reward_fn=trainer_lib.reward_from_service(reward),
                            model_dir=tiny_dir, services=services)
    t.run()
    assert services.restarts[dead] == 1
    compare_runs(tmp_path / "full", tmp_path / "flaky")  # same data, rewards, updates
    for x, y in zip(state_leaves(full), state_leaves(t)):
        np.testing.assert_array_equal(x, y)
    assert rows(tmp_path / "flaky")[-1]["service_restarts"] == 1.0


def test_past_the_restart_bound_the_run_stops_after_a_checkpoint(tiny_dir, tmp_path):
    from walar_jax.services import SupervisionError

    class AlwaysDown(LatinShareService):
        def score(self, items):
            self.fail_on_call = self.calls + 1
            return super().score(items)

    c = loop_config(tiny_dir, total_steps=4, checkpoint_every=100)
    reward = LatinShareService(fail_on_call=3)
    services = FakeServices(tiny_dir, InProcessRollout(tiny_dir), reward, max_restarts=2)
    services.recover_orig = services.recover

    def recover(err):  # every "restarted" reward service is down as well
        out = services.recover_orig(err)
        services.reward = AlwaysDown()
        return out

    services.recover = recover
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=services.rollout,
                            reward_fn=trainer_lib.reward_from_service(reward),
                            model_dir=tiny_dir, services=services)
    with pytest.raises(SupervisionError, match="reward failed 3 times"):
        t.run()
    assert t.step == 2 and os.path.isdir(tmp_path / "checkpoints" / "2")
    assert [x["step"] for x in rows(tmp_path)] == [1, 2]  # step 3 was never scored by default


def test_an_error_the_healthy_services_cannot_explain_stops_the_run(tiny_dir, tmp_path):
    """A service error while both services pass their health checks (recover() finds
    nothing down) is retried a bounded number of times, then raised, never looped on."""
    from walar_jax.clients.common import ServiceUnavailableError

    class AlwaysFails(InProcessRollout):
        def generate(self, prompts, **kw):
            self.calls = getattr(self, "calls", 0) + 1
            raise ServiceUnavailableError("Rollout.Generate on 127.0.0.1:1 failed: UNAVAILABLE")

    class NothingDown(FakeServices):
        def recover(self, err):
            self.asked = getattr(self, "asked", 0) + 1
            return []

    c = loop_config(tiny_dir, total_steps=2, checkpoint_every=100,
                    **{"supervision.max_restarts": 2})
    engine = AlwaysFails(tiny_dir)
    services = NothingDown(tiny_dir, engine, LatinShareService())
    t = trainer_lib.Trainer(c, str(tmp_path), rollout=engine,
                            reward_fn=trainer_lib.reward_from_service(services.reward),
                            model_dir=tiny_dir, services=services)
    with pytest.raises(ServiceUnavailableError, match="UNAVAILABLE"):
        t.run()
    assert services.asked == 3 and engine.calls == 4 and t.step == 0


@pytest.mark.parametrize("ref_dtype", ["", "bfloat16"])
def test_reference_policy_storage_dtype(tiny_dir, tmp_path, ref_dtype):
    """model.ref_dtype: the frozen reference in bf16 (as WALAR's) next to fp32 weights. At
    step 1 the policy is the reference: k3 KL is exactly 0 with an fp32 copy and only
    bf16 rounding with a bf16 one."""
    import jax
    import jax.numpy as jnp

    t = make_trainer(tiny_dir, tmp_path, total_steps=1, checkpoint_every=100,
                     **{"model.ref_dtype": ref_dtype})
    want = jnp.bfloat16 if ref_dtype else jnp.float32
    assert {x.dtype for x in jax.tree.leaves(t.ref_params)} == {jnp.dtype(want)}
    t.run()
    kl = rows(tmp_path)[0]["kl"]
    if ref_dtype:
        assert 0 < kl < 1e-3
    else:
        assert kl == 0.0
