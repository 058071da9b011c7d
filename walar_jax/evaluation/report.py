"""Results tables: CSV / JSON per direction and a Markdown summary with averages overall,
by source, by target, seen vs unseen and by resource level.

Resource levels (approximate, after the language classes of Joshi et al. 2020: high =
classes 4-5, medium = 3, low = 0-2). Languages not listed are `unknown`; pass
`--resource_levels FILE` (lines `code<TAB>level`) to change or extend the table.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence

from walar_jax.evaluation.metrics import HIGHER_IS_BETTER, METRIC_LABELS
from walar_jax.prompts import language_name

RESOURCE_LEVELS: dict[str, str] = {
    **dict.fromkeys(("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "zho_Hans", "jpn_Jpan",
                     "arb_Arab", "rus_Cyrl", "kor_Hang", "hin_Deva", "vie_Latn", "tur_Latn",
                     "por_Latn", "ita_Latn", "nld_Latn", "pol_Latn", "ces_Latn", "pes_Arab",
                     "fin_Latn", "swe_Latn", "hun_Latn"), "high"),
    **dict.fromkeys(("ind_Latn", "ukr_Cyrl", "ben_Beng", "tam_Taml", "tha_Thai", "heb_Hebr",
                     "ell_Grek", "ron_Latn", "bul_Cyrl", "zsm_Latn", "urd_Arab", "cat_Latn",
                     "srp_Cyrl", "hrv_Latn", "slk_Latn", "slv_Latn", "lit_Latn", "est_Latn",
                     "isl_Latn", "dan_Latn"), "medium"),
    **dict.fromkeys(("swh_Latn", "amh_Ethi", "hau_Latn", "yor_Latn", "zul_Latn", "wol_Latn",
                     "khm_Khmr", "npi_Deva", "ibo_Latn", "xho_Latn", "som_Latn", "lao_Laoo",
                     "mya_Mymr", "kin_Latn", "lug_Latn", "mar_Deva", "tel_Telu", "guj_Gujr"),
                    "low"),
}
LEVEL_ORDER = ("high", "medium", "low", "unknown")


def read_resource_levels(path: str | None) -> dict[str, str]:
    table = dict(RESOURCE_LEVELS)
    if path:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip() and not line.startswith("#"):
                    parts = line.split()
                    if len(parts) != 2:
                        raise ValueError(f"{path}:{n}: expected `code<TAB>level`, got {line!r}")
                    table[parts[0]] = parts[1]
    return table


def metric_columns(rows: Sequence[dict]) -> list[str]:
    """Metrics present in at least one row, in a fixed order."""
    return [m for m in HIGHER_IS_BETTER if any(m in r for r in rows)]


def annotate(rows: list[dict], seen: set[tuple[str, str]] | None, levels: dict[str, str]) -> None:
    for r in rows:
        r["src_name"], r["tgt_name"] = language_name(r["src"]), language_name(r["tgt"])
        r["src_level"] = levels.get(r["src"], "unknown")
        r["tgt_level"] = levels.get(r["tgt"], "unknown")
        if seen is not None:
            r["seen"] = (r["src"], r["tgt"]) in seen


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def write_tables(out: str, rows: list[dict], meta: dict) -> None:
    """results.csv and results.json (rows plus the run's settings)."""
    cols = ["direction", "src", "tgt", "src_name", "tgt_name", "n", *metric_columns(rows),
            "bleu_tokenizer", "src_level", "tgt_level"] + (["seen"] if rows and "seen" in rows[0] else [])
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "directions": rows}, f, indent=2, ensure_ascii=False, default=str)


def group_means(rows: Sequence[dict], key, metrics: Sequence[str]) -> list[tuple[str, int, dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return [(g, len(rs), {m: _mean(r.get(m) for r in rs) for m in metrics})
            for g, rs in groups.items()]


def _fmt(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.2f}"


def _table(title: str, first: str, groups: list[tuple[str, int, dict]], metrics,
           count: str = "directions") -> list[str]:
    head = [f"### {title}", "", f"| {first} | {count} | " + " | ".join(
        METRIC_LABELS[m] for m in metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    return head + [f"| {g} | {n} | " + " | ".join(_fmt(v.get(m, math.nan)) for m in metrics) + " |"
                   for g, n, v in groups] + [""]


def summary_markdown(rows: list[dict], meta: dict) -> str:
    ms = metric_columns(rows)
    name = lambda c: f"{language_name(c)} ({c})"
    level_rank = lambda g: LEVEL_ORDER.index(g[0]) if g[0] in LEVEL_ORDER else 99
    decoding = "greedy" if not meta.get("temperature") else f"temperature {meta['temperature']}"
    lines = [f"# FLORES-200 {meta.get('split', '')} evaluation: {meta.get('model', '')}", "",
             (f"{len(rows)} directions, {meta.get('n_sentences')} sentences each, "
              f"template `{meta.get('template')}`, {decoding} decoding, at most "
              f"{meta.get('max_tokens')} new tokens. Higher is better except MetricX. "
              "LCR: share of hypotheses whose detected language is the target."), ""]
    lines += _table("Overall", "set", [("all", *group_means(rows, lambda r: "all", ms)[0][1:])], ms)
    if rows and "seen" in rows[0]:
        lines += _table("Seen vs unseen in training", "directions",
                        sorted(group_means(rows, lambda r: "seen" if r["seen"] else "unseen", ms)),
                        ms)
    lines += _table("By target resource level", "target level",
                    sorted(group_means(rows, lambda r: r["tgt_level"], ms), key=level_rank), ms)
    lines += _table("By source resource level", "source level",
                    sorted(group_means(rows, lambda r: r["src_level"], ms), key=level_rank), ms)
    lines += _table("By source", "source", sorted(group_means(rows, lambda r: name(r["src"]), ms)), ms)
    lines += _table("By target", "target", sorted(group_means(rows, lambda r: name(r["tgt"]), ms)), ms)
    lines += _table("Per direction", "direction",
                    [(r["direction"], r["n"], r) for r in rows], ms, count="sentences")
    return "\n".join(lines)


def write_summary(out: str, rows: list[dict], meta: dict) -> str:
    path = os.path.join(out, "summary.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(summary_markdown(rows, meta))
    return path
