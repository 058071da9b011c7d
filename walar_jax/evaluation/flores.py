"""FLORES-200 sentences and evaluation directions.

A FLORES directory is read in either layout:
  release:  <dir>/<split>/<code>.<split>     (flores200_dataset/devtest/eng_Latn.devtest)
  per file: <dir>/<split>/<code>.txt         (one sentence per line)
A Hugging Face dataset id (when online) is downloaded with `huggingface_hub` and read in
the same layouts, or as <split>/<code>.parquet / .jsonl with a `text` column.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

from walar_jax.prompts import language_name

SPLITS = ("dev", "devtest")
TEXT_KEYS = ("text", "sentence")


def _candidates(root: pathlib.Path, split: str, code: str) -> list[pathlib.Path]:
    return [root / split / f"{code}.{split}", root / split / f"{code}.txt",
            root / split / f"{code}.jsonl", root / split / f"{code}.parquet"]


def _read_file(path: pathlib.Path) -> list[str]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        key = next((k for k in TEXT_KEYS if rows and k in rows[0]), None)
        if key is None:
            raise ValueError(f"{path}: JSONL rows need one of the keys {TEXT_KEYS}")
        return [r[key] for r in rows]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise RuntimeError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        table = pq.read_table(path)
        key = next((k for k in TEXT_KEYS if k in table.column_names), None)
        if key is None:
            raise ValueError(f"{path}: parquet needs one of the columns {TEXT_KEYS}")
        return [str(x) for x in table.column(key).to_pylist()]
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")


class Flores:
    """Sentences of one split, per FLORES-200 code, from a directory (either layout)."""

    def __init__(self, root: str, split: str = "devtest"):
        self.root = pathlib.Path(root)
        if split not in SPLITS:
            raise ValueError(f"unknown FLORES split {split!r}; one of {SPLITS}")
        if not (self.root / split).is_dir():
            raise FileNotFoundError(f"no FLORES split directory {self.root / split} "
                                    f"(expected <dir>/{split}/<code>.{split} or <code>.txt)")
        self.split = split
        self._cache: dict[str, list[str]] = {}

    def languages(self) -> list[str]:
        """Codes with a file in this split (xxx_Scrp names only)."""
        names = {p.name.split(".")[0] for p in (self.root / self.split).iterdir()
                 if p.is_file() and "_" in p.name.split(".")[0]
                 and p.suffix in (f".{self.split}", ".txt", ".jsonl", ".parquet")}
        return sorted(names)

    def sentences(self, code: str) -> list[str]:
        if code not in self._cache:
            path = next((p for p in _candidates(self.root, self.split, code) if p.is_file()), None)
            if path is None:
                raise FileNotFoundError(
                    f"no FLORES {self.split} file for {code!r} under {self.root / self.split}; "
                    f"languages there: {', '.join(self.languages()) or 'none'}")
            self._cache[code] = _read_file(path)
        return self._cache[code]


def from_hub(dataset_id: str, split: str, codes: Sequence[str], cache_dir: str | None = None) -> Flores:
    """Downloads the files of `codes` for `split` from a dataset repository on the hub."""
    from huggingface_hub import snapshot_download

    patterns = [f"*{split}/{c}.*" for c in codes] + [f"*{split}/*/{c}.*" for c in codes]
    try:
        root = snapshot_download(dataset_id, repo_type="dataset", allow_patterns=patterns,
                                 cache_dir=cache_dir)
    except Exception as err:
        raise RuntimeError(f"could not download FLORES dataset {dataset_id!r} from the Hugging "
                           f"Face hub ({type(err).__name__}: {err}); pass --flores_dir with "
                           "a local copy instead") from err
    split_dirs = sorted(pathlib.Path(root).rglob(split))
    for d in split_dirs:
        if d.is_dir() and any(p.is_file() for p in d.iterdir()):
            return Flores(str(d.parent), split)
    raise FileNotFoundError(f"dataset {dataset_id!r} has no {split}/<code>.* files for {list(codes)}")


def load(source: str, split: str, codes: Sequence[str] = ()) -> Flores:
    """A local directory, or else a hub dataset id."""
    if os.path.isdir(source):
        return Flores(source, split)
    if os.path.exists(source) or source.startswith((".", "/")):
        raise FileNotFoundError(f"--flores_dir {source!r} is not a directory")
    return from_hub(source, split, codes)


def parse_languages(spec: str) -> list[str]:
    codes = [c.strip() for c in spec.split(",") if c.strip()]
    for c in codes:
        language_name(c)  # raises on unknown codes
        if "_" not in c:
            raise ValueError(f"{c!r} is not a FLORES-200 code (e.g. swh_Latn)")
    return codes


def parse_directions(spec: str, languages: Sequence[str]) -> list[tuple[str, str]]:
    """`a-b,c-*,*-d` or `all` -> ordered, de-duplicated (src, tgt) pairs; `*` and `all`
    range over `languages` (never src == tgt)."""
    if not spec.strip():
        raise ValueError("no directions given")
    out: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item == "all":
            pairs = [(s, t) for s in languages for t in languages if s != t]
        else:
            parts = item.split("-")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"direction {item!r} is not SRC-TGT (e.g. eng_Latn-swh_Latn, "
                                 "eng_Latn-*, *-swh_Latn, all)")
            srcs = languages if parts[0] == "*" else [parts[0]]
            tgts = languages if parts[1] == "*" else [parts[1]]
            pairs = [(s, t) for s in srcs for t in tgts if s != t]
            if parts[0] == parts[1] != "*":
                raise ValueError(f"direction {item!r} translates a language into itself")
        for s, t in pairs:
            parse_languages(f"{s},{t}")
            if (s, t) not in out:
                out.append((s, t))
    if not out:
        raise ValueError(f"directions {spec!r} expand to nothing (languages: {list(languages)})")
    return out


def direction_name(src: str, tgt: str) -> str:
    return f"{src}-{tgt}"
