"""PNG figures: a source x target heatmap per metric, an LCR bar chart per target, and
a delta heatmap per metric for `--compare`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from walar_jax.evaluation.metrics import HIGHER_IS_BETTER, METRIC_LABELS
from walar_jax.prompts import language_name

LEVEL_COLOURS = {"high": "#1b7837", "medium": "#5aae61", "low": "#c2a5cf", "unknown": "#bbbbbb"}


def _label(code: str) -> str:
    return f"{language_name(code)}\n{code}"


def _matrix(rows: Sequence[dict], key: str, srcs: list[str], tgts: list[str]) -> np.ndarray:
    m = np.full((len(srcs), len(tgts)), np.nan)
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            m[srcs.index(r["src"]), tgts.index(r["tgt"])] = v
    return m


def _axes_langs(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    return sorted({r["src"] for r in rows}), sorted({r["tgt"] for r in rows})


def _heatmap(m: np.ndarray, srcs: list[str], tgts: list[str], *, title: str, cbar: str,
             cmap: str, vmin: float, vmax: float, path: str) -> str:
    size = max(4.5, 0.9 * len(tgts) + 2.5), max(3.8, 0.75 * len(srcs) + 2)
    fig, ax = plt.subplots(figsize=size, dpi=110)
    cm = plt.get_cmap(cmap).with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(tgts)), [_label(c) for c in tgts], fontsize=8, rotation=45,
                  ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(srcs)), [_label(c) for c in srcs], fontsize=8)
    ax.set_xlabel("target language")
    ax.set_ylabel("source language")
    ax.set_title(title, fontsize=10)
    if len(srcs) * len(tgts) <= 400:  # values in the cells while they stay legible
        mid = (vmin + vmax) / 2
        for i in range(len(srcs)):
            for j in range(len(tgts)):
                v = m[i, j]
                text = "–" if np.isnan(v) else f"{v:.1f}"
                if np.isnan(v):
                    dark = False
                elif vmin < 0 < vmax:  # diverging: both ends are dark
                    dark = abs(v) > 0.6 * vmax
                else:
                    dark = v > mid if cmap.endswith("_r") else v < mid
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=cbar, fraction=0.05, pad=0.03)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _limits(metric: str, m: np.ndarray) -> tuple[float, float]:
    if metric in ("lcr", "chrf", "bleu", "spbleu", "xcomet", "judge"):
        return 0.0, 100.0 if metric in ("lcr", "xcomet", "judge") else max(
            10.0, float(np.nanmax(m)) if np.isfinite(m).any() else 10.0)
    return 0.0, 25.0  # MetricX


def metric_heatmaps(rows: Sequence[dict], metrics: Sequence[str], out_dir: str,
                    title_suffix: str) -> list[str]:
    """One source x target heatmap per metric; returns the PNG paths."""
    os.makedirs(out_dir, exist_ok=True)
    srcs, tgts = _axes_langs(rows)
    paths = []
    for metric in metrics:
        m = _matrix(rows, metric, srcs, tgts)
        vmin, vmax = _limits(metric, m)
        cmap = "viridis" if HIGHER_IS_BETTER[metric] else "viridis_r"
        paths.append(_heatmap(m, srcs, tgts, title=f"{METRIC_LABELS[metric]} by direction\n"
                              f"{title_suffix}", cbar=METRIC_LABELS[metric], cmap=cmap,
                              vmin=vmin, vmax=vmax,
                              path=os.path.join(out_dir, f"heatmap_{metric}.png")))
    return paths


def lcr_bars(rows: Sequence[dict], path: str, title_suffix: str) -> str:
    """Mean LCR per target language (over its sources), coloured by resource level."""
    tgts = sorted({r["tgt"] for r in rows})
    vals = []
    for t in tgts:
        xs = [r["lcr"] for r in rows if r["tgt"] == t and not math.isnan(r.get("lcr", math.nan))]
        vals.append(sum(xs) / len(xs) if xs else math.nan)
    level = {r["tgt"]: r.get("tgt_level", "unknown") for r in rows}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(tgts) + 2), 4), dpi=110)
    colours = [LEVEL_COLOURS.get(level[t], "#bbbbbb") for t in tgts]
    bars = ax.bar(range(len(tgts)), [0 if math.isnan(v) else v for v in vals], color=colours,
                  edgecolor="black", linewidth=0.5)
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1.5,
                "n/a" if math.isnan(v) else f"{v:.0f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(tgts)), [_label(t) for t in tgts], fontsize=8, rotation=45,
                  ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 110)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel("LCR (%), mean over sources")
    ax.set_xlabel("target language")
    ax.set_title(f"Language consistency rate by target language\n{title_suffix}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for lv, c in LEVEL_COLOURS.items()
               if lv in level.values()]
    ax.legend(handles, [lv for lv in LEVEL_COLOURS if lv in level.values()],
              title="resource level", fontsize=7, title_fontsize=7, loc="upper right",
              bbox_to_anchor=(1.0, 1.0), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def delta_heatmap(rows: Sequence[dict], metric: str, path: str, title: str) -> str:
    """Improvement of run B over run A per direction (B - A; A - B for MetricX), diverging
    colours centred on zero: blue is better, red is worse."""
    srcs, tgts = _axes_langs(rows)
    m = _matrix(rows, f"{metric}_improvement", srcs, tgts)
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    lim = lim or 1.0
    return _heatmap(m, srcs, tgts, title=title, cmap="RdBu", vmin=-lim, vmax=lim, path=path,
                    cbar=f"improvement in {METRIC_LABELS[metric]}")
