"""Results tables: CSV / JSON per direction and a Markdown summary with averages overall,
WALAR's table (into and out of each pivot language), seen vs unseen, by resource level,
by source and by target. A direction that xCOMET or MetricX does not cover
(`<metric>_supported` False) is shown as `n/s` and left out of that metric's averages;
the summary and results.json count them.

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

from walar_jax.evaluation.metrics import HIGHER_IS_BETTER, METRIC_LABELS, SUPPORTED
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
    """Metrics present (or marked unsupported) in at least one row, in a fixed order."""
    return [m for m in HIGHER_IS_BETTER if any(m in r or f"{m}_supported" in r for r in rows)]


def excluded_counts(rows: Sequence[dict]) -> dict[str, int]:
    """metric -> directions left out of its averages (source or target not covered)."""
    return {m: sum(r[f"{m}_supported"] is False for r in rows) for m in SUPPORTED
            if any(f"{m}_supported" in r for r in rows)}


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
    marks = [f"{m}_supported" for m in SUPPORTED if any(f"{m}_supported" in r for r in rows)]
    cols = ["direction", "src", "tgt", "src_name", "tgt_name", "n", *metric_columns(rows),
            "bleu_tokenizer", "src_level", "tgt_level", *marks] + (
                ["seen"] if rows and "seen" in rows[0] else [])
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "excluded_directions": excluded_counts(rows),
                   "directions": rows}, f, indent=2, ensure_ascii=False, default=str)


def _means(rows: Sequence[dict], metrics: Sequence[str]) -> dict[str, float]:
    """Per metric, the mean over the rows that have it (unsupported rows have none)."""
    return {m: _mean(r.get(m) for r in rows) for m in metrics}


def group_means(rows: Sequence[dict], key, metrics: Sequence[str]) -> list[tuple[str, int, dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return [(g, len(rs), _means(rs, metrics)) for g, rs in groups.items()]


def _fmt(v: float | str | None) -> str:
    if isinstance(v, str):
        return v
    return "–" if v is None or math.isnan(v) else f"{v:.2f}"


def _direction_values(r: dict, metrics: Sequence[str]) -> dict:
    return {m: "n/s" if r.get(f"{m}_supported") is False else r.get(m, math.nan)
            for m in metrics}


def pivot_groups(rows: Sequence[dict], pivots: Sequence[str],
                 metrics: Sequence[str]) -> list[tuple[str, int, dict]]:
    """WALAR's table: x -> P and P -> x for each pivot P that the directions include,
    then `Avg`, the mean of those groups' means (as WALAR's Avg column)."""
    groups = []
    for p in pivots:
        for label, pick in ((f"x → {p}", lambda r, p=p: r["tgt"] == p),
                            (f"{p} → x", lambda r, p=p: r["src"] == p)):
            picked = [r for r in rows if pick(r)]
            if picked:
                groups.append((label, len(picked), _means(picked, metrics)))
    if groups:
        avg = {m: _mean(v[m] for _, _, v in groups) for m in metrics}
        groups.append((f"Avg of the {len(groups)} groups", len({r["direction"] for r in rows
                       if r["src"] in pivots or r["tgt"] in pivots}), avg))
    return groups


def _pivot_seen_groups(rows, pivots, metrics) -> list[tuple[str, int, dict]]:
    """P -> x split by whether x is seen (WALAR's generalization figure)."""
    out = []
    for p in pivots:
        for seen in (True, False):
            picked = [r for r in rows if r["src"] == p and r["seen"] == seen]
            if picked:
                label = f"{p} → x ({'seen' if seen else 'unseen'})"
                out.append((label, len(picked), _means(picked, metrics)))
    return out


def _table(title: str, first: str, groups: list[tuple[str, int, dict]], metrics,
           count: str = "directions") -> list[str]:
    head = [f"### {title}", "", f"| {first} | {count} | " + " | ".join(
        METRIC_LABELS[m] for m in metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    return head + [f"| {g} | {n} | " + " | ".join(_fmt(v.get(m, math.nan)) for m in metrics) + " |"
                   for g, n, v in groups] + [""]


def _name(code: str) -> str:
    return f"{language_name(code)} ({code})"


def _level_rank(group: tuple) -> int:
    return LEVEL_ORDER.index(group[0]) if group[0] in LEVEL_ORDER else 99


def _excluded_lines(rows: Sequence[dict]) -> list[str]:
    counts = excluded_counts(rows)
    if not counts:
        return []
    lines = ["### Directions left out of a metric's averages", "",
             "| metric | left out | scored | why |", "|---|---|---|---|"]
    for m, n in counts.items():
        lines.append(f"| {METRIC_LABELS[m]} | {n} | {len(rows) - n} | source or target not "
                     f"among the metric's languages (WALAR's list); shown as n/s |")
    return [*lines, ""]


def summary_markdown(rows: list[dict], meta: dict,
                     pivots: Sequence[str] = ()) -> str:
    ms = metric_columns(rows)
    decoding = "greedy" if not meta.get("temperature") else f"temperature {meta['temperature']}"
    lines = [f"# FLORES-200 {meta.get('split', '')} evaluation: {meta.get('model', '')}", "",
             (f"{len(rows)} directions, {meta.get('n_sentences')} sentences each, "
              f"template `{meta.get('template')}`, {decoding} decoding, at most "
              f"{meta.get('max_tokens')} new tokens. Higher is better except MetricX. "
              "LCR: share of hypotheses whose top-1 language label is the target."), ""]
    lines += _table("Overall", "set", [("all", *group_means(rows, lambda r: "all", ms)[0][1:])], ms)
    lines += _excluded_lines(rows)
    groups = pivot_groups(rows, pivots, ms)
    if groups:
        lines += _table("As WALAR reports it: into and out of each pivot language", "group",
                        groups, ms)
    if rows and "seen" in rows[0]:
        lines += _table("Seen vs unseen in training", "set",
                        sorted(group_means(rows, lambda r: "seen" if r["seen"] else "unseen", ms)),
                        ms)
        if groups:
            lines += _table("Seen vs unseen targets by pivot source", "group",
                            _pivot_seen_groups(rows, pivots, ms), ms)
    lines += _table("By target resource level", "target level",
                    sorted(group_means(rows, lambda r: r["tgt_level"], ms), key=_level_rank), ms)
    lines += _table("By source resource level", "source level",
                    sorted(group_means(rows, lambda r: r["src_level"], ms), key=_level_rank), ms)
    lines += _table("By source", "source", sorted(group_means(rows, lambda r: _name(r["src"]), ms)), ms)
    lines += _table("By target", "target", sorted(group_means(rows, lambda r: _name(r["tgt"]), ms)), ms)
    lines += _table("Per direction", "direction",
                    [(r["direction"], r["n"], _direction_values(r, ms)) for r in rows], ms,
                    count="sentences")
    return "\n".join(lines)


def write_summary(out: str, rows: list[dict], meta: dict, pivots: Sequence[str] = ()) -> str:
    path = os.path.join(out, "summary.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(summary_markdown(rows, meta, pivots))
    return path
