"""Translations of FLORES directions through the rollout sidecar: prompts from the same
templates as training, batched across directions, one JSONL file per finished direction
(written atomically, so a file that exists is complete and is never redone)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

from walar_jax import prompts
from walar_jax.evaluation.flores import Flores, direction_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenSettings:
    template: str
    max_tokens: int = 256
    temperature: float = 0.0  # greedy
    batch_size: int = 256     # prompts per Generate call, across directions
    max_prompt_tokens: int = 1024
    seed: int = 0


def hyp_path(out: str, src: str, tgt: str) -> str:
    return os.path.join(out, "hypotheses", f"{direction_name(src, tgt)}.jsonl")


def read_hypotheses(out: str, src: str, tgt: str) -> list[dict]:
    with open(hyp_path(out, src, tgt), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_finished(out: str, src: str, tgt: str, n: int) -> bool:
    path = hyp_path(out, src, tgt)
    return os.path.isfile(path) and len(read_hypotheses(out, src, tgt)) == n


def _write_atomic(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def prompt_ids(tokenizer, text: str, src: str, tgt: str, s: GenSettings) -> list[int]:
    """Token ids of the training prompt; an over-long prompt keeps its end (the answer cue)."""
    prompt = prompts.build_prompt(text, src, tgt, template=s.template, tokenizer=tokenizer)
    ids = tokenizer.encode_prompt(prompt)  # BOS exactly as in training
    if len(ids) > s.max_prompt_tokens:
        log.warning("prompt of %d tokens (%s-%s) truncated to %d", len(ids), src, tgt,
                    s.max_prompt_tokens)
        ids = ids[-s.max_prompt_tokens:]
    return ids


def translate(rollout, tokenizer, flores: Flores, directions: Sequence[tuple[str, str]],
              out: str, settings: GenSettings, n_sentences: int) -> list[tuple[str, str]]:
    """Translates the first `n_sentences` of every unfinished direction; returns the
    directions it translated (finished ones are skipped)."""
    todo = [d for d in directions if not is_finished(out, *d, n_sentences)]
    if not todo:
        return []
    work = [(d, i) for d in todo for i in range(n_sentences)]
    done: dict[tuple[str, str], dict[int, dict]] = {d: {} for d in todo}
    written: set[tuple[str, str]] = set()
    log.info("translating %d directions x %d sentences (%d skipped as finished)",
             len(todo), n_sentences, len(directions) - len(todo))
    for start in range(0, len(work), settings.batch_size):
        chunk = work[start:start + settings.batch_size]
        ids = [prompt_ids(tokenizer, flores.sentences(d[0])[i], *d, settings) for d, i in chunk]
        results = rollout.generate(ids, n=1, temperature=settings.temperature,
                                   max_tokens=settings.max_tokens, seed=settings.seed)
        if len(results) != len(chunk):
            raise RuntimeError(f"sidecar returned {len(results)} results for {len(chunk)} prompts")
        for ((src, tgt), i), res in zip(chunk, results):
            comp = res.completions[0]
            done[(src, tgt)][i] = {
                "id": i, "src_lang": src, "tgt_lang": tgt,
                "source": flores.sentences(src)[i], "reference": flores.sentences(tgt)[i],
                "output": comp.text, "hypothesis": prompts.extract_translation(
                    comp.text, tgt, template=settings.template),
                "finish_reason": comp.finish_reason, "output_tokens": len(comp.token_ids)}
        for d in todo:
            if len(done[d]) == n_sentences and d not in written:
                _write_atomic(hyp_path(out, *d), [done[d][i] for i in range(n_sentences)])
                written.add(d)
                log.info("finished %s", direction_name(*d))
    return todo
