"""Monolingual source sentences -> translation tasks, in a deterministic, resumable order.

Inputs: a directory or list of `<lang>.txt` files (one sentence a line; the file name
is the FLORES-200 code), or JSONL whose `input_key` field holds the text and whose
`lang_key` field names its language (or `label_key` the direction: `src-tgt` or a JSON
object with `src_lang`/`tgt_lang`). WALAR's released JSONL hold finished prompts instead
(`input_key` is literally "input_key" there: the text, then "Translate from X to Y:",
or LLaMAX's Alpaca format); those are parsed back into (text, source, target) so the
family template renders each once (`input_format`: auto, walar = every row must be one,
text = never parse).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from protos import languages
from walar_jax.prompts import walar

INPUT_FORMATS = ("auto", "walar", "text")


@dataclasses.dataclass(frozen=True)
class Task:
    text: str
    src_lang: str
    tgt_lang: str


def _code(value, where: str, what: str) -> str:
    try:
        return languages.get(value).code
    except ValueError as e:
        raise ValueError(f"{where}: {what} {value!r} is not a FLORES-200 code ({e})") from None


def _input_text(value, where: str, input_key: str) -> str:
    """The row's text; a chat (list of messages) gives its last user turn, as WALAR's
    prompt rows may hold one."""
    if isinstance(value, list):
        users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
        value = users[-1] if users else None
    if not isinstance(value, str):
        raise ValueError(f"{where}: {input_key!r} is neither text nor a chat with a user turn")
    return value


def _label(label):
    """(src, tgt) from a label naming the direction, else None."""
    if isinstance(label, str) and label.startswith("{"):
        label = json.loads(label)
    if isinstance(label, dict) and label.get("src_lang"):
        return label["src_lang"], label.get("tgt_lang")
    if isinstance(label, str) and "-" in label:
        return tuple(label.split("-", 1))
    return None


def _row(row: dict, where: str, keys: tuple[str, str, str], input_format: str):
    input_key, lang_key, label_key = keys
    if input_key not in row:
        raise ValueError(f"{where}: no {input_key!r} field (data.input_key)")
    text = _input_text(row[input_key], where, input_key)
    if input_format != "text":
        try:
            parsed = walar.parse(text)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if parsed:
            return parsed
        if input_format == "walar":
            raise ValueError(f"{where}: not a WALAR prompt (the text, then 'Translate from X "
                             f"to Y:', or LLaMAX's Alpaca format): {text[:80]!r}")
    try:
        direction = _label(row.get(label_key))
    except ValueError as e:  # a label that starts like JSON and is not
        raise ValueError(f"{where}: {label_key!r} (data.label_key): {e}") from None
    src, tgt = direction or (row.get(lang_key), None)
    if not src:
        raise ValueError(f"{where}: row names no source language (data.lang_key "
                         f"{lang_key!r} or data.label_key {label_key!r})")
    if not text.strip():
        raise ValueError(f"{where}: empty {input_key!r}")
    return (text.strip(), _code(src, where, "source language"),
            _code(tgt, where, "target language") if tgt else None)


def _read_jsonl(path: str, keys: tuple[str, str, str], input_format: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e})") from None
            yield _row(row, where, keys, input_format)


def read_sources(paths: Sequence[str], *, input_key: str = "text", lang_key: str = "lang",
                 label_key: str = "label", input_format: str = "auto"
                 ) -> list[tuple[str, str, str | None]]:
    """(text, source language, fixed target or None) for every non-empty input line."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown data.input_format {input_format!r}; one of {INPUT_FORMATS}")
    files: list[str] = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*"))) if os.path.isdir(p) else [p]
    if not files:
        raise ValueError(f"no data files in {list(paths)}")
    out = []
    for path in files:
        if path.endswith(".jsonl"):
            out += _read_jsonl(path, (input_key, lang_key, label_key), input_format)
        elif path.endswith(".txt"):
            lang = _code(os.path.basename(path)[: -len(".txt")], path, "file name")
            with open(path, encoding="utf-8") as f:
                out += [(line.strip(), lang, None) for line in f if line.strip()]
    if not out:
        raise ValueError(f"no sentences found in {files}")
    return out


def make_tasks(sources, target_langs: Sequence[str], *, targets_per_source: int = 1,
               seed: int = 0) -> list[Task]:
    """Pairs each sentence with `targets_per_source` targets drawn (by seed) from
    `target_langs`, never its own language; rows with a fixed target keep it."""
    for code in target_langs:
        _code(code, "data.target_langs", "language")
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
