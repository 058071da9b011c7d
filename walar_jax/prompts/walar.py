"""WALAR's prompts, as its published code builds and parses them (LeiLiLab/WALAR).

One format per base model, each the one its reward server (`openrlhf/cli/serve_rm.py`,
`get_source` / `get_source_and_target_languages`) parses back out of the rollout:

- Qwen (`walar_qwen`): the user turn of the chat template (thinking off) is the source
  text, then a line `Translate from {Src} to {Tgt}:`.
- LLaMAX (`walar_llamax`): LLaMAX's Alpaca format, with no chat template:
  `### Instruction:` / `Translate the following sentences from {Src} to {Tgt}.` /
  `### Input:` / text / `### Response:`.
- translategemma (`walar_gemma`): the checkpoint's own chat template, given WALAR's
  short language codes; the template writes `Please translate the following {Src} text
  into {Tgt}:` with the names of its own language table.

Language names are WALAR's (`protos.languages.WALAR_PROMPT_NAMES`: "Filipino",
"Chinese", ...); a language WALAR names nothing falls back to its FLORES-200 name.
`parse` reads a finished prompt of the first two kinds (the rows of WALAR's training
JSONL) back into (text, source code, target code).
"""

from __future__ import annotations

import functools
import re

from protos import languages

QWEN_USER = "{text}\nTranslate from {src} to {tgt}:"
LLAMAX = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n"
    "### Instruction:\nTranslate the following sentences from {src} to {tgt}.\n"
    "### Input:\n{text}\n### Response:"
)
# WALAR's short codes (`three2two` in code/utils.py) where they are not the table's
# ISO 639-1 / 639-3 code; translategemma gets these.
_GEMMA_CODES = {"nob_Latn": "no", "ckb_Arab": "ku", "nso_Latn": "ns", "zho_Hant": "zho_trad"}

# What WALAR's reward server matches (its patterns, restated): the Qwen direction line,
# and LLaMAX's instruction + input. `[^\n<]+` keeps a name on one line, out of markup.
_QWEN = re.compile(r"(?P<text>.*?)Translate from (?P<src>[^\n<]+) to (?P<tgt>[^\n<]+):\s*\Z",
                   re.S)
_LLAMAX = re.compile(r"### Instruction:\s*Translate the following sentences from "
                     r"(?P<src>[^\n<]+) to (?P<tgt>[^\n<]+)\.\s*### Input:\n(?P<text>.*?)"
                     r"### Response:\s*\Z", re.S)


def name(code: str) -> str:
    """The name WALAR's prompts give a FLORES-200 code (`tgl_Latn` -> Filipino)."""
    return languages.WALAR_PROMPT_NAMES.get(code) or languages.get(code).name


def gemma_code(code: str) -> str:
    """The language code WALAR hands translategemma's chat template (`swh_Latn` -> sw)."""
    return _GEMMA_CODES.get(code) or languages.get(code).short_code


@functools.cache
def _codes_by_name() -> dict[str, str]:
    out = {lang.name: lang.code for lang in languages.languages()}
    out.update({n: c for c, n in languages.WALAR_PROMPT_NAMES.items()})  # WALAR's first
    return out


def code_for_name(language: str) -> str:
    """The FLORES-200 code of a language name in a WALAR prompt (WALAR's names first,
    then the table's); raises ValueError naming an unknown one."""
    code = _codes_by_name().get(language.strip())
    if code is None:
        raise ValueError(f"unknown language name {language.strip()!r} (neither WALAR's "
                         f"prompt names nor {languages.TABLE.name})")
    return code


def parse(prompt: str) -> tuple[str, str, str] | None:
    """(source text, source code, target code) of a finished WALAR prompt (Qwen's or
    LLaMAX's format), None when the string is neither. Raises ValueError when it is one
    but names an unknown language or holds no text."""
    match = _LLAMAX.search(prompt) or _QWEN.fullmatch(prompt)
    if match is None:
        return None
    text = match["text"].strip()
    if not text:
        raise ValueError(f"WALAR prompt holds no source text: {prompt[:80]!r}")
    return text, code_for_name(match["src"]), code_for_name(match["tgt"])
