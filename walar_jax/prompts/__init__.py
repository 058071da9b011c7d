"""Translation prompts per model family, and the text of an answer that gets scored.
One module, used by the trainer (to build rollout prompts) and evaluate.py.

Templates: `walar_qwen`, `walar_llamax`, `walar_gemma` reproduce WALAR's prompts (see
`walar.py`; `walar` picks the one for the model family), the paper configs' default;
`chat`, `alpaca`, `translategemma` and `plain` are ours (`auto` picks one by family).
"""

from __future__ import annotations

import re

import jinja2

from protos import languages
from walar_jax.prompts import walar

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nTranslate the following sentences from {src} to {tgt}.\n\n"
    "### Input:\n{text}\n\n### Response:"
)
INSTRUCTION = "Translate the following text from {src} into {tgt}.\n{src}: {text}\n{tgt}:"
PLAIN = "{src}: {text}\n{tgt}:"
# translategemma's user turn as its chat template renders it (used when a checkpoint
# comes without the template), inside Gemma's turn markers. The template names each code
# from its own table, which plain English names like WALAR's match where we could check
# them (zh: Chinese, not FLORES' "Chinese (Simplified)"); so this fallback uses those.
TRANSLATEGEMMA = (
    "<bos><start_of_turn>user\n"
    "You are a professional {src} ({src_code}) to {tgt} ({tgt_code}) translator. Your goal is "
    "to accurately convey the meaning and nuances of the original {src} text while adhering "
    "to {tgt} grammar, vocabulary, and cultural sensitivities.\nProduce only the {tgt} "
    "translation, without any additional explanations or commentary. Please translate the "
    "following {src} text into {tgt}:\n\n\n{text}<end_of_turn>\n<start_of_turn>model\n"
)
WALAR_TEMPLATES = {"qwen3": "walar_qwen", "llama": "walar_llamax", "gemma3": "walar_gemma"}
TEMPLATES = ("walar", *WALAR_TEMPLATES.values(), "auto", "chat", "alpaca", "translategemma",
             "plain")
# What of an answer is scored: `whole` (WALAR: the whole response, stripped), `cut` (ours:
# think blocks and a repeated target label dropped, cut at a blank line or `\n###`),
# `auto` (whole under the walar templates, cut under the others).
EXTRACT_MODES = ("auto", "whole", "cut")


def language_code(code: str) -> str:
    """Short code for model templates that take codes (translategemma): `swh_Latn` -> sw."""
    return languages.get(code).short_code


def language_name(code: str) -> str:
    """English name of a FLORES-200 code (`swh_Latn` -> Swahili); names pass through."""
    if code in languages.by_code():
        return languages.get(code).name
    if "_" in code:
        raise ValueError(f"unknown FLORES-200 language code {code!r}")
    return code


def default_template(family: str) -> str:
    return {"qwen3": "chat", "llama": "alpaca", "gemma3": "translategemma"}.get(family, "plain")


def resolve_template(template: str, family: str | None) -> str:
    """A template name with `auto` (ours) and `walar` (WALAR's) resolved by model family."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; one of {TEMPLATES}")
    if template not in ("auto", "walar"):
        return template
    if family is None:
        raise ValueError(f"template {template!r} depends on the model family; pass family=")
    if template == "auto":
        return default_template(family)
    if family not in WALAR_TEMPLATES:
        raise ValueError(f"WALAR has no prompt for family {family!r}; one of {WALAR_TEMPLATES}")
    return WALAR_TEMPLATES[family]


def build_prompt(text: str, src: str, tgt: str, *, template: str, tokenizer=None,
                 family: str | None = None) -> str:
    """The prompt string the policy sees for translating `text` from `src` to `tgt`
    (FLORES-200 codes). Chat templates are applied with thinking disabled (Qwen3);
    `family` is needed only for `auto` and `walar`."""
    template = resolve_template(template, family)
    text = text.strip()
    if template in ("translategemma", "walar_gemma"):
        code = walar.gemma_code if template == "walar_gemma" else language_code
        return _translategemma(text, src, tgt, code(src), code(tgt), tokenizer, template)
    if template.startswith("walar"):
        fields = dict(text=text, src=walar.name(src), tgt=walar.name(tgt))
        if template == "walar_llamax":
            return walar.LLAMAX.format(**fields)
        return _chat(tokenizer, walar.QWEN_USER.format(**fields), template)
    fields = dict(text=text, src=language_name(src), tgt=language_name(tgt))
    if template == "alpaca":
        return ALPACA.format(**fields)
    if template == "plain":
        return PLAIN.format(**fields)
    return _chat(tokenizer, INSTRUCTION.format(**fields), template)


def _has_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _chat(tokenizer, content, template: str) -> str:
    if not _has_template(tokenizer):
        raise ValueError(f"template {template!r} needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)


def _translategemma(text, src, tgt, src_code, tgt_code, tokenizer, template) -> str:
    """translategemma's chat template takes the codes and the text as one content part."""
    if not _has_template(tokenizer):
        return TRANSLATEGEMMA.format(text=text, src=walar.name(src), tgt=walar.name(tgt),
                                     src_code=src_code, tgt_code=tgt_code)
    part = {"type": "text", "source_lang_code": src_code, "target_lang_code": tgt_code,
            "text": text}
    try:
        return tokenizer.apply_chat_template([{"role": "user", "content": [part]}],
                                             tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
    except jinja2.exceptions.UndefinedError as e:  # a code missing from its language table
        raise ValueError(f"template {template!r}: the checkpoint's chat template does not know "
                         f"{src_code!r} ({src}) or {tgt_code!r} ({tgt}): {e}") from e


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


def extract_translation(answer: str, tgt: str | None = None, *, template: str | None = None,
                        extract: str = "auto") -> str:
    """The text of an answer that is scored. `extract="whole"`: the whole response,
    stripped (WALAR's `get_target`); `"cut"`: think blocks and a repeated `Target:` label
    dropped, and everything after a new instruction header or a blank line; `"auto"`:
    whole under the walar templates, cut otherwise (and when no template is given)."""
    if extract not in EXTRACT_MODES:
        raise ValueError(f"unknown answer extraction {extract!r}; one of {EXTRACT_MODES}")
    if extract == "auto":
        extract = "whole" if template and template.startswith("walar") else "cut"
    if extract == "whole":
        return answer.strip()
    text = _THINK.sub("", answer).strip()
    if tgt:
        label = language_name(tgt) + ":"
        if text.startswith(label):
            text = text[len(label):].strip()
    text = re.split(r"\n\s*###|\n\s*\n", text, maxsplit=1)[0]
    return text.strip()
