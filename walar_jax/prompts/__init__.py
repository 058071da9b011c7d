"""Translation prompts per model family, and extraction of the translation from an
answer. One module, used by the trainer (to build rollout prompts) and evaluate.py."""

from __future__ import annotations

import re

from protos import languages

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nTranslate the following sentences from {src} to {tgt}.\n\n"
    "### Input:\n{text}\n\n### Response:"
)
INSTRUCTION = "Translate the following text from {src} into {tgt}.\n{src}: {text}\n{tgt}:"
PLAIN = "{src}: {text}\n{tgt}:"
# translategemma's user turn as its chat template renders it (used when a checkpoint
# comes without the template), inside Gemma's turn markers.
TRANSLATEGEMMA = (
    "<bos><start_of_turn>user\n"
    "You are a professional {src} ({src_code}) to {tgt} ({tgt_code}) translator. Your goal is "
    "to accurately convey the meaning and nuances of the original {src} text while adhering "
    "to {tgt} grammar, vocabulary, and cultural sensitivities.\nProduce only the {tgt} "
    "translation, without any additional explanations or commentary. Please translate the "
    "following {src} text into {tgt}:\n\n\n{text}<end_of_turn>\n<start_of_turn>model\n"
)
TEMPLATES = ("chat", "alpaca", "translategemma", "plain")


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


def build_prompt(text: str, src: str, tgt: str, *, template: str, tokenizer=None) -> str:
    """The prompt string the policy sees. `chat` applies the tokenizer's chat template
    (thinking disabled for Qwen3) to a one-turn instruction; `alpaca` is LLaMAX's format."""
    fields = dict(text=text.strip(), src=language_name(src), tgt=language_name(tgt))
    if template == "alpaca":
        return ALPACA.format(**fields)
    if template == "plain":
        return PLAIN.format(**fields)
    if template not in ("chat", "translategemma"):
        raise ValueError(f"unknown prompt template {template!r}; one of {TEMPLATES}")
    has_template = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    if template == "translategemma" and not has_template:
        return TRANSLATEGEMMA.format(**fields, src_code=language_code(src),
                                     tgt_code=language_code(tgt))
    if not has_template:
        raise ValueError(f"template {template!r} needs a tokenizer with a chat template")
    if template == "translategemma":  # its template takes codes and the text as one part
        messages = [{"role": "user", "content": [{
            "type": "text", "source_lang_code": language_code(src),
            "target_lang_code": language_code(tgt), "text": fields["text"]}]}]
    else:
        messages = [{"role": "user", "content": INSTRUCTION.format(**fields)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


def extract_translation(answer: str, tgt: str | None = None) -> str:
    """The translation inside an answer: drops think blocks, a repeated `Target:` label,
    and anything after a new instruction header or a blank-line-separated note."""
    text = _THINK.sub("", answer).strip()
    if tgt:
        label = language_name(tgt) + ":"
        if text.startswith(label):
            text = text[len(label):].strip()
    text = re.split(r"\n\s*###|\n\s*\n", text, maxsplit=1)[0]
    return text.strip()
