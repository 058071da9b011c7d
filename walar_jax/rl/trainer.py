"""The WALAR GRPO loop: prompts -> Generate (a `Rollout`) -> rewards -> advantages ->
sharded update -> weight sync -> metrics and checkpoints.

The Trainer holds the policy state and the step; it is handed a rollout engine and a
reward function (walar_jax/rl/train.py starts the real services). Tasks are consumed in
a seeded order whose position is checkpointed, so a resumed run sees exactly the prompts
an uninterrupted one would. One optimizer step trains on `train_batch_size` sequences:
several rollout batches when those are smaller, a part of one when larger; in the latter
case the old (and reference) log-probs of the whole rollout batch are computed once,
before its first update, and the unconsumed parts are checkpointed with the state.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax import checkpoint, data, models, prompts
from walar_jax import sharding as shd
from walar_jax.metrics import MetricsWriter, truncate_log
from walar_jax.rl import batch as batch_lib
from walar_jax.rl import grpo
from walar_jax.rl.plan import Plan, make_plan
from walar_jax.rl.rollout import Rollout
from walar_jax.rl.step import LossConfig, logprob_pass, make_optimizer, train_step
from walar_jax.tokenizer import Tokenizer

log = logging.getLogger(__name__)
RewardFn = Callable[[list[dict]], tuple[list[float], dict[str, float]]]


class RolloutVersionError(RuntimeError):
    """The sidecar produced rollouts with weights other than the ones the trainer sent."""


def reward_from_service(client) -> RewardFn:
    """Scores through the reward service; a failed call raises (never a zero reward).
    The service's batch metrics keep their own names, prefixed `reward_`."""
    def score(items):
        batch = client.score(items)
        return batch.rewards, {f"reward_{k}": float(v) for k, v in batch.metrics.items()}
    return score


class Trainer:
    """Owns the policy state; `run()` trains until `plan.total_steps`."""

    def __init__(self, config, workdir: str, *, rollout: Rollout, reward_fn: RewardFn,
                 model_dir: str, plan: Plan | None = None):
        self.c = config
        self.workdir = os.path.abspath(workdir)
        self.rollout = rollout
        self.reward_fn = reward_fn
        self.model_dir = model_dir
        self.plan = plan or make_plan(config, n_devices=jax.device_count())
        self.total_steps = self.plan.total_steps
        self.stream = data.TaskStream(self.plan.tasks, seed=config.seed)
        self._setup_model()
        self._setup_update()
        self.step = 0
        self.weights_version: int | None = None
        self.pending: list[dict[str, np.ndarray]] = []  # train batches not yet used
        self.pending_stats: dict[str, float] = {}
        self.ckpt = checkpoint.Checkpointer(self.workdir, keep=config.keep_checkpoints)
        self._restore()

    # ---------------------------------------------------------------- set-up
    def _setup_model(self):
        c = self.c
        self.mesh = shd.make_mesh(dict(c.mesh))
        self.ctx = shd.ShardingCtx(self.mesh, tuple((k, tuple(v) if isinstance(v, list) else v)
                                                    for k, v in c.sharding_rules))
        log.info("mesh %s over %d devices (%s)", dict(self.mesh.shape), self.mesh.size,
                 jax.default_backend())
        self.tokenizer = Tokenizer(self.model_dir)
        with shd.use_sharding(self.ctx):
            model = models.from_pretrained(self.model_dir, dtype=jnp.dtype(c.model.dtype),
                                           param_dtype=jnp.dtype(c.model.param_dtype),
                                           mesh=self.mesh, remat=c.model.remat)
        self.graphdef, state = nnx.split(model)
        self.params = nnx.to_pure_dict(state)
        self.param_shardings = models.sharding_tree(model, self.mesh)
        self.model_cfg = model.cfg
        self.ref_params = jax.tree.map(jnp.copy, self.params) if c.grpo.kl_coef else None
        self.template = prompts.resolve_template(c.data.template, model.cfg.family)
        eos = self.tokenizer.special.get("eos_token")
        self.eos_id = self.tokenizer.token_to_id(eos) if eos else None
        if c.rollout.eos_on_truncation and self.eos_id is None:
            raise ValueError(f"{self.model_dir}: rollout.eos_on_truncation needs an eos_token "
                             "in tokenizer_config.json")

    def _setup_update(self):
        c, o, g = self.c, self.c.optim, self.c.grpo
        self.tx, self.schedule = make_optimizer(
            o.lr, self.total_steps, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
            warmup_frac=o.warmup_frac, min_lr_ratio=o.min_lr_ratio, clip_norm=o.clip_norm)
        opt_abstract = jax.eval_shape(self.tx.init, self.params)
        self.opt_shardings = shd.optimizer_shardings(opt_abstract, self.params,
                                                     self.param_shardings, self.mesh)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)
        self.loss_cfg = LossConfig(g.clip_low, g.clip_high, g.kl_coef, g.kl_estimator,
                                   g.kl_clamp, g.entropy_coef, g.tis_cap, c.model.logprob_chunk)
        self._batch_sh = jax.sharding.NamedSharding(
            self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
        self._train_step = jax.jit(
            functools.partial(train_step, self.graphdef, self.tx, self.loss_cfg,
                              param_shardings=self.param_shardings),
            in_shardings=(self.param_shardings, self.opt_shardings, self._batch_sh),
            out_shardings=(self.param_shardings, self.opt_shardings, None),
            donate_argnums=(0, 1))
        self._logprobs = jax.jit(
            functools.partial(logprob_pass, self.graphdef, chunk=c.model.logprob_chunk),
            in_shardings=(self.param_shardings, self._batch_sh), out_shardings=self._batch_sh)

    # ----------------------------------------------------------- checkpoints
    def _state(self) -> dict:
        return {"params": self.params, "opt_state": self.opt_state}

    def _restore(self):
        abstract = {"params": checkpoint.abstract_like(self.params, self.param_shardings),
                    "opt_state": checkpoint.abstract_like(self.opt_state, self.opt_shardings)}
        got = self.ckpt.restore_latest(abstract)
        if got is None:
            return
        _, state, meta, self.pending = got
        self.params, self.opt_state = state["params"], state["opt_state"]
        if meta["seed"] != self.c.seed:
            raise ValueError(f"checkpoint was trained with seed {meta['seed']}, "
                             f"config says {self.c.seed}")
        self.step, self.stream.position = meta["step"], meta["data_position"]
        self.pending_stats = meta.get("pending_stats", {})
        truncate_log(os.path.join(self.workdir, "metrics.jsonl"), self.step)
        log.info("resumed from step %d (data position %d, %d pending train batches)",
                 self.step, self.stream.position, len(self.pending))

    def save_checkpoint(self):
        meta = {"step": self.step, "data_position": self.stream.position, "seed": self.c.seed,
                "pending_stats": self.pending_stats}
        self.ckpt.save(self.step, self._state(), meta, self.pending)

    def policy(self):
        return nnx.merge(self.graphdef, self.params)

    def export(self, out_dir: str | None = None) -> str:
        out_dir = out_dir or os.path.join(self.workdir, "hf", f"step_{self.step}")
        models.save_pretrained(self.policy(), out_dir, tokenizer_dir=self.model_dir)
        log.info("exported HF checkpoint to %s", out_dir)
        return out_dir

    # --------------------------------------------------------------- rollouts
    def _prompt_ids(self, tasks: Sequence[data.Task]) -> list[list[int]]:
        limit, out = self.c.rollout.max_prompt_tokens, []
        for t in tasks:
            text = prompts.build_prompt(t.text, t.src_lang, t.tgt_lang, template=self.template,
                                        tokenizer=self.tokenizer)
            ids = self.tokenizer.encode_prompt(text, bos=self.c.data.bos)
            if len(ids) > limit:
                log.warning("prompt of %d tokens cut to rollout.max_prompt_tokens=%d (%s)",
                            len(ids), limit, self.c.rollout.prompt_truncation)
                # right: keep the first tokens (WALAR/OpenRLHF); left: keep the answer cue
                ids = ids[:limit] if self.c.rollout.prompt_truncation == "right" else ids[-limit:]
            out.append(ids)
        return out

    def collect(self) -> tuple[dict, dict]:
        """One rollout batch: generation, rewards, advantages, as host arrays."""
        c, r = self.c, self.c.rollout
        tasks = self.stream.take(c.rollout_batch_prompts)
        t0 = time.perf_counter()
        results = self.rollout.generate(
            self._prompt_ids(tasks), n=r.n, temperature=r.temperature, top_p=r.top_p,
            top_k=r.top_k, max_tokens=r.max_tokens, min_tokens=r.min_tokens,
            seed=c.seed * 1_000_003 + self.stream.position,
            expected_version=self.weights_version, timeout=r.timeout_s)
        t_gen = time.perf_counter() - t0
        versions = {comp.weights_version for res in results for comp in res}
        if versions != {self.weights_version}:
            raise RolloutVersionError(f"rollouts from weights version {sorted(versions)}, "
                                      f"expected {self.weights_version}")
        items, seqs = [], []
        for task, res in zip(tasks, results):
            for comp in res:
                hyp = prompts.extract_translation(comp.text, task.tgt_lang, template=self.template,
                                                  extract=self.c.data.extract)
                items.append({"source": task.text, "hypothesis": hyp,
                              "src_lang": task.src_lang, "tgt_lang": task.tgt_lang})
                seqs.append((res.prompt_token_ids, comp))
        t0 = time.perf_counter()
        rewards, parts = self.reward_fn(items)
        t_reward = time.perf_counter() - t0
        if len(rewards) != len(items) or not all(math.isfinite(x) for x in rewards):
            raise RuntimeError(f"reward function returned {len(rewards)} values (finite: "
                               f"{all(map(math.isfinite, rewards))}) for {len(items)} items")
        adv = grpo.group_advantages(np.asarray(rewards, np.float32), r.n,
                                    scale_by_std=c.grpo.scale_by_std)
        packed = batch_lib.pack(seqs, np.asarray(adv), bucket=r.length_bucket,
                                eos_id=self.eos_id if r.eos_on_truncation else None)
        resp_len = [len(comp.token_ids) for _, comp in seqs]
        stats = {
            "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "reward_max": float(np.max(rewards)), "reward_min": float(np.min(rewards)),
            **parts, "response_len_mean": float(np.mean(resp_len)),
            "truncated_share": float(np.mean([comp.finish_reason == "length" for _, comp in seqs])),
            "time_generate_s": t_gen, "time_reward_s": t_reward,
        }
        return packed, stats

    def make_train_batches(self) -> tuple[list[dict], dict]:
        """Rollouts for the next optimizer step(s), split into train batches, each with
        its old/reference log-probs (from the weights that generated them) and weights."""
        rollouts = [self.collect() for _ in range(self.plan.rollouts_per_update)]
        stats = {k: float(np.mean([s[k] for _, s in rollouts])) for k in rollouts[0][1]}
        parts = batch_lib.split(batch_lib.concat([b for b, _ in rollouts]),
                                self.c.train_batch_size)
        t0 = time.perf_counter()
        out = [self._with_logprobs(p, i) for i, p in enumerate(parts)]
        stats["time_logprobs_s"] = time.perf_counter() - t0
        stats["data_epoch"] = self.stream.epoch
        return out, stats

    def _with_logprobs(self, part: dict, index: int) -> dict:
        g = self.c.grpo
        order = None
        if g.loss_agg == "microbatch_token_mean":  # OpenRLHF's DataLoader shuffles
            rng = np.random.default_rng([self.c.seed, self.stream.position, index])
            order = rng.permutation(len(part["adv"]))
        part = dict(part, w=np.asarray(grpo.token_weights(
            part["mask"], g.loss_agg, group=g.loss_agg_group, order=order)))
        dev = self._device_batch(part)
        with shd.use_sharding(self.ctx):
            old = np.asarray(self._logprobs(self.params, dev).block_until_ready())
            ref = (np.asarray(self._logprobs(self.ref_params, dev).block_until_ready())
                   if self.ref_params is not None else old)
        M, B = old.shape[:2]
        old, ref = old.reshape(M * B, -1), ref.reshape(M * B, -1)
        # the appended EOS has no sampler log-prob: the trainer's stands in for it
        rollout_logp = np.where(part["sampled"] > 0, part["rollout_logp"], old)
        return dict(part, old_logp=old, ref_logp=ref, rollout_logp=rollout_logp)

    # ----------------------------------------------------------------- update
    def _device_batch(self, part: dict) -> dict:
        shaped = batch_lib.micro_batches(part, self.c.micro_batch_size)
        return jax.device_put(shaped, {k: self._batch_sh for k in shaped})

    def update(self, part: dict) -> dict:
        """One optimizer step on one train batch (old/ref log-probs already inside)."""
        dev = self._device_batch({k: v for k, v in part.items() if k != "sampled"})
        sampled = jnp.asarray(batch_lib.micro_batches(part, self.c.micro_batch_size)["sampled"])
        mean_mis, max_mis = grpo.logprob_mismatch(dev["old_logp"], dev["rollout_logp"],
                                                  dev["mask"] * sampled)
        lr = float(self.schedule(self.step))
        with shd.use_sharding(self.ctx):
            self.params, self.opt_state, m = self._train_step(self.params, self.opt_state, dev)
            jax.block_until_ready(self.params)
        self.step += 1
        return {**{k: float(v) for k, v in m.items()}, "lr": lr,
                "logprob_mismatch_mean": float(mean_mis), "logprob_mismatch_max": float(max_mis)}

    def sync_weights(self) -> float:
        """Sends the policy; the sidecar bumps its version only if the weights changed
        (an all-zero-advantage step can leave them identical), and rollouts must then
        carry the version it reports."""
        t0 = time.perf_counter()
        if not hasattr(self, "_engine_dtype"):
            self._engine_dtype = self.rollout.engine_dtype()
        res = self.rollout.update_weights(models.hf_tensors(self.policy(), self._engine_dtype),
                                          transport=self.c.rollout.weight_transport)
        if self.weights_version is not None and res.changed and res.version <= self.weights_version:
            raise RolloutVersionError(f"sidecar version {res.version} did not advance past "
                                      f"{self.weights_version} after new weights")
        self.weights_version = res.version
        return time.perf_counter() - t0

    # ------------------------------------------------------------------- loop
    def run(self, writer: MetricsWriter | None = None) -> None:
        c = self.c
        writer = writer or MetricsWriter(self.workdir, total_steps=self.total_steps,
                                         start_step=self.step, tensorboard=c.tensorboard,
                                         wandb_project=c.wandb_project)
        self.sync_weights()  # the sidecar serves exactly this state (also after a resume)
        try:
            while self.step < self.total_steps:
                metrics = self.train_step()
                writer.write(self.step, metrics)
                if self.step % c.checkpoint_every == 0 or self.step >= self.total_steps:
                    self.save_checkpoint()
                if c.export_every and self.step % c.export_every == 0:
                    self.export()
            self.export(os.path.join(self.workdir, "hf", "final"))
        finally:
            writer.close()

    def train_step(self) -> dict:
        """One optimizer step (generating first when no train batch is pending); the
        weights go to the sidecar once the rollout they trained on is used up."""
        t_start = time.perf_counter()
        stats = {}
        if not self.pending:
            self.pending, stats = self.make_train_batches()
            self.pending_stats = {k: v for k, v in stats.items() if not k.startswith("time_")}
        part = self.pending.pop(0)
        t0 = time.perf_counter()
        m = self.update(part)
        t_update = time.perf_counter() - t0
        t_sync = 0.0 if self.pending else self.sync_weights()
        step_s = time.perf_counter() - t_start
        return {**self.pending_stats, **stats, **m, "time_update_s": t_update,
                "time_sync_s": t_sync, "time_step_s": step_s,
                "tokens_per_s": float(part["seg"].sum()) / step_s,
                "data_position": self.stream.position, "weights_version": self.weights_version}
