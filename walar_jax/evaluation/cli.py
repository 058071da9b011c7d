"""Command line of evaluate.py: `--config=configs/eval.py[:tiny]` plus `--config.a.b=v`
overrides (the project's one config mechanism, walar_jax/config.py), or `--compare A B`.

The flags of the former command line stay as aliases of config keys (`--model X` is
`--config.model=X`); `--rollout_args="--dtype=float32 ..."` and `--reward_args=...` become
overrides of the service sections (`rollout.server.dtype`, `lcr.server.*`, ...). Without
`--config`, configs/eval.py (the paper's metrics) is used.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import shlex
import sys
from collections.abc import Sequence

from walar_jax import config as cfglib
from walar_jax import launch

DEFAULT_CONFIG = str(launch.REPO_ROOT / "configs" / "eval.py")
REWARD_SECTIONS = ("lcr", "xcomet", "metricx")
# former flag -> config keys it sets (a key ending in "=v" sets that value instead)
ALIASES: dict[str, tuple[str, ...]] = {
    "out": ("out",), "model": ("model",), "workdir": ("workdir",), "step": ("step",),
    "template": ("generation.template",), "flores_dir": ("data.flores",),
    "flores": ("data.flores",), "split": ("data.split",), "languages": ("data.languages",),
    "directions": ("data.directions",), "max_sentences": ("data.max_sentences",),
    "max_tokens": ("generation.max_tokens",), "temperature": ("generation.temperature",),
    "batch_size": ("generation.batch_size",), "rollout_address": ("rollout.address",),
    "spm_model": ("spm_model",), "reward_address": ("lcr.address",),
    "xcomet_model": ("xcomet.server.qe_model", "xcomet.enabled=True"),
    "xcomet_address": ("xcomet.address", "xcomet.enabled=True"),
    "metricx_model": ("metricx.server.qe_model", "metricx.enabled=True"),
    "metricx_tokenizer": ("metricx.server.qe_tokenizer",),
    "metricx_address": ("metricx.address", "metricx.enabled=True"),
    "train_directions": ("seen_directions",), "resource_levels": ("resource_levels",),
    "judge_url": ("judge.url",), "judge_model": ("judge.model",),
    "judge_key_env": ("judge.key_env",), "judge_max_sentences": ("judge.max_sentences",),
    "judge_workers": ("judge.workers",), "service_timeout_s": ("service_timeout_s",),
}
SWITCHES = {"no_lcr": "lcr.enabled=False"}
USAGE = """usage: evaluate.py [--config=configs/eval.py[:tiny]] [--config.KEY=VALUE ...]
       evaluate.py --compare RUN_A RUN_B --out DIR

FLORES-200 many-to-many evaluation (WALAR); see docs/evaluate.md. Every setting is a key
of configs/eval.py (unknown keys fail); the resolved config is saved as <out>/config.json.

examples:
  python evaluate.py --config=configs/eval.py:tiny --config.model=tiny \\
      --config.data.flores=../shared/data/flores200 \\
      --config.data.languages=eng_Latn,fra_Latn,swh_Latn --config.data.max_sentences=8 \\
      --config.out=runs/eval_tiny
  python evaluate.py --config.workdir=runs/qwen3_8b --config.data.flores=DIR --config.out=OUT
  python evaluate.py --compare runs/eval_base runs/eval_trained --out runs/compare

aliases (former flags) -> config keys:
""" + "\n".join(f"  --{k:<20} {', '.join(v)}" for k, v in {
    **ALIASES, **{k: (v,) for k, v in SWITCHES.items()},
    "rollout_args": ("rollout.server.<flag>=<value> for each --flag=value",),
    "reward_args": ("{lcr,xcomet,metricx}.server.<flag>=<value>",)}.items())


def parse_service_args(text: str) -> dict:
    """`--a=1 --b 2 --c --no-d` -> {a: '1', b: '2', c: True, d: False}."""
    toks, out, i = shlex.split(text or ""), {}, 0
    while i < len(toks):
        t = toks[i]
        if not t.startswith("--"):
            raise ValueError(f"service argument {t!r} is not a --flag")
        key, eq, val = t[2:].partition("=")
        if eq:
            out[key] = val
        elif i + 1 < len(toks) and not toks[i + 1].startswith("--"):
            out[key], i = toks[i + 1], i + 1
        elif key.startswith(("no-", "no_")):
            out[key[3:]] = False
        else:
            out[key] = True
        i += 1
    return out


def _expand(name: str, value: str) -> list[str]:
    """One former flag and its value -> --config.k=v overrides."""
    if name in ("rollout_args", "reward_args"):
        sections = ("rollout",) if name == "rollout_args" else REWARD_SECTIONS
        return [f"--config.{s}.server.{k}={v}" for k, v in parse_service_args(value).items()
                for s in sections]
    return [f"--config.{key}" if "=" in key else f"--config.{key}={value}"
            for key in ALIASES[name]]


def translate_aliases(argv: Sequence[str]) -> list[str]:
    """Former flags -> config overrides; everything else is passed on unchanged."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in SWITCHES and not eq:
            out.append(f"--config.{SWITCHES[name]}")
        elif name in ALIASES or name in ("rollout_args", "reward_args"):
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"evaluate.py: error: --{name} needs a value")
                i, value = i + 1, argv[i + 1]
            out += _expand(name, value)
        else:
            out.append(arg)
        i += 1
    return out


def parse(argv: Sequence[str]):
    """argv (without the program) -> the locked, resolved eval config."""
    args = translate_aliases(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in args):
        args = [f"--config={DEFAULT_CONFIG}", *args]
    return cfglib.parse(["evaluate.py", *args], workdir_flag=False)[0]


def _compare(argv: Sequence[str]) -> dict:
    from walar_jax.evaluation.compare import compare

    p = argparse.ArgumentParser(prog="evaluate.py --compare")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    res = compare(*args.compare, args.out)
    print(pathlib.Path(args.out, "compare.md").read_text(encoding="utf-8"))
    return res


def main(argv: Sequence[str] | None = None) -> dict:
    from walar_jax.evaluation.run import evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # absl may have claimed the root logger
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(USAGE)
        return {}
    if "--compare" in argv:
        return _compare(argv)
    config = parse(argv)
    res = evaluate(config)
    print(pathlib.Path(config.out, "summary.md").read_text(encoding="utf-8"))
    return res
