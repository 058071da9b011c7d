"""One language registry for the reward service.

Accepts FLORES-200 codes (`swh_Latn`), ISO 639-1/3 codes (`sw`, `swh`, `swa`) and English
names (`Swahili`), and reads the labels of both fastText identifiers: GlotLID
(`__label__swh_Latn`) and lid.176 (`__label__sw`). Whether a label names a target is
decided one of two ways (`LabelMatcher`):
- `walar`: WALAR's own label tables (protos/languages.py), with their accidents fixed;
- `group`: by macrolanguage group (ISO 639-3 individual codes such as `cmn`, `arb`, `swh`
  belong to `zho`, `ara`, `swa`) and script, because identifiers and datasets disagree on
  which of the two codes they use.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from protos.languages import Language, languages, walar_label_code

# Macrolanguage -> individual languages that identifiers use interchangeably with it.
MACRO_GROUPS: dict[str, tuple[str, ...]] = {
    "zho": ("cmn",), "ara": ("arb",), "swa": ("swh",), "nep": ("npi",), "fas": ("pes",),
    "msa": ("zsm",), "est": ("ekk",), "lav": ("lvs",), "uzb": ("uzn",), "aze": ("azj",),
    "mon": ("khk",), "orm": ("gaz",), "pus": ("pbt",), "sqi": ("als",), "yid": ("ydd",),
    "grn": ("gug",), "que": ("quy",), "kur": ("kmr",), "tgl": ("fil",), "nor": ("nob",),
    "mlg": ("plt",), "ori": ("ory",), "kau": ("knc",), "ful": ("fuv",), "din": ("dik",),
}
_GROUP_OF = {member: macro for macro, members in MACRO_GROUPS.items() for member in members}
# Han script variants: a `zho_Hans` target is satisfied by a `cmn_Hani` label.
_HAN = frozenset({"Hani", "Hans", "Hant"})


class UnknownLanguageError(ValueError):
    """A language string that the registry cannot resolve."""


def group_of(iso3: str) -> str:
    """The macrolanguage group key of an ISO 639-3 code (itself if it has none)."""
    return _GROUP_OF.get(iso3, iso3)


def scripts_compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or (a in _HAN and b in _HAN)


@dataclasses.dataclass(frozen=True)
class LabelKey:
    """What an identifier's label says: a language group, a script if given, and the
    FLORES code when the registry knows one (else the raw label)."""

    group: str
    script: str | None
    display: str

    def matches(self, lang: Language) -> bool:
        return self.group == group_of(lang.iso3) and scripts_compatible(self.script, lang.script)


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, Language]:
    """Lower-cased alias -> language. Earlier rows win, so `zho` means `zho_Hans`."""
    index: dict[str, Language] = {}

    def add(alias: str | None, lang: Language) -> None:
        if alias:
            index.setdefault(alias.lower(), lang)

    langs = languages()
    for lang in langs:
        add(lang.code, lang)
    for lang in langs:
        add(lang.iso3, lang)
        add(lang.iso1, lang)
        add(lang.name, lang)
        add(lang.name.split(" (")[0], lang)
    for macro, members in MACRO_GROUPS.items():
        for member in members:
            if member.lower() in index:
                add(macro, index[member.lower()])
    # lid.176 spells Norwegian `no`; keep Bokmal its target.
    add("no", index["nob"])
    return index


@functools.lru_cache(maxsize=1)
def _by_group() -> dict[str, tuple[Language, ...]]:
    groups: dict[str, list[Language]] = {}
    for lang in languages():
        groups.setdefault(group_of(lang.iso3), []).append(lang)
    return {g: tuple(v) for g, v in groups.items()}


def _pick(iso3: str, script: str | None) -> Language | None:
    """The language of an ISO 639-3 code's group, preferring the given script."""
    candidates = _by_group().get(group_of(iso3.lower()), ())
    exact = [lang for lang in candidates if lang.script == script]
    compatible = [lang for lang in candidates if scripts_compatible(script, lang.script)]
    found = exact or compatible
    return found[0] if found else None


def _shown(text, limit: int = 60) -> str:
    """A caller's string as an error shows it: clipped, so that a 10,000-character
    "language" cannot push an error past gRPC's 8 KiB trailer limit."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


def resolve(text: str) -> Language:
    """FLORES code, ISO 639-1/3 code or English name -> Language; raises naming it."""
    if not isinstance(text, str) or not text.strip():
        raise UnknownLanguageError(f"empty or non-string language {_shown(text)}")
    key = text.strip().replace("-", "_")
    lang = _index().get(key.lower())
    if lang is None and re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", key):  # e.g. cmn_Hans
        lang = _pick(*key.split("_"))  # same group, same or compatible script
    if lang is None:
        raise UnknownLanguageError(
            f"unknown language {_shown(text)}: use a FLORES-200 code (swh_Latn), an ISO 639-1/3 "
            "code (sw, swh) or an English name (Swahili)"
        )
    return lang


def parse_label(label: str) -> LabelKey:
    """A fastText label (`__label__eng_Latn` or `__label__en`) -> LabelKey."""
    raw = label.removeprefix("__label__")
    iso, script = raw.split("_", 1) if "_" in raw else (raw, None)  # GlotLID / lid.176
    lang = _index().get(iso.lower()) if len(iso) == 2 else _pick(iso, script)
    if lang is None:
        return LabelKey(group_of(iso.lower()), script, raw)
    display = lang.code if scripts_compatible(script, lang.script) else raw
    return LabelKey(group_of(lang.iso3), script, display)



# WALAR names Chinese labels "Chinese", its prompt name for Simplified Chinese only, so a
# Traditional Chinese target could never pass; an identifier label for Chinese (GlotLID
# `cmn_Hani`, lid.176 `zh`) is script-agnostic, so it names both.
_HAN_CODES = frozenset({"zho_Hans", "zho_Hant"})
LABEL_MATCH_MODES = ("walar", "group")


class LabelMatcher:
    """Decides whether an identifier label names a target language (`walar` or `group`,
    see the module docstring) and how the label is reported."""

    def __init__(self, mode: str = "walar"):
        if mode not in LABEL_MATCH_MODES:
            raise ValueError(f"unknown label match {mode!r}: use one of {LABEL_MATCH_MODES}")
        self.mode = mode
        self._walar = functools.lru_cache(maxsize=None)(walar_label_code)
        self._group = functools.lru_cache(maxsize=None)(parse_label)

    def matches(self, label: str, lang: Language) -> bool:
        if self.mode == "group":
            return self._group(label).matches(lang)
        code = self._walar(label)
        return code == lang.code or (code in _HAN_CODES and lang.code in _HAN_CODES)

    def display(self, label: str) -> str:
        """The FLORES-200 code the label stands for, else the raw label."""
        if self.mode == "group":
            return self._group(label).display
        return self._walar(label) or label.removeprefix("__label__")

    def can_label(self, labels: list[str], lang: Language) -> bool:
        """Whether any of `labels` names `lang`."""
        return any(self.matches(label, lang) for label in labels)
