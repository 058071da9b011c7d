"""What the trainer needs from a rollout engine, and an in-process one.

`Rollout` is the interface: n samples per prompt tagged with the weights version that
made them, a weight push of HF-named host tensors, the engine's dtype. Two
implementations: `walar_jax.clients.RolloutClient` (the vLLM sidecar over gRPC) and
`InProcessRollout` below, which samples from a JAX copy of the policy in this process.
The loop's logic (packing, version checks, the update schedule, resume) is tested on the
latter in seconds; the real sidecar keeps its end-to-end tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax.clients.rollout import Completion, PromptResult, UpdateResult

Tensors = Iterable[tuple[str, np.ndarray]]
BUCKET = 64  # generation buffers are padded to a multiple of this many tokens


class VersionMismatchError(RuntimeError):
    """A generation asked for weights other than the live ones."""


class AsleepError(RuntimeError):
    """Generate or a weight push while the engine sleeps (the sidecar: FAILED_PRECONDITION)."""


class Rollout(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], *, n: int, temperature: float,
                 top_p: float, top_k: int, max_tokens: int, min_tokens: int, seed: int | None,
                 expected_version: int | None, timeout: float | None) -> list[PromptResult]:
        """n completions per prompt; raw (temperature-1) log-probs of the sampled tokens."""

    def update_weights(self, tensors: Tensors, *, version: int | None = None,
                       transport: str = "shm", timeout: float | None = None) -> UpdateResult:
        """Installs the weights; the version moves only when they changed."""

    def engine_dtype(self) -> np.dtype:
        """The dtype the engine computes in (tensors are sent in it)."""

    def sleep(self, level: int = 1, timeout: float | None = None) -> int:
        """Frees the engine's device memory (vLLM sleep mode) until `wake_up`."""

    def wake_up(self, timeout: float | None = None) -> None:
        """Brings the engine back; a no-op when awake."""


class InProcessRollout:
    """Samples from a JAX copy of the policy loaded from an HF directory.

    Its semantics follow the sidecar's: token ids include the stop token, log-probs are
    the raw policy's, EOS is masked until `min_tokens` tokens exist, a weight push of
    identical tensors keeps the version, and an `expected_version` other than the live
    one is refused. Weights arrive as HF tensors and are loaded back through the same
    HF table as a checkpoint, so the trainer's export path is exercised too. Sleep mode
    is the sidecar's too: while asleep, generation and weight pushes are refused; every
    call is recorded in `events`, so a test can check when the loop slept.
    """

    def __init__(self, model_dir: str, *, eos_token_ids: Sequence[int] | None = None):
        from walar_jax import models
        from walar_jax.tokenizer import Tokenizer

        self.model_dir = model_dir
        self.tokenizer = Tokenizer(model_dir)
        self.eos = tuple(eos_token_ids if eos_token_ids is not None else _eos_ids(model_dir))
        model = models.from_pretrained(model_dir, dtype=jnp.float32)
        self._load(model)
        # version 0 is the checkpoint itself: pushing it again changes nothing
        self.version, self.digest = 0, _digest(models.hf_tensors(model, np.float32))
        self.updates = 0
        self.sleep_level = 0  # 0: awake
        self.discarded = False  # woken from level 2, no weights pushed since
        self.events: list[str] = []  # "generate", "update_weights", "sleep", "wake_up"
        self._step = jax.jit(_sample_step, static_argnames=("graphdef", "top_k", "greedy"))

    def _load(self, model) -> None:
        self.graphdef, self.state = nnx.split(model)

    def engine_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def update_weights(self, tensors: Tensors, *, version: int | None = None,
                       transport: str = "shm", timeout: float | None = None) -> UpdateResult:
        from walar_jax import models
        from walar_jax.models import safetensors_io

        self._check_awake("a weight push")
        self.events.append("update_weights")
        t0 = time.perf_counter()
        arrays = [(name, np.asarray(a)) for name, a in tensors]
        digest = _digest(arrays)
        nbytes = sum(a.nbytes for _, a in arrays)
        if digest == self.digest:
            return UpdateResult(self.version, False, len(arrays), nbytes, 0.0, 0.0, digest, 0.0)
        new_version = self.version + 1 if version is None else version
        if new_version <= self.version:
            raise ValueError(f"version {new_version} is not newer than {self.version}")
        tmp = tempfile.mkdtemp(prefix="walar-inprocess-")
        try:  # load back through the HF table, as a checkpoint directory would be
            shutil.copy(os.path.join(self.model_dir, "config.json"), tmp)
            specs = [(n, a.shape, a.dtype) for n, a in arrays]
            safetensors_io.write_file(os.path.join(tmp, "model.safetensors"), specs,
                                      dict(arrays).__getitem__)
            self._load(models.from_pretrained(tmp, dtype=jnp.float32))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.version, self.digest, self.discarded = new_version, digest, False
        self.updates += 1
        return UpdateResult(new_version, True, len(arrays), nbytes, 0.0,
                            time.perf_counter() - t0, digest, 0.0)

    def generate(self, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, max_tokens: int = 16, min_tokens: int = 0,
                 seed: int | None = None, expected_version: int | None = None,
                 timeout: float | None = None) -> list[PromptResult]:
        self._check_awake("generation")
        self.events.append("generate")
        if expected_version is not None and expected_version != self.version:
            raise VersionMismatchError(f"weights version {self.version} is live, caller "
                                       f"expects {expected_version}")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        rows = [list(p) for p in prompts for _ in range(n)]
        lengths = np.array([len(r) for r in rows], np.int32)
        width = -(-(int(lengths.max()) + max_tokens) // BUCKET) * BUCKET  # few compilations
        buf = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            buf[i, :len(r)] = r
        # like vLLM's per-request generators: a sample depends on the seed, its prompt and
        # its index among the prompt's n, not on what else is in the call
        base = jax.random.PRNGKey(seed or 0)
        keys = jnp.stack([jax.random.fold_in(base, i % n) for i in range(len(rows))])
        tokens, logps, finish = _decode(
            self, buf, lengths, max_tokens=max_tokens, min_tokens=min_tokens,
            sampling=(temperature, top_p, top_k), keys=keys)
        out = []
        for p_idx, prompt in enumerate(prompts):
            comps = []
            for i in range(p_idx * n, (p_idx + 1) * n):
                ids = tokens[i]
                comps.append(Completion(ids, self.tokenizer.decode(ids), logps[i], finish[i],
                                        self.version))
            out.append(PromptResult(list(prompt), comps))
        return out

    def _check_awake(self, what: str) -> None:
        if self.sleep_level:
            raise AsleepError(f"{what} refused: the engine is asleep (level "
                              f"{self.sleep_level}); call wake_up first")
        if self.discarded and what == "generation":
            raise AsleepError("generation refused: sleep level 2 discarded the weights; "
                              "push weights first")

    def sleep(self, level: int = 1, timeout: float | None = None) -> int:
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self.events.append("sleep")
        self.sleep_level = self.sleep_level or level
        return self.sleep_level

    def wake_up(self, timeout: float | None = None) -> None:
        self.events.append("wake_up")
        if self.sleep_level == 2:  # as vLLM's: the weights are gone, a push must restore them
            self.digest, self.discarded = "", True
        self.sleep_level = 0

    def close(self) -> None:
        pass


def _decode(engine: InProcessRollout, buf, lengths, *, max_tokens, min_tokens, sampling, keys):
    """Token-by-token sampling over a fixed [B, L] buffer (causal: later slots are unseen)."""
    temperature, top_p, top_k = sampling
    B = buf.shape[0]
    eos = np.array(engine.eos or (-1,), np.int32)
    tokens = [[] for _ in range(B)]
    logps = [[] for _ in range(B)]
    finish = ["length"] * B
    active = np.ones(B, bool)
    lengths = lengths.copy()
    for t in range(max_tokens):
        tok, lp = engine._step(
            engine.state, jnp.asarray(buf), jnp.asarray(lengths), keys, jnp.int32(t),
            jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.asarray(eos),
            jnp.bool_(t < min_tokens), graphdef=engine.graphdef, top_k=int(top_k),
            greedy=temperature == 0.0)
        tok, lp = np.asarray(tok), np.asarray(lp)
        for i in np.flatnonzero(active):
            tokens[i].append(int(tok[i]))
            logps[i].append(float(lp[i]))
            buf[i, lengths[i]] = tok[i]
            lengths[i] += 1
            if tok[i] in engine.eos:
                active[i], finish[i] = False, "stop"
        if not active.any():
            break
    return tokens, logps, finish


def _sample_step(state, buf, lengths, keys, t, temperature, top_p, eos, block_eos, *,
                 graphdef, top_k, greedy):
    """Next token of every row at position `lengths`, and its raw log-prob."""
    model = nnx.merge(graphdef, state)
    seg = (jnp.arange(buf.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
    logits = model(buf, segment_ids=seg)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    raw = jax.nn.log_softmax(last.astype(jnp.float32), axis=-1)
    x = jnp.where(block_eos & jnp.isin(jnp.arange(raw.shape[-1]), eos)[None], -jnp.inf, raw)
    if greedy:
        tok = jnp.argmax(x, axis=-1)
    else:
        x = x / temperature
        if top_k > 0:
            kth = jax.lax.top_k(x, top_k)[0][:, -1:]
            x = jnp.where(x < kth, -jnp.inf, x)
        probs = jax.nn.softmax(x, axis=-1)
        order = jnp.argsort(-probs, axis=-1)
        sorted_p = jnp.take_along_axis(probs, order, axis=-1)
        drop_sorted = jnp.cumsum(sorted_p, axis=-1) - sorted_p > top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(x.shape[0])[:, None], order].set(
            drop_sorted)
        x = jnp.where(drop, -jnp.inf, x)
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
        tok = jax.vmap(jax.random.categorical)(step_keys, x)
    return tok.astype(jnp.int32), jnp.take_along_axis(raw, tok[:, None], axis=-1)[:, 0]


def _digest(tensors: Tensors) -> str:
    h = hashlib.sha256()
    for name, a in sorted(tensors, key=lambda t: t[0]):
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _eos_ids(model_dir: str) -> list[int]:
    """EOS ids the way vLLM stops: config.json's and generation_config.json's."""
    import json

    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                value = json.load(f).get("eos_token_id")
            ids += value if isinstance(value, list) else [value] if value is not None else []
    return sorted(set(ids))


class MultiRollout:
    """Several engines of one host as one: each prompt goes to one engine (contiguous
    shares, concurrently), the weights to all. Engines count versions on their own (a
    restarted sidecar starts again at 0), so this keeps one version of its own that moves
    when any engine's weights changed, and checks each engine against its own."""

    def __init__(self, engines: Sequence):
        if not engines:
            raise ValueError("MultiRollout needs at least one engine")
        self.engines = list(engines)
        self.version = 0
        self._versions: list[int | None] = [None] * len(self.engines)

    def engine_dtype(self) -> np.dtype:
        dtypes = {np.dtype(e.engine_dtype()) for e in self.engines}
        if len(dtypes) != 1:
            raise ValueError(f"the sidecars of one host compute in different dtypes {dtypes}")
        return dtypes.pop()

    def info(self, timeout: float | None = 30.0):
        return [e.info(timeout=timeout) for e in self.engines][0]

    def sleep(self, level: int = 1, timeout: float | None = None) -> int:
        return [e.sleep(level, timeout=timeout) for e in self.engines][0]

    def wake_up(self, timeout: float | None = None) -> None:
        for e in self.engines:
            e.wake_up(timeout=timeout)

    def update_weights(self, tensors: Tensors, *, version: int | None = None,
                       transport: str = "shm", timeout: float | None = None) -> UpdateResult:
        import concurrent.futures as cf

        tensors = list(tensors)  # each engine reads them
        with cf.ThreadPoolExecutor(len(self.engines)) as pool:
            results = list(pool.map(lambda e: e.update_weights(
                tensors, transport=transport, timeout=timeout), self.engines))
        self._versions = [r.version for r in results]
        changed = any(r.changed for r in results)
        if changed:
            self.version += 1
        first = results[0]
        return UpdateResult(self.version, changed, first.num_tensors,
                            sum(r.num_bytes for r in results), max(r.receive_s for r in results),
                            max(r.install_s for r in results), first.digest,
                            max(r.digest_s for r in results))

    def generate(self, prompts: Sequence[Sequence[int]], *, expected_version: int | None = None,
                 **kw) -> list[PromptResult]:
        import concurrent.futures as cf
        import dataclasses

        if expected_version is not None and expected_version != self.version:
            raise VersionMismatchError(f"weights version {self.version} is live, caller "
                                       f"expects {expected_version}")
        n, parts = len(prompts), len(self.engines)
        bounds = [n * p // parts for p in range(parts + 1)]
        jobs = [(e, prompts[a:b], v) for e, a, b, v in
                zip(self.engines, bounds, bounds[1:], self._versions) if b > a]
        with cf.ThreadPoolExecutor(len(jobs)) as pool:
            outs = list(pool.map(lambda j: j[0].generate(j[1], expected_version=j[2], **kw),
                                 jobs))
        return [PromptResult(r.prompt_token_ids, [dataclasses.replace(
                    c, weights_version=self.version) for c in r.completions])
                for out in outs for r in out]

    def close(self) -> None:
        for e in self.engines:
            e.close()
