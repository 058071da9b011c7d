"""Items/s of the reward service's scorer at batch 128 on this machine (reward env):

- full reward (embedded default: lid.176 + MaskLID fallback, MiniLM cosine QE, MiniLM
  alignment, or whatever server flags are passed after `--`),
- alignment alone, batched and vectorised (reward/align.py),
- the same alignment one item at a time (bench/reward_align_reference.py), which must give
  the same F1 to 1e-6.

    .venv/reward/bin/python bench/reward_throughput.py [--batch 128] [--repeats 3] [-- server flags]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.reward_align_reference import align_f1_per_item  # noqa: E402
from reward.languages import resolve  # noqa: E402
from reward.scorer import RawItem  # noqa: E402
from reward.server import build_scorer, parse_args  # noqa: E402

FLORES = REPO.parent / "shared" / "data" / "flores200"


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (allocations, lazy inits)
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    argv = sys.argv[1:]
    server_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--src", default="eng_Latn")
    p.add_argument("--tgt", default="fra_Latn")
    p.add_argument("--flores", default=str(FLORES))
    args = p.parse_args(argv)

    def read(code: str) -> list[str]:
        path = pathlib.Path(args.flores) / "devtest" / f"{code}.txt"
        return path.read_text(encoding="utf-8").splitlines()[: args.batch]

    src, tgt = read(args.src), read(args.tgt)
    server_args = parse_args(["--device", "cpu", *server_flags])
    scorer = build_scorer(server_args)
    items = [RawItem(s.encode(), t.encode(), args.src, args.tgt) for s, t in zip(src, tgt)]

    t_full, scores = timed(lambda: scorer.score(items), args.repeats)
    seg, aligner = scorer.segmenter, scorer.aligner
    src_words = [seg.words(s, resolve(args.src)) for s in src]
    tgt_words = [seg.words(t, resolve(args.tgt)) for t in tgt]
    t_align, batched = timed(lambda: aligner.f1(src_words, tgt_words), args.repeats)
    t_ref, reference = timed(lambda: [
        align_f1_per_item(aligner.model, aligner.tokenizer, aligner.layer, s, t,
                          max_length=aligner.max_length)
        for s, t in zip(src_words, tgt_words)], 1)
    diff = float(np.max(np.abs(np.asarray(batched) - np.asarray(reference))))
    print(json.dumps({
        "bench": "reward_throughput", "batch": args.batch, "pair": f"{args.src}->{args.tgt}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}, device cpu",
        "server_flags": server_flags or "(embedded default)",
        "full_reward_items_per_s": round(args.batch / t_full, 1),
        "align_batched_items_per_s": round(args.batch / t_align, 1),
        "align_per_item_reference_items_per_s": round(args.batch / t_ref, 1),
        "align_speedup": round(t_ref / t_align, 2),
        "align_max_abs_f1_diff": diff, "same_f1_to_1e-6": diff <= 1e-6,
        "mean_reward": float(np.mean([s.reward for s in scores])),
    }, indent=1))
    if diff > 1e-6:
        sys.exit("batched alignment F1 differs from the per-item reference")


if __name__ == "__main__":
    main()
