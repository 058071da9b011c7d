"""The WALAR GRPO loop: prompts -> Generate (sidecar) -> Score (reward service) ->
advantages -> sharded update -> weight sync -> metrics and checkpoints.

Tasks are consumed in a seeded order whose position is checkpointed, so a resumed run
sees exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from walar_jax import data, launch, models, prompts
from walar_jax import sharding as shd
from walar_jax.metrics import MetricsWriter, truncate_log
from walar_jax.tokenizer import Tokenizer
from walar_jax.rl import grpo
from walar_jax.rl.step import LossConfig, logprob_pass, make_optimizer, train_step
from walar_jax.services import (
    reward_service,
    rollout_service,
    service_flags,  # noqa: F401 - re-exported for callers of the trainer module
    started,
)

log = logging.getLogger(__name__)
RewardFn = Callable[[list[dict]], tuple[list[float], dict[str, float]]]


class RolloutVersionError(RuntimeError):
    """The sidecar produced rollouts with weights other than the ones the trainer sent."""


def resolve_model_path(path: str) -> str:
    if path == "tiny":
        from walar_jax.models.tiny import make_tiny_checkpoint

        return make_tiny_checkpoint(str(launch.REPO_ROOT / ".cache" / "tiny_qwen3"))
    return models.resolve_checkpoint(path)


def reward_from_service(client) -> RewardFn:
    """Scores through the reward service; a failed call raises (never a zero reward)."""
    def score(items):
        batch = client.score(items)
        parts = {
            "reward_qe_mean": batch.metrics["mean_qe"],
            "reward_gate_penalised_share": batch.metrics["gate_penalised_share"],
            "reward_align_f1_mean": batch.metrics["mean_align_f1"],
            "reward_bad_items": batch.metrics["n_bad_items"],
            "reward_gate_skipped": batch.metrics["n_gate_skipped"],
        }
        return batch.rewards, parts
    return score


class Trainer:
    """Owns the policy state; `run()` trains until `total_steps`."""

    def __init__(self, config, workdir: str, *, rollout, reward_fn: RewardFn,
                 model_dir: str | None = None):
        self.c = config
        self.workdir = os.path.abspath(workdir)
        self.rollout = rollout
        self.reward_fn = reward_fn
        # main() has already resolved (downloaded) it to start the sidecar from it
        self.model_dir = model_dir or resolve_model_path(config.model.path)
        self._setup_data_and_model()
        self._setup_optimizer()
        self._setup_checkpoints()

    # ---------------------------------------------------------------- set-up
    def _setup_data_and_model(self):
        c = self.c
        self.mesh = shd.make_mesh(dict(c.mesh))
        self.ctx = shd.ShardingCtx(self.mesh, tuple((k, tuple(v) if isinstance(v, list) else v)
                                                    for k, v in c.sharding_rules))
        log.info("mesh %s over %d devices (%s)", dict(self.mesh.shape), self.mesh.size,
                 jax.default_backend())
        self.tokenizer = Tokenizer(self.model_dir)
        dtype = jnp.dtype(c.model.dtype)
        with shd.use_sharding(self.ctx):
            model = models.from_pretrained(self.model_dir, dtype=dtype,
                                           param_dtype=jnp.dtype(c.model.param_dtype),
                                           mesh=self.mesh, remat=c.model.remat)
        self.graphdef, state = nnx.split(model)
        self.params = nnx.to_pure_dict(state)
        self.param_shardings = models.sharding_tree(model, self.mesh)
        self.model_cfg = model.cfg
        self.ref_params = (jax.tree.map(jnp.copy, self.params) if c.grpo.kl_coef else None)
        self.template = (prompts.default_template(model.cfg.family) if c.data.template == "auto"
                         else c.data.template)
        sources = data.read_sources(list(c.data.paths), input_key=c.data.input_key,
                                    lang_key=c.data.lang_key, label_key=c.data.label_key)
        self.tasks = data.make_tasks(sources, list(c.data.target_langs),
                                     targets_per_source=c.data.targets_per_source, seed=c.seed)
        self.stream = data.TaskStream(self.tasks, seed=c.seed)
        seqs = c.rollout_batch_prompts * c.rollout.n
        if seqs % c.train_batch_size and c.train_batch_size % seqs:
            raise ValueError(f"train_batch_size={c.train_batch_size} and rollout batch "
                             f"{c.rollout_batch_prompts} x {c.rollout.n} must divide one another")
        if c.train_batch_size % c.micro_batch_size:
            raise ValueError("micro_batch_size must divide train_batch_size")
        self.updates_per_rollout = max(1, seqs // c.train_batch_size)
        self.rollouts_per_update = max(1, c.train_batch_size // seqs)
        steps_per_epoch = math.ceil(len(self.tasks) / c.rollout_batch_prompts) \
            * self.updates_per_rollout // self.rollouts_per_update
        self.total_steps = c.total_steps or max(1, steps_per_epoch)
        log.info("%d tasks; %d optimizer steps (%s)", len(self.tasks), self.total_steps,
                 "config" if c.total_steps else "one epoch")

    def _setup_optimizer(self):
        o = self.c.optim
        self.tx, self.schedule = make_optimizer(
            o.lr, self.total_steps, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
            warmup_frac=o.warmup_frac, min_lr_ratio=o.min_lr_ratio, clip_norm=o.clip_norm)
        opt_abstract = jax.eval_shape(self.tx.init, self.params)
        self.opt_shardings = shd.optimizer_shardings(opt_abstract, self.params,
                                                     self.param_shardings, self.mesh)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)
        g = self.c.grpo
        self.loss_cfg = LossConfig(g.clip_low, g.clip_high, g.kl_coef, g.kl_estimator, g.loss_agg,
                                   g.entropy_coef, g.tis_cap, self.c.model.logprob_chunk)
        batch_sh = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
        self._batch_sh = batch_sh
        self._train_step = jax.jit(
            functools.partial(train_step, self.graphdef, self.tx, self.loss_cfg,
                              param_shardings=self.param_shardings),
            in_shardings=(self.param_shardings, self.opt_shardings, batch_sh),
            out_shardings=(self.param_shardings, self.opt_shardings, None),
            donate_argnums=(0, 1))
        self._logprobs = jax.jit(
            functools.partial(logprob_pass, self.graphdef, chunk=self.c.model.logprob_chunk),
            in_shardings=(self.param_shardings, batch_sh), out_shardings=batch_sh)
        self.step = 0
        self.weights_version: int | None = None

    def _setup_checkpoints(self):
        opts = ocp.CheckpointManagerOptions(max_to_keep=self.c.keep_checkpoints, create=True,
                                            enable_async_checkpointing=False)
        self.ckpt = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"), options=opts)
        latest = self.ckpt.latest_step()
        if latest is not None:
            self._restore(latest)

    def _restore(self, step: int):
        abstract = {
            "params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                   self.params, self.param_shardings),
            "opt_state": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                      self.opt_state, self.opt_shardings),
        }
        got = self.ckpt.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        self.params, self.opt_state = got.state["params"], got.state["opt_state"]
        meta = got.meta
        self.step = meta["step"]
        self.stream.position = meta["data_position"]
        if meta["seed"] != self.c.seed:
            raise ValueError(f"checkpoint was trained with seed {meta['seed']}, config says {self.c.seed}")
        truncate_log(os.path.join(self.workdir, "metrics.jsonl"), self.step)
        log.info("resumed from step %d (data position %d)", self.step, self.stream.position)

    def save_checkpoint(self):
        meta = {"step": self.step, "data_position": self.stream.position, "seed": self.c.seed}
        self.ckpt.save(self.step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": self.params, "opt_state": self.opt_state}),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.ckpt.wait_until_finished()

    def policy(self):
        return nnx.merge(self.graphdef, self.params)

    def export(self, out_dir: str | None = None) -> str:
        out_dir = out_dir or os.path.join(self.workdir, "hf", f"step_{self.step}")
        models.save_pretrained(self.policy(), out_dir, tokenizer_dir=self.model_dir)
        log.info("exported HF checkpoint to %s", out_dir)
        return out_dir

    # --------------------------------------------------------------- rollouts
    def _prompt_ids(self, tasks: Sequence[data.Task]) -> list[list[int]]:
        out = []
        for t in tasks:
            text = prompts.build_prompt(t.text, t.src_lang, t.tgt_lang, template=self.template,
                                        tokenizer=self.tokenizer)
            ids = self.tokenizer.encode(text)
            if len(ids) > self.c.rollout.max_prompt_tokens:
                ids = ids[-self.c.rollout.max_prompt_tokens:]  # keep the answer cue
                log.warning("prompt of %d tokens truncated to max_prompt_tokens", len(ids))
            out.append(ids)
        return out

    def collect(self) -> tuple[dict, dict]:
        """One rollout batch: generation, rewards, advantages, as host arrays."""
        c, r = self.c, self.c.rollout
        tasks = self.stream.take(c.rollout_batch_prompts)
        t0 = time.perf_counter()
        results = self.rollout.generate(
            self._prompt_ids(tasks), n=r.n, temperature=r.temperature, top_p=r.top_p,
            top_k=r.top_k, max_tokens=r.max_tokens, seed=c.seed * 1_000_003 + self.step,
            expected_version=self.weights_version, timeout=r.timeout_s)
        t_gen = time.perf_counter() - t0
        versions = {comp.weights_version for res in results for comp in res}
        if versions != {self.weights_version}:
            raise RolloutVersionError(f"rollouts from weights version {sorted(versions)}, "
                                      f"expected {self.weights_version}")
        items, seqs = [], []
        for task, res in zip(tasks, results):
            for comp in res:
                hyp = prompts.extract_translation(comp.text, task.tgt_lang)
                items.append({"source": task.text, "hypothesis": hyp,
                              "src_lang": task.src_lang, "tgt_lang": task.tgt_lang})
                seqs.append((res.prompt_token_ids, comp))
        t0 = time.perf_counter()
        rewards, parts = self.reward_fn(items)
        t_reward = time.perf_counter() - t0
        if len(rewards) != len(items) or not all(math.isfinite(x) for x in rewards):
            raise RuntimeError(f"reward function returned {len(rewards)} values for {len(items)} items")
        g = c.grpo
        adv = np.asarray(grpo.group_advantages(np.asarray(rewards, np.float32), r.n,
                                               scale_by_std=g.scale_by_std))
        batch = self._pack(seqs, adv)
        resp_len = [len(comp.token_ids) for _, comp in seqs]
        stats = {
            "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            "reward_max": float(np.max(rewards)), "reward_min": float(np.min(rewards)),
            **parts, "response_len_mean": float(np.mean(resp_len)),
            "truncated_share": float(np.mean([comp.finish_reason == "length" for _, comp in seqs])),
            "time_generate_s": t_gen, "time_reward_s": t_reward,
            "data_epoch": self.stream.epoch,
        }
        return batch, stats

    def _pack(self, seqs, adv) -> dict:
        """Right-padded [S, T] arrays; position t predicts token t+1, so the loss mask and
        the sampler's log-probs sit one position before each response token."""
        bucket = self.c.rollout.length_bucket
        T = max(len(p) + len(comp.token_ids) for p, comp in seqs)
        T = int(math.ceil(T / bucket) * bucket)
        S = len(seqs)
        ids = np.zeros((S, T), np.int32)
        seg = np.zeros((S, T), np.int32)
        mask = np.zeros((S, T), np.float32)
        rlp = np.zeros((S, T), np.float32)
        for i, (p, comp) in enumerate(seqs):
            n_p, n_c = len(p), len(comp.token_ids)
            ids[i, :n_p + n_c] = list(p) + list(comp.token_ids)
            seg[i, :n_p + n_c] = 1
            mask[i, n_p - 1:n_p + n_c - 1] = 1.0
            rlp[i, n_p - 1:n_p + n_c - 1] = comp.logprobs
        return {"ids": ids, "seg": seg, "mask": mask, "rollout_logp": rlp,
                "adv": np.asarray(adv, np.float32)}

    # ----------------------------------------------------------------- update
    def _device_batch(self, batch: dict) -> dict:
        M = len(batch["adv"]) // self.c.micro_batch_size
        shaped = {k: v.reshape(M, self.c.micro_batch_size, *v.shape[1:]) for k, v in batch.items()}
        return jax.device_put(shaped, {k: self._batch_sh for k in shaped})

    def update(self, batch: dict) -> dict:
        """Old/reference log-probs, then one optimizer step per train batch."""
        c = self.c
        metrics: dict[str, float] = {}
        n_train = c.train_batch_size
        for k in range(len(batch["adv"]) // n_train):
            part = {key: v[k * n_train:(k + 1) * n_train] for key, v in batch.items()}
            dev = self._device_batch(part)
            with shd.use_sharding(self.ctx):
                dev["old_logp"] = self._logprobs(self.params, dev).block_until_ready()
                dev["ref_logp"] = (self._logprobs(self.ref_params, dev).block_until_ready()
                                   if self.ref_params is not None else dev["old_logp"])
                mean_mis, max_mis = grpo.logprob_mismatch(dev["old_logp"], dev["rollout_logp"],
                                                          dev["mask"])
                lr = float(self.schedule(self.step))
                self.params, self.opt_state, m = self._train_step(self.params, self.opt_state, dev)
                jax.block_until_ready(self.params)
            self.step += 1
            metrics = {**{k: float(v) for k, v in m.items()}, "lr": lr,
                       "logprob_mismatch_mean": float(mean_mis), "logprob_mismatch_max": float(max_mis)}
        return metrics

    def sync_weights(self) -> float:
        """Sends the policy; the sidecar bumps its version only if the weights changed
        (an all-zero-advantage step can leave them identical), and rollouts must then
        carry the version it reports."""
        t0 = time.perf_counter()
        res = self.rollout.update_weights(self.policy(),
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
                t_start = time.perf_counter()
                rollouts = [self.collect() for _ in range(self.rollouts_per_update)]
                batch = {k: _concat([b[k] for b, _ in rollouts]) for k in rollouts[0][0]}
                stats = {k: float(np.mean([s[k] for _, s in rollouts])) for k in rollouts[0][1]}
                t0 = time.perf_counter()
                m = self.update(batch)
                t_update = time.perf_counter() - t0
                t_sync = self.sync_weights()
                n_tok = float(batch["seg"].sum())
                step_s = time.perf_counter() - t_start
                writer.write(self.step, {**stats, **m, "time_update_s": t_update,
                                         "time_sync_s": t_sync, "time_step_s": step_s,
                                         "tokens_per_s": n_tok / step_s,
                                         "data_position": self.stream.position,
                                         "weights_version": self.weights_version})
                if self.step % c.checkpoint_every == 0 or self.step >= self.total_steps:
                    self.save_checkpoint()
                if c.export_every and self.step % c.export_every == 0:
                    self.export()
            self.export(os.path.join(self.workdir, "hf", "final"))
        finally:
            writer.close()


def _concat(arrays):
    """Stacks rollout batches along sequences; [S, T] arrays are right-padded to one T."""
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    T = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, T - a.shape[1]))) for a in arrays])


@contextlib.contextmanager
def services(config, model_dir: str, workdir: str):
    """Clients for the reward service and the sidecar: the configured addresses, or
    processes started here (each in its own environment) and stopped on exit."""
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
        rollout = RolloutClient(rollout_addr or by_name["rollout"], token=config.rollout.token or None)
        reward = RewardClient(reward_addrs or [by_name["reward"]], token=config.reward.token or None,
                              timeout_s=config.reward.timeout_s)
        yield rollout, reward


def main(config, workdir: str) -> None:
    from walar_jax import config as cfglib

    if config.distributed.initialize:
        d = config.distributed
        shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                                   d.process_id if d.process_id >= 0 else None)
    os.makedirs(workdir, exist_ok=True)
    cfglib.save(config, workdir)
    model_dir = resolve_model_path(config.model.path)
    with services(config, model_dir, workdir) as (rollout, reward):
        trainer = Trainer(config, workdir, rollout=rollout, reward_fn=reward_from_service(reward),
                          model_dir=model_dir)
        trainer.run()
    log.info("done: checkpoints in %s/checkpoints, HF export in %s/hf/final, metrics in "
             "%s/metrics.jsonl (TensorBoard: %s/tensorboard)", workdir, workdir, workdir, workdir)
