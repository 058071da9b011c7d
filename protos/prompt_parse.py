"""Reading a translation rollout back out of text: the direction and source text in a
rendered prompt, and the response inside a decoded query (prompt + response, special
tokens included, as OpenRLHF's remote reward model receives it).

Used by the reward service's HTTP endpoint (OpenRLHF, slime), which gets text instead of
items. Pure Python (the reward and trainer environments both import it). It reads every
prompt format that `walar_jax.prompts.build_prompt` writes, the patterns restated here
(tests render each template and parse it back):

- `walar` (WALAR's Qwen prompt, in any chat template): the source text, then a last line
  `Translate from {Src} to {Tgt}:` (WALAR's `get_source_and_target_languages` pattern);
- `chat` (ours): `Translate the following text from {Src} into {Tgt}.` / `{Src}: text` /
  `{Tgt}:`;
- `alpaca` (LLaMAX's format, WALAR's and ours): `### Instruction:` / `Translate the
  following sentences from {Src} to {Tgt}.` / `### Input:` / text / `### Response:`;
- `translategemma` (WALAR's codes and ours): `You are a professional {Src} ({src}) to
  {Tgt} ({tgt}) translator. ... Please translate the following {Src} text into {Tgt}:`,
  three newlines, the text; the codes decide, the names are the fallback;
- `plain`: `{Src}: text` / `{Tgt}:` (no markup: best read with the prompt given apart).

Chat markup (Qwen's ChatML, Llama 3's headers, Gemma's turns) is taken off both sides.
The response is what follows the first assistant turn marker (or `### Response:`, or the
plain target label) up to the first end-of-turn or end-of-text token; a think block that
opens the assistant turn is dropped, as WALAR's Qwen pattern drops it. Language names are
WALAR's prompt names first, then the FLORES-200 table's (`protos/languages.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from protos import languages

FORMATS = ("walar", "chat", "alpaca", "translategemma", "plain")


class PromptParseError(ValueError):
    """The text holds no prompt of a known format, or names an unknown language."""


@dataclasses.dataclass(frozen=True)
class ParsedPrompt:
    """A prompt's format (one of FORMATS), its source text and FLORES-200 codes."""

    format: str
    source: str
    src_lang: str
    tgt_lang: str


@dataclasses.dataclass(frozen=True)
class ParsedQuery(ParsedPrompt):
    """A parsed prompt plus the response with the template's markup taken off."""

    response: str


@dataclasses.dataclass(frozen=True)
class _Chat:
    user: str         # opens the user turn
    user_end: str     # closes it
    assistant: str    # opens the assistant turn (the generation prompt)


CHATS = (
    _Chat("<|im_start|>user\n", "<|im_end|>", "<|im_start|>assistant\n"),          # Qwen
    _Chat("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>",
          "<|start_header_id|>assistant<|end_header_id|>\n\n"),                     # Llama 3
    _Chat("<start_of_turn>user\n", "<end_of_turn>", "<start_of_turn>model\n"),      # Gemma
)
BOS_TOKENS = ("<|begin_of_text|>", "<bos>", "<s>")
# The first of these ends a response (the model stopped there; the rest is padding).
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
              "<eos>", "</s>")

_NAME = r"[^\n<]+?"
_WALAR = re.compile(rf"\A(?P<text>.*)\nTranslate from (?P<src>{_NAME}) to (?P<tgt>{_NAME}):"
                    r"\s*\Z", re.S)
_OURS = re.compile(rf"\A\s*Translate the following text from (?P<src>{_NAME}) into "
                   rf"(?P<tgt>{_NAME})\.\n(?P=src): (?P<text>.*)\n(?P=tgt):\s*\Z", re.S)
_ALPACA = re.compile(rf"### Instruction:\s*Translate the following sentences from "
                     rf"(?P<src>{_NAME}) to (?P<tgt>{_NAME})\.\s*### Input:\n(?P<text>.*?)"
                     r"\s*### Response:\s*\Z", re.S)
_GEMMA = re.compile(r"You are a professional (?P<src>[^\n]+?) \((?P<src_code>[^\s()]+)\) to "
                    r"(?P<tgt>[^\n]+?) \((?P<tgt_code>[^\s()]+)\) translator\..*?Please "
                    r"translate the following [^\n]*? text into [^\n]*?:\n\n\n(?P<text>.*)\Z",
                    re.S)
_PLAIN_HEAD = re.compile(r"\A(?P<src>[^\n:<]+): ")
_LABEL_LINE = re.compile(r"\n(?P<name>[^\n:<]+):")
_THINK = re.compile(r"\A\s*<think>.*?</think>\s*", re.S)
# WALAR's short codes where they are not the table's ISO 639-1 / 639-3 code
# (walar_jax/prompts/walar.py `_GEMMA_CODES`, restated; a test keeps the two equal).
_WALAR_GEMMA_CODES = {"no": "nob_Latn", "ku": "ckb_Arab", "ns": "nso_Latn",
                      "zho_trad": "zho_Hant"}


@functools.cache
def _codes_by_name() -> dict[str, str]:
    out = {lang.name.lower(): lang.code for lang in languages.languages()}
    out.update({n.lower(): c for c, n in languages.WALAR_PROMPT_NAMES.items()})  # WALAR first
    return out


@functools.cache
def _codes_by_short_code() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for lang in languages.languages():  # table order: zh is zho_Hans first
        for key in dict.fromkeys((lang.short_code.lower(), lang.iso3.lower())):
            out.setdefault(key, []).append(lang.code)
    for key, code in _WALAR_GEMMA_CODES.items():
        out[key] = [code, *(c for c in out.get(key, ()) if c != code)]
    return {k: tuple(v) for k, v in out.items()}


def code_for_name(name: str) -> str:
    """FLORES-200 code of a language name in a prompt (WALAR's names, then the table's)."""
    code = _codes_by_name().get(name.strip().lower())
    if code is None:
        raise PromptParseError(f"unknown language name {name.strip()!r} in the prompt (neither "
                               f"WALAR's prompt names nor {languages.TABLE.name})")
    return code


def code_for_short_code(code: str, name: str) -> str:
    """FLORES-200 code of a translategemma language code (`sw`, `zh-Hans`, `zho-trad`);
    the name decides between the scripts a code has (`ace`: Arabic or Latin), and alone
    when the code is unknown."""
    key = code.strip().lower().replace("-", "_")
    candidates = _codes_by_short_code().get(key) or _codes_by_short_code().get(
        key.split("_")[0], ())
    named = _codes_by_name().get(name.strip().lower())
    if named in candidates or (named and not candidates):
        return named
    if candidates:
        return candidates[0]
    return code_for_name(name)  # raises, naming it


def _strip_bos(text: str) -> str:
    text = text.lstrip(" ")
    while True:
        for bos in BOS_TOKENS:
            if text.startswith(bos):
                text = text[len(bos):]
                break
        else:
            return text


def _user_content(prompt: str) -> str:
    """The first user turn's content when the prompt is in a chat template, else itself."""
    for chat in CHATS:
        start = prompt.find(chat.user)
        if start < 0:
            continue
        start += len(chat.user)
        end = prompt.find(chat.user_end, start)
        return prompt[start:] if end < 0 else prompt[start:end]
    for chat in CHATS:  # a generation prompt without a user marker: drop the assistant one
        if prompt.endswith(chat.assistant):
            return prompt[:-len(chat.assistant)]
    return prompt


def _format(content: str) -> ParsedPrompt | None:
    for name, pattern in (("walar", _WALAR), ("chat", _OURS), ("alpaca", _ALPACA)):
        m = pattern.search(content) if name == "alpaca" else pattern.match(content)
        if m:
            return ParsedPrompt(name, m["text"].strip(), code_for_name(m["src"]),
                                code_for_name(m["tgt"]))
    m = _GEMMA.search(content)
    if m:
        return ParsedPrompt("translategemma", m["text"].strip(),
                            code_for_short_code(m["src_code"], m["src"]),
                            code_for_short_code(m["tgt_code"], m["tgt"]))
    return _plain(content)


def _plain(content: str) -> ParsedPrompt | None:
    head = _PLAIN_HEAD.match(content)
    tail = re.search(r"\n(?P<tgt>[^\n:<]+):\s*\Z", content)
    if not head or not tail or tail.start() < head.end():
        return None
    try:
        src, tgt = code_for_name(head["src"]), code_for_name(tail["tgt"])
    except PromptParseError:
        return None  # two labels that are no language names: not a plain prompt
    return ParsedPrompt("plain", content[head.end():tail.start()].strip(), src, tgt)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Format, source text and FLORES-200 codes of a rendered prompt (the generation
    prompt, with or without its chat markup). Raises PromptParseError saying why."""
    if not isinstance(prompt, str):
        raise PromptParseError(f"a prompt is a string, not {type(prompt).__name__}")
    content = _user_content(_strip_bos(prompt))
    parsed = _format(content)
    if parsed is None:
        raise PromptParseError(f"no known translation prompt (formats: {', '.join(FORMATS)}) "
                               f"in {_clip(prompt)}")
    if not parsed.source:
        raise PromptParseError(f"the prompt holds no source text: {_clip(prompt)}")
    return parsed


def clean_response(response: str) -> str:
    """A response without chat markup: a leading think block (the empty one of Qwen3's
    thinking-off generation prompt, or the model's own) and everything from the first
    end-of-turn / end-of-text token on are dropped. An unclosed think block leaves ""."""
    text = response
    if text.lstrip().startswith("<think>"):
        m = _THINK.match(text)
        text = text[m.end():] if m else ""
    ends = [i for i in (text.find(t) for t in END_TOKENS) if i >= 0]
    return text[:min(ends)] if ends else text


def split_query(query: str, prompt: str | None = None) -> tuple[str, str]:
    """(prompt, response) of a decoded query. With `prompt` given and the query starting
    with it (BOS tokens aside) the split is exact; else it is after the first assistant
    turn marker, `### Response:` or the plain target label. Raises PromptParseError."""
    body = _strip_bos(query)
    if prompt is not None:
        head = _strip_bos(prompt)
        if head and body.startswith(head):
            return head, body[len(head):]
    for chat in CHATS:
        start = body.find(chat.user)
        if start < 0:
            continue
        end = body.find(chat.assistant, start)
        if end >= 0:
            end += len(chat.assistant)
            return body[:end], body[end:]
    alpaca = _ALPACA_SPLIT.search(body)
    if alpaca:
        return body[:alpaca.end()], body[alpaca.end():]
    head = _PLAIN_HEAD.match(body)
    for m in _LABEL_LINE.finditer(body, head.end() if head else 0):
        if head and m["name"].strip().lower() in _codes_by_name():
            return body[:m.end()], body[m.end():]
    raise PromptParseError(f"cannot tell the prompt from the response (no assistant turn, "
                           f"no '### Response:', no target label) in {_clip(query)}")


_ALPACA_SPLIT = re.compile(r"### Input:\n.*?### Response:", re.S)


def parse_query(query: str, prompt: str | None = None) -> ParsedQuery:
    """The direction, source text and response of a decoded prompt + response (special
    tokens included). Raises PromptParseError saying what could not be read."""
    if not isinstance(query, str):
        raise PromptParseError(f"a query is a string, not {type(query).__name__}")
    head, tail = split_query(query, prompt)
    parsed = parse_prompt(head)
    return ParsedQuery(**dataclasses.asdict(parsed), response=clean_response(tail))


def _clip(text: str, n: int = 120) -> str:
    return repr(text[:n] + ("..." if len(text) > n else ""))
