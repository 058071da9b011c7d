"""`--compare RUN_A RUN_B`: per-direction deltas (B - A), win/loss/tie counts and a delta
heatmap per metric, over the directions both runs evaluated."""

from __future__ import annotations

import csv
import json
import math
import os

from walar_jax.evaluation import plots
from walar_jax.evaluation.metrics import HIGHER_IS_BETTER, METRIC_LABELS


def load_results(run: str) -> dict:
    path = run if run.endswith(".json") else os.path.join(run, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run} is not an evaluation output: no {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def deltas(a: dict, b: dict) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Rows with `<m>_a`, `<m>_b`, `<m>_delta` (B - A) and `<m>_improvement` (the delta
    signed so that positive is better), and per metric {wins, losses, ties} of B."""
    rows_a = {r["direction"]: r for r in a["directions"]}
    common = [r for r in b["directions"] if r["direction"] in rows_a]
    if not common:
        raise ValueError("the two runs share no direction")
    metrics = [m for m in HIGHER_IS_BETTER
               if any(m in r and m in rows_a[r["direction"]] for r in common)]
    out, counts = [], {m: {"wins": 0, "losses": 0, "ties": 0} for m in metrics}
    for rb in common:
        ra = rows_a[rb["direction"]]
        row = {k: rb[k] for k in ("direction", "src", "tgt")}
        for m in metrics:
            va, vb = ra.get(m, math.nan), rb.get(m, math.nan)
            d = vb - va
            sign = 1.0 if HIGHER_IS_BETTER[m] else -1.0
            row.update({f"{m}_a": va, f"{m}_b": vb, f"{m}_delta": d, f"{m}_improvement": sign * d})
            if not math.isnan(d):
                key = "ties" if d == 0 else ("wins" if sign * d > 0 else "losses")
                counts[m][key] += 1
        out.append(row)
    return out, counts


SETTINGS = ("split", "n_sentences", "template", "max_tokens", "temperature")


def setting_differences(a: dict, b: dict) -> dict:
    """Settings (other than the model) in which the two runs differ: {key: (A, B)}."""
    ma, mb = a.get("meta", {}), b.get("meta", {})
    return {k: (ma.get(k), mb.get(k)) for k in SETTINGS if ma.get(k) != mb.get(k)}


def _markdown(rows: list[dict], counts: dict, name_a: str, name_b: str, diff: dict) -> str:
    ms = list(counts)
    note = ([f"**Note:** the runs differ in more than the model: {diff} (A, B).", ""]
            if diff else [])
    lines = [f"# Comparison: B = {name_b} vs A = {name_a}", "", *note,
             (f"{len(rows)} shared directions. Delta = B - A; a win is a direction where B "
              "is better (lower for MetricX)."), "",
             "| metric | mean A | mean B | mean delta | wins | losses | ties |",
             "|---|---|---|---|---|---|---|"]
    def mean(k: str) -> float:
        vals = [r[k] for r in rows if not math.isnan(r[k])]
        return sum(vals) / max(1, len(vals))

    for m in ms:
        c = counts[m]
        lines.append(f"| {METRIC_LABELS[m]} | {mean(f'{m}_a'):.2f} | {mean(f'{m}_b'):.2f} | "
                     f"{mean(f'{m}_delta'):+.2f} | {c['wins']} | {c['losses']} | {c['ties']} |")
    lines += ["", "| direction | " + " | ".join(f"{METRIC_LABELS[m]} delta" for m in ms) + " |",
              "|---" * (len(ms) + 1) + "|"]
    lines += [f"| {r['direction']} | " + " | ".join(f"{r[f'{m}_delta']:+.2f}" for m in ms) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def compare(run_a: str, run_b: str, out: str) -> dict:
    """Writes compare.csv, compare.json, compare.md and plots/delta_<metric>.png."""
    a, b = load_results(run_a), load_results(run_b)
    rows, counts = deltas(a, b)
    name_a = a.get("meta", {}).get("model", run_a)
    name_b = b.get("meta", {}).get("model", run_b)
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    with open(os.path.join(out, "compare.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump({"run_a": run_a, "run_b": run_b, "counts": counts, "directions": rows}, f,
                  indent=2)
    with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(rows, counts, name_a, name_b, setting_differences(a, b)))
    for m in counts:
        plots.delta_heatmap(rows, m, os.path.join(out, "plots", f"delta_{m}.png"),
                            f"{METRIC_LABELS[m]}: B - A (blue: B better, red: B worse)\n"
                            f"A = {_short(name_a)}   B = {_short(name_b)}")
    return {"directions": rows, "counts": counts}


def _short(name: str, n: int = 45) -> str:
    return name if len(name) <= n else "…" + name[-n:]
