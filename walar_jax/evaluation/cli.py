"""Command line of evaluate.py: flags -> EvalConfig -> run.evaluate, or --compare."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import sys
from collections.abc import Sequence

from walar_jax.evaluation.run import EvalConfig, evaluate

EPILOG = """examples:
  python evaluate.py --model tiny --flores_dir ../shared/data/flores200 \\
      --languages eng_Latn,fra_Latn,swh_Latn --max_sentences 8 --out runs/eval_tiny
  python evaluate.py --workdir runs/tiny --step 12 --flores_dir DIR --directions 'eng_Latn-*' --out OUT
  python evaluate.py --compare runs/eval_base runs/eval_trained --out runs/compare
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", epilog=EPILOG,
                                description="FLORES-200 many-to-many evaluation (WALAR).",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = EvalConfig(out="", flores="")
    add = p.add_argument
    add("--out", required=True, help="output directory (resumable)")
    add("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
        help="compare two evaluation outputs (B - A) instead of evaluating")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="", help="HF directory, hub id, or 'tiny'")
    g.add_argument("--workdir", default="", help="training work directory (instead of --model)")
    g.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    g.add_argument("--template", default=d.template, help="prompt template (auto: by family)")
    g = p.add_argument_group("data")
    g.add_argument("--flores_dir", "--flores", dest="flores", default="",
                   help="FLORES-200 directory (either layout) or HF dataset id")
    g.add_argument("--split", default=d.split, choices=("dev", "devtest"))
    g.add_argument("--languages", default="", help="comma-separated codes for 'all' and '*'")
    g.add_argument("--directions", default=d.directions,
                   help="a-b,c-*,*-d or 'all' (all pairs of --languages)")
    g.add_argument("--max_sentences", type=int, default=0, help="per direction (0: all)")
    g = p.add_argument_group("generation")
    g.add_argument("--max_tokens", type=int, default=d.max_tokens)
    g.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    g.add_argument("--batch_size", type=int, default=d.batch_size, help="prompts per call")
    g.add_argument("--rollout_address", default="", help="running sidecar (else started)")
    g.add_argument("--rollout_args", default=d.rollout_args,
                   help="flags of rollout_server.py when started here")
    g = p.add_argument_group("metrics")
    g.add_argument("--spm_model", default="", help="FLORES-200 SentencePiece model: spBLEU")
    g.add_argument("--no_lcr", dest="lcr", action="store_false", help="skip LCR")
    g.add_argument("--reward_address", default="",
                   help="running reward service for LCR (needs --no-masklid)")
    g.add_argument("--reward_args", default="",
                   help="extra flags of reward services started here (e.g. --lid_model F)")
    g.add_argument("--xcomet_model", default="", help="xCOMET checkpoint (reference mode)")
    g.add_argument("--xcomet_address", default="")
    g.add_argument("--metricx_model", default="", help="MetricX-24 checkpoint")
    g.add_argument("--metricx_tokenizer", default="", help="its mT5 tokenizer")
    g.add_argument("--metricx_address", default="")
    g.add_argument("--train_directions", default="", help="seen directions (same syntax)")
    g.add_argument("--resource_levels", default="", help="file: code<TAB>level lines")
    g = p.add_argument_group("LLM as judge (off unless --judge_url)")
    g.add_argument("--judge_url", default="", help="OpenAI-compatible base URL (…/v1)")
    g.add_argument("--judge_model", default="")
    g.add_argument("--judge_key_env", default=d.judge_key_env, help="env var with the key")
    g.add_argument("--judge_max_sentences", type=int, default=0, help="per direction (0: all)")
    g.add_argument("--judge_workers", type=int, default=d.judge_workers,
                   help="requests in flight at once")
    g.add_argument("--service_timeout_s", type=float, default=d.service_timeout_s)
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    if not args.flores:
        raise SystemExit("evaluate.py: --flores_dir is required (a directory or dataset id)")
    if args.judge_url and not args.judge_model:
        raise SystemExit("evaluate.py: --judge_url needs --judge_model")
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # absl may have claimed the root logger
    if args.compare:
        from walar_jax.evaluation.compare import compare

        res = compare(*args.compare, args.out)
        print(pathlib.Path(args.out, "compare.md").read_text(encoding="utf-8"))
        return res
    res = evaluate(config_from_args(args))
    print(pathlib.Path(args.out, "summary.md").read_text(encoding="utf-8"))
    return res
