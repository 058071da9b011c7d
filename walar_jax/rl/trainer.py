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

import concurrent.futures as cf
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from protos import reward_metrics
from walar_jax import checkpoint, data, hosts, models, prompts
from walar_jax import sharding as shd
from walar_jax.metrics import MetricsWriter, truncate_log
from walar_jax.rl import batch as batch_lib
from walar_jax.rl import grpo
from walar_jax.rl.plan import Plan, make_plan, trainer_devices
from walar_jax.rl.producer import Made, Producer
from walar_jax.rl.rollout import Rollout
from walar_jax.rl.step import LossConfig, logprob_pass, make_optimizer, train_step
from walar_jax.tokenizer import Tokenizer

log = logging.getLogger(__name__)
RewardFn = Callable[[list[dict]], tuple[list[float], dict[str, float]]]


class RolloutVersionError(RuntimeError):
    """The sidecar produced rollouts with weights other than the ones the trainer sent."""


def reward_from_service(client) -> RewardFn:
    """Scores through the reward service; a failed call raises (never a zero reward).
    Its batch metrics keep the service's names (the trainer logs them as `reward_<name>`)."""
    def score(items):
        batch = client.score(items)
        return batch.rewards, dict(batch.metrics)
    return score


def _merge_reward_metrics(parts: list[dict]) -> dict[str, float]:
    """One rollout's reward metrics from its chunks': the service's are merged exactly
    (protos.reward_metrics); other reward functions' are averaged."""
    if len(parts) == 1:
        return parts[0]
    if parts and all(set(reward_metrics.NAMES) <= set(p) for p in parts):
        return reward_metrics.merge(parts)
    return {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}


class Trainer:
    """Owns the policy state; `run()` trains until `plan.total_steps`."""

    def __init__(self, config, workdir: str, *, rollout: Rollout, reward_fn: RewardFn,
                 model_dir: str, plan: Plan | None = None, services=None):
        """`services` (walar_jax.services.TrainingServices), when given, is asked to bring
        back a failed service; the interrupted step is then redone from its data position."""
        self.c = config
        self.services = services
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
        self._engine_dtype = None
        self.pending: list[dict[str, np.ndarray]] = []  # train batches not yet used
        self.pending_stats: dict[str, float] = {}
        self.next_rollout = 0  # index of the next rollout batch to make
        self.staleness = config.rollout.max_staleness
        # trainer and sidecar share GPUs: the sidecar sleeps across each update (plan
        # refuses a producer then: generation would overlap the update)
        self.colocate = bool(config.placement.colocate)
        self.engine_asleep = False
        # a background producer makes rollouts ahead (staleness 0 through it equals the
        # synchronous loop; tests use that to check the producer)
        self.use_producer = self.staleness > 0
        self.producer: Producer | None = None
        self.saved_rollouts: list[Made] = []  # made before a checkpoint, not yet used
        self._history: dict[int, list] = {}  # step -> weights the producer may still need
        self.ckpt = checkpoint.Checkpointer(self.workdir, keep=config.keep_checkpoints)
        self._restore()

    # ---------------------------------------------------------------- set-up
    def _setup_model(self):
        c = self.c
        self.mesh = shd.make_mesh(dict(c.mesh), devices=trainer_devices(c))
        self.ctx = shd.ShardingCtx(self.mesh, tuple((k, tuple(v) if isinstance(v, list) else v)
                                                    for k, v in c.sharding_rules))
        log.info("mesh %s over %d devices (%s)", dict(self.mesh.shape), self.mesh.size,
                 jax.default_backend())
        self.tokenizer = Tokenizer(self.model_dir)
        with shd.use_sharding(self.ctx):
            model = models.from_pretrained(self.model_dir, mesh=self.mesh,
                                           **models.options_from_config(c.model))
        self.graphdef, state = nnx.split(model)
        self.params = nnx.to_pure_dict(state)
        self.param_shardings = models.sharding_tree(model, self.mesh)
        self.model_cfg = model.cfg
        ref_dtype = jnp.dtype(c.model.get("ref_dtype") or c.model.param_dtype)
        # a copy (the update donates self.params), sharded like the policy
        self.ref_params = (jax.tree.map(lambda x: jnp.copy(x).astype(ref_dtype), self.params)
                           if c.grpo.kl_coef else None)
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
        self.loss_cfg = LossConfig(
            clip_low=g.clip_low, clip_high=g.clip_high, kl_coef=g.kl_coef,
            kl_estimator=g.kl_estimator, kl_clamp=g.kl_clamp, entropy_coef=g.entropy_coef,
            logprob_chunk=c.model.logprob_chunk)
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
        self.next_rollout = meta.get("next_rollout", self.step * self.plan.rollouts_per_update)
        if self.pending and meta.get("max_staleness", 0) != self.staleness:
            raise ValueError(f"checkpoint {self.step} holds batches made with "
                             f"rollout.max_staleness={meta['max_staleness']}; resume with it")
        if meta.get("pending_kind") == "rollouts":
            self.saved_rollouts = [Made(**r, batch=b) for r, b in zip(meta["rollouts"],
                                                                     self.pending)]
            self.pending = []
        if hosts.is_primary():
            truncate_log(os.path.join(self.workdir, "metrics.jsonl"), self.step)
        log.info("resumed from step %d (data position %d, %d pending train batches)",
                 self.step, self.stream.position, len(self.pending))

    def save_checkpoint(self):
        meta = {"step": self.step, "data_position": self.stream.position, "seed": self.c.seed,
                "pending_stats": self.pending_stats, "next_rollout": self.next_rollout,
                "max_staleness": self.staleness, "pending_kind": "train_batches",
                "rollouts": []}
        pending = self.pending
        if self.producer is not None:
            # rollouts made with weights older than these are saved; those made with
            # these weights are made again after a resume (same position, same seed)
            first = (self.step + self.staleness) * self.plan.rollouts_per_update
            saved, meta["data_position"] = self.producer.done_before(first)
            saved = [self._global(m) for m in saved]
            meta.update(next_rollout=first, pending_kind="rollouts", rollouts=[
                {"index": m.index, "end": m.end, "stats": m.stats, "version": m.version,
                 "gen_step": m.gen_step} for m in saved])
            pending = [m.batch for m in saved]
        self.ckpt.save(self.step, self._state(), meta, pending)

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

    def collect(self, version: int | None = None) -> tuple[dict, dict]:
        """One rollout batch from the engine at weights `version` (default: the one the
        trainer synced): generation, rewards, advantages, as host arrays (the whole
        batch on every process, see walar_jax/rl/hosts.py)."""
        return self.globalize(self.collect_local(version))

    def collect_local(self, version: int | None = None) -> dict:
        """This process's share of one rollout batch: its prompts generated on its
        sidecars and scored. Only this touches the engine and the reward service (the
        producer thread runs it); `globalize` joins the processes' shares.

        With rollout.stream_chunk_prompts = m > 0 the share goes out as concurrent
        Generate calls of m prompts, and each chunk is scored as soon as it is back
        while the others still generate, so reward time hides behind generation."""
        c, r = self.c, self.c.rollout
        version = self.weights_version if version is None else version
        tasks = self.stream.take(c.rollout_batch_prompts)
        seed = c.seed * 1_000_003 + self.stream.position
        lo, hi = hosts.share(len(tasks))
        tasks = tasks[lo:hi]
        ids = self._prompt_ids(tasks)
        size = r.stream_chunk_prompts or len(tasks)
        spans = [(a, min(a + size, len(tasks))) for a in range(0, len(tasks), size)]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(len(spans)) as gen, cf.ThreadPoolExecutor(2) as score:
            running = {gen.submit(self._generate, ids[a:b], seed, version): (a, b)
                       for a, b in spans}
            scored = {}
            for fut in cf.as_completed(running):
                a, b = running[fut]
                seqs, items = self._samples(tasks[a:b], fut.result())
                scored[a] = (seqs, items, score.submit(self.reward_fn, items))
            t_gen = time.perf_counter() - t0
            chunks = [scored[a] for a, _ in spans]
            results = [(seqs, items, f.result()) for seqs, items, f in chunks]
        t_reward = time.perf_counter() - t0 - t_gen
        seqs = [x for s, _, _ in results for x in s]
        rewards = np.asarray([x for _, _, (rw, _) in results for x in rw], np.float32)
        n_items = sum(len(items) for _, items, _ in results)
        if len(rewards) != n_items or not np.all(np.isfinite(rewards)):
            raise RuntimeError(f"reward function returned {len(rewards)} values (finite: "
                               f"{bool(np.all(np.isfinite(rewards)))}) for {n_items} items")
        adv = grpo.group_advantages(rewards, r.n, scale_by_std=c.grpo.scale_by_std)
        packed = batch_lib.pack(seqs, np.asarray(adv), bucket=r.length_bucket,
                                eos_id=self.eos_id if r.eos_on_truncation else None)
        info = {"reward": rewards,
                "resp_len": np.asarray([len(comp.token_ids) for _, comp in seqs], np.float32),
                "truncated": np.asarray([comp.finish_reason == "length" for _, comp in seqs],
                                        np.float32)}
        return {"batch": packed, "info": info,
                "reward_metrics": _merge_reward_metrics([m for _, _, (_, m) in results]),
                "times": {"time_generate_s": t_gen, "time_reward_exposed_s": t_reward},
                "version": version}

    def globalize(self, local: dict) -> tuple[dict, dict]:
        """Every process's share joined in process (= prompt) order, and the rollout's
        metrics over the whole batch. Collective: the main thread calls it."""
        joined = hosts.gather_rows({**local["batch"], **local["info"]})
        info = {k: joined.pop(k) for k in local["info"]}
        metrics = _merge_reward_metrics(hosts.gather_values(local["reward_metrics"]))
        rewards = info["reward"]
        stats = {
            "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "reward_max": float(np.max(rewards)), "reward_min": float(np.min(rewards)),
            **{f"reward_{k}": float(v) for k, v in metrics.items()},
            "response_len_mean": float(np.mean(info["resp_len"])),
            "truncated_share": float(np.mean(info["truncated"])),
            **local["times"], "rollout_version": local["version"],
        }
        return joined, stats

    def _generate(self, ids, seed: int, version: int):
        r = self.c.rollout
        results = self.rollout.generate(
            ids, n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
            max_tokens=r.max_tokens, min_tokens=r.min_tokens, seed=seed,
            expected_version=version, timeout=r.timeout_s)
        versions = {comp.weights_version for res in results for comp in res}
        if versions != {version}:
            raise RolloutVersionError(f"rollouts from weights version {sorted(versions)}, "
                                      f"expected {version}")
        return results

    def _samples(self, tasks, results) -> tuple[list, list[dict]]:
        """(prompt ids, completion) pairs and the reward items for them."""
        items, seqs = [], []
        for task, res in zip(tasks, results):
            for comp in res:
                hyp = prompts.extract_translation(comp.text, task.tgt_lang, template=self.template,
                                                  extract=self.c.data.extract)
                items.append({"source": task.text, "hypothesis": hyp,
                              "src_lang": task.src_lang, "tgt_lang": task.tgt_lang})
                seqs.append((res.prompt_token_ids, comp))
        return seqs, items

    def make_train_batches(self, rollouts: list[tuple[dict, dict]], first: int
                           ) -> tuple[list[dict], dict]:
        """Rollouts (first index `first`) for the next optimizer step(s), split into train
        batches, each with its old/reference log-probs (from the current weights: in
        the synchronous loop, the weights that generated them) and loss weights."""
        stats = {k: float(np.mean([s[k] for _, s in rollouts])) for k in rollouts[0][1]}
        parts = batch_lib.split(batch_lib.concat([b for b, _ in rollouts]),
                                self.c.train_batch_size)
        t0 = time.perf_counter()
        out = [self._with_logprobs(p, first, i) for i, p in enumerate(parts)]
        stats["time_logprobs_s"] = time.perf_counter() - t0
        for k in out[0].get("is_stats", {}):
            stats[k] = float(np.mean([o["is_stats"][k] for o in out]))
        for o in out:
            o.pop("is_stats", None)
        return out, stats

    def _with_logprobs(self, part: dict, first: int, index: int) -> dict:
        g = self.c.grpo
        order = None
        if g.loss_agg == "microbatch_token_mean":  # OpenRLHF's DataLoader shuffles
            order = np.random.default_rng([self.c.seed, first, index]).permutation(
                len(part["adv"]))
        part = dict(part, w=np.asarray(grpo.token_weights(
            part["mask"], g.loss_agg, group=g.loss_agg_group, order=order)))
        dev = self._device_batch(part)
        with shd.use_sharding(self.ctx):
            old = hosts.host(self._logprobs(self.params, dev).block_until_ready())
            ref = (hosts.host(self._logprobs(self.ref_params, dev).block_until_ready())
                   if self.ref_params is not None else old)
        M, B = old.shape[:2]
        old, ref = old.reshape(M * B, -1), ref.reshape(M * B, -1)
        # the appended EOS has no sampler log-prob: the trainer's stands in for it
        rollout_logp = np.where(part["sampled"] > 0, part["rollout_logp"], old)
        is_w, is_stats = grpo.is_weights(old, rollout_logp, part["mask"],
                                         mode=g.is_correction, cap=g.tis_cap,
                                         band=tuple(g.is_band))
        return dict(part, old_logp=old, ref_logp=ref, rollout_logp=rollout_logp,
                    is_w=np.asarray(is_w, np.float32),
                    is_stats={k: float(v) for k, v in is_stats.items()})

    # ----------------------------------------------------------------- update
    def _device_batch(self, part: dict) -> dict:
        shaped = batch_lib.micro_batches(part, self.c.micro_batch_size)
        return jax.device_put(shaped, {k: self._batch_sh for k in shaped})

    def update(self, part: dict) -> dict:
        """One optimizer step on one train batch (old/ref log-probs already inside)."""
        dev = self._device_batch({k: v for k, v in part.items() if k != "sampled"})
        # on the host copies: the same on every process, no cross-host array needed
        mean_mis, max_mis = grpo.logprob_mismatch(part["old_logp"], part["rollout_logp"],
                                                  part["mask"] * part["sampled"])
        lr = float(self.schedule(self.step))
        with shd.use_sharding(self.ctx):
            self.params, self.opt_state, m = self._train_step(self.params, self.opt_state, dev)
            jax.block_until_ready(self.params)
        self.step += 1
        return {**{k: float(v) for k, v in m.items()}, "lr": lr,
                "logprob_mismatch_mean": float(mean_mis), "logprob_mismatch_max": float(max_mis)}

    def _engine_tensors(self):
        if self._engine_dtype is None:
            self._engine_dtype = self.rollout.engine_dtype()
        return models.hf_tensors(self.policy(), self._engine_dtype)

    def _install(self, tensors) -> int:
        """Pushes weights; the engine's version moves only if they changed (an
        all-zero-advantage step can leave them identical), and rollouts must then carry
        the version it reports."""
        r = self.c.rollout
        # Delta sync names the content by step (no hash); unchanged weights send an empty
        # delta, so `changed` keeps its meaning.
        delta = (dict(delta=True, delta_max_fraction=r.delta_max_fraction,
                      content_id=f"{self.workdir}:{self.step}") if r.delta_sync else {})
        res = self.rollout.update_weights(tensors, transport=r.weight_transport,
                                          timeout=r.update_timeout_s, **delta)
        if self.weights_version is not None and res.changed and res.version <= self.weights_version:
            raise RolloutVersionError(f"sidecar version {res.version} did not advance past "
                                      f"{self.weights_version} after new weights")
        self.weights_version = res.version
        return res.version

    def _sleep(self) -> float:
        """Colocated: the sidecar frees its GPU memory before an update (a no-op when it
        sleeps already, between the updates of one rollout batch)."""
        if self.engine_asleep:
            return 0.0
        t0 = time.perf_counter()
        self._recovering("putting the sidecar to sleep", lambda: self.rollout.sleep(
            self.c.placement.sleep_level, timeout=self.c.rollout.update_timeout_s))
        self.engine_asleep = True
        return time.perf_counter() - t0

    def _wake_and_sync(self) -> None:
        """Colocated: the sidecar wakes (weights back, KV cache re-made), then serves
        the new weights; a restarted sidecar is awake already (waking is a no-op)."""
        if self.engine_asleep:
            self.rollout.wake_up(timeout=self.c.rollout.update_timeout_s)
            self.engine_asleep = False
        self.sync_weights()

    def sync_weights(self) -> float:
        """Sends the policy as it is now and waits until the engine serves it."""
        t0 = time.perf_counter()
        self._install(self._engine_tensors())
        return time.perf_counter() - t0

    # ------------------------------------------------------------------- loop
    def run(self, writer: MetricsWriter | None = None) -> None:
        c = self.c
        writer = writer or MetricsWriter(self.workdir, total_steps=self.total_steps,
                                         start_step=self.step, tensorboard=c.tensorboard,
                                         wandb_project=c.wandb_project,
                                         enabled=hosts.is_primary())
        try:
            # the engine serves exactly this state (also after a resume)
            self._recovering("the first weight sync", self.sync_weights)
            if self.use_producer:
                self._publish_history(self.step)
                self._start_producer()
            while self.step < self.total_steps:
                metrics = self.train_step()
                writer.write(self.step, metrics)
                if metrics.get("reward_n_gate_skipped", 0) > 0:
                    log.warning("step %d: %d samples scored without the language gate "
                                "(targets the identifier cannot name; reward.allow_ungated)",
                                self.step, int(metrics["reward_n_gate_skipped"]))
                if self.step % c.checkpoint_every == 0 or self.step >= self.total_steps:
                    self.save_checkpoint()
                if c.export_every and self.step % c.export_every == 0:
                    self.export()
            self.export(os.path.join(self.workdir, "hf", "final"))
        finally:
            self._stop_producer()
            writer.close()

    def _recovering(self, what: str, fn, rewind=None):
        """fn(); after a failure of a service the trainer can bring back: the services
        recovered, the engine given the current weights again, `rewind()` (the data
        position back to the start of the step), and fn() again. No step is ever
        scored by a default value: either fn() succeeds or the run stops."""
        unexplained = 0  # failures while every service answered its health check
        while True:
            try:
                return fn()
            except Exception as err:
                if self.services is None or not _recoverable(err):
                    raise
                if unexplained > self.c.supervision.max_restarts:
                    raise  # the services are up: the error is not theirs to fix
                cause = getattr(err, "cause", err)
                log.error("%s failed (%s: %s); recovering the services", what,
                          type(cause).__name__, cause)
                producing = self.producer is not None
                if producing:
                    self._halt_producer()
                elif rewind is not None:
                    rewind()
                try:
                    unexplained = 0 if self.services.recover(cause) else unexplained + 1
                except Exception:
                    if self.step:
                        self.save_checkpoint()
                    raise
                self.rollout = self.services.rollout
                self.reward_fn = reward_from_service(self.services.reward)
                self.weights_version = None
                self._wake_and_sync()  # a restarted sidecar is awake; waking is a no-op
                if producing:
                    self._start_producer()

    def _halt_producer(self) -> None:
        """Stops the producer keeping what it made: a new one goes on after its last
        finished rollout (the one it was making when it failed is made again)."""
        p = self.producer
        self._stop_producer()
        self.saved_rollouts = [p.ready[j] for j in sorted(p.ready)]
        self.next_rollout, self.stream.position = p.next_index, p.ends[p.next_index - 1]

    def _stop_producer(self) -> None:
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stop()

    def _publish_history(self, step: int) -> list:
        """Host weights after `step`, kept while a (re)started producer may need them."""
        tensors = list(self._engine_tensors())
        self._history[step] = tensors
        for old in [s for s in self._history if s < step - self.staleness]:
            del self._history[old]
        return tensors

    def _start_producer(self):
        def collect(version):  # in the producer thread: this process's share only
            return self.collect_local(version), None, self.stream.position

        k = self.plan.rollouts_per_update
        self.producer = Producer(
            collect=collect, install=self._install, first_index=self.next_rollout,
            position=self.stream.position, per_step=k, staleness=self.staleness,
            installed_step=self.step, version=self.weights_version,
            weights=dict(self._history))
        for made in self.saved_rollouts:  # made before the checkpoint with older weights
            self.producer.ready[made.index] = made
        self.saved_rollouts = []
        self.producer.start()

    def _global(self, made: Made) -> Made:
        """A rollout the producer made, joined over the processes (main thread only: the
        gathers are collectives); one restored from a checkpoint is joined already."""
        if made.stats is None:
            made.batch, made.stats = self.globalize(made.batch)
        return made

    def _rollouts_for_step(self) -> tuple[list[tuple[dict, dict]], int, dict]:
        """The rollouts the next step trains on, their first index, and their metrics."""
        k = self.plan.rollouts_per_update
        if self.producer is None:
            first = self.next_rollout
            out = [self.collect() for _ in range(k)]
            self.next_rollout += k
            return out, first, {"staleness": 0.0, "rollout_weights_step": float(self.step)}
        first = self.step * k
        made = [self._global(self.producer.take(first + i)) for i in range(k)]
        behind = [self.step - m.gen_step for m in made]
        if max(behind) > self.staleness:
            raise RolloutVersionError(f"rollouts {[m.index for m in made]} come from the weights "
                                      f"of steps {[m.gen_step for m in made]}: more than "
                                      f"rollout.max_staleness={self.staleness} behind step "
                                      f"{self.step}")
        return ([(m.batch, m.stats) for m in made], first,
                {"staleness": float(np.mean(behind)), "data_position": made[-1].end,
                 "rollout_weights_step": float(np.mean([m.gen_step for m in made])),
                 "time_wait_rollout_s": self.producer.wait_s})

    def train_step(self) -> dict:
        """One optimizer step (generating first when no train batch is pending). In the
        synchronous loop the weights go to the engine once the rollout they trained on
        is used up; with a producer they are published for it after every step."""
        t_start = time.perf_counter()
        stats, extra = {}, {"data_position": self.stream.position}
        if not self.pending:
            mark = (self.next_rollout, self.stream.position)

            def rewind():  # the synchronous loop's: a producer keeps its own place
                self.next_rollout, self.stream.position = mark

            rollouts, first, extra = self._recovering("making rollouts", self._rollouts_for_step,
                                                      rewind)
            self.pending, stats = self.make_train_batches(rollouts, first)
            self.pending_stats = {k: v for k, v in stats.items() if not k.startswith("time_")}
            extra.setdefault("data_position", self.stream.position)
        part = self.pending.pop(0)
        t_sleep = self._sleep() if self.colocate else 0.0
        t0 = time.perf_counter()
        m = self.update(part)
        t_update = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.producer is not None:
            self.producer.publish(self.step, self._publish_history(self.step))
        elif not self.pending:
            self._recovering("the weight sync", self._wake_and_sync)
        t_sync = time.perf_counter() - t0
        step_s = time.perf_counter() - t_start
        if self.colocate:
            extra["time_sleep_s"] = t_sleep
        return {**self.pending_stats, **stats, **m, **extra, "time_update_s": t_update,
                "time_sync_s": t_sync, "time_step_s": step_s,
                "tokens_per_s": float(part["seg"].sum()) / step_s,
                "service_restarts": float(sum(self.services.restarts.values()))
                if self.services is not None else 0.0}


def _recoverable(err: BaseException) -> bool:
    """A failure a restarted (or returned) service can fix: the service unreachable,
    out of time or erroring, or serving other weights than expected. Requests the
    service refused (INVALID_ARGUMENT) or a wrong token are bugs to report instead."""
    from walar_jax.clients.common import AuthenticationError, InvalidRequestError, ServiceError

    err = getattr(err, "cause", err)
    if isinstance(err, (InvalidRequestError, AuthenticationError)):
        return False
    return isinstance(err, (ServiceError, RolloutVersionError))
