"""Monolingual source sentences -> translation tasks, in a deterministic, resumable order.

Inputs: a directory or list of `<lang>.txt` files (one sentence a line; the file name
is the FLORES-200 code), JSONL with `text` and `lang`, or WALAR's released JSONL
(`input_key` text, optional `label` naming the direction).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    text: str
    src_lang: str
    tgt_lang: str


def _read_jsonl(path: str, input_key: str, lang_key: str, label_key: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if input_key not in row:
                raise ValueError(f"{path}:{n}: no {input_key!r} field (data.input_key)")
            label = row.get(label_key)
            if isinstance(label, str) and label.startswith("{"):
                label = json.loads(label)
            if isinstance(label, dict):  # WALAR-style label with the direction
                yield row[input_key], label.get("src_lang"), label.get("tgt_lang")
            elif isinstance(label, str) and "-" in label:
                src, tgt = label.split("-", 1)
                yield row[input_key], src, tgt
            else:
                yield row[input_key], row.get(lang_key), None


def read_sources(paths: Sequence[str], *, input_key: str = "text", lang_key: str = "lang",
                 label_key: str = "label") -> list[tuple[str, str, str | None]]:
    """(text, source language, fixed target or None) for every non-empty input line."""
    files: list[str] = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*"))) if os.path.isdir(p) else [p]
    if not files:
        raise ValueError(f"no data files in {list(paths)}")
    out = []
    for path in files:
        if path.endswith(".jsonl"):
            rows = list(_read_jsonl(path, input_key, lang_key, label_key))
            missing = [i for i, r in enumerate(rows) if not r[1]]
            if missing:
                raise ValueError(f"{path}: row {missing[0] + 1} names no source language")
            out += rows
        elif path.endswith(".txt"):
            lang = os.path.basename(path)[: -len(".txt")]
            with open(path, encoding="utf-8") as f:
                out += [(line.strip(), lang, None) for line in f if line.strip()]
    if not out:
        raise ValueError(f"no sentences found in {files}")
    return out


def make_tasks(sources, target_langs: Sequence[str], *, targets_per_source: int = 1,
               seed: int = 0) -> list[Task]:
    """Pairs each sentence with `targets_per_source` targets drawn (by seed) from
    `target_langs`, never its own language; rows with a fixed target keep it."""
    rng = np.random.default_rng(seed)
    tasks = []
    for text, src, fixed in sources:
        if fixed:
            tasks.append(Task(text, src, fixed))
            continue
        options = [t for t in target_langs if t != src]
        if not options:
            raise ValueError(f"no target language differs from source {src}")
        k = min(targets_per_source, len(options))
        for tgt in rng.choice(options, size=k, replace=False):
            tasks.append(Task(text, src, str(tgt)))
    return tasks


class TaskStream:
    """Endless epochs of the tasks, each epoch a seed-determined permutation.

    `position` (tasks consumed so far) is all a checkpoint needs to resume the exact
    same order.
    """

    def __init__(self, tasks: Sequence[Task], seed: int, position: int = 0):
        if not tasks:
            raise ValueError("no tasks")
        self.tasks = list(tasks)
        self.seed = seed
        self.position = position
        self._cached: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.tasks))
            self._cached = (epoch, perm)
        return self._cached[1]

    def take(self, n: int) -> list[Task]:
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.tasks))
            out.append(self.tasks[int(self._order(epoch)[offset])])
            self.position += 1
        return out

    @property
    def epoch(self) -> float:
        return self.position / len(self.tasks)
