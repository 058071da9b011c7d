"""A checkpoint's tokenizer without `transformers` (which would pull torch into the
trainer process): `tokenizer.json` through `tokenizers`, and the chat template of
`tokenizer_config.json` (or `chat_template.jinja`) rendered with jinja2, as
`transformers.apply_chat_template` does.

Prompts are encoded with `encode_prompt`, which puts the BOS token in front exactly where
the tokenizer's own encoding (transformers 5, and vLLM for text prompts) would, and never a
second one when the rendered chat template already starts with it (Gemma's does)."""

from __future__ import annotations

import json
import os
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _Tokenizer


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _token_str(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
    """Loads from an HF checkpoint directory; encodes, decodes and applies the template."""

    def __init__(self, directory: str):
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} has no tokenizer.json (a fast tokenizer is needed)")
        self._tok = _Tokenizer.from_file(path)
        cfg_path = os.path.join(directory, "tokenizer_config.json")
        cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        map_path = os.path.join(directory, "special_tokens_map.json")
        if os.path.exists(map_path):  # older checkpoints name their special tokens here
            cfg = {**json.load(open(map_path)), **cfg}
        template = cfg.get("chat_template")
        jinja_path = os.path.join(directory, "chat_template.jinja")
        if os.path.exists(jinja_path):
            template = open(jinja_path).read()
        if isinstance(template, list):  # named templates: use the default one
            template = {t["name"]: t["template"] for t in template}.get("default")
        self.chat_template = template
        self.special = {k: _token_str(cfg.get(k)) for k in
                        ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.bos_prefix = self._bos_prefix()
        self._compiled = None

    def _bos_prefix(self) -> list[int]:
        """The ids the tokenizer's own encoding puts before a text. transformers 5 takes
        them from tokenizer.json's post-processor (Llama 3's and Gemma's TemplateProcessing
        add BOS, Qwen's ByteLevel nothing) and drops tokenizer_config.json's
        `add_bos_token` / `add_eos_token` whenever a tokenizer.json exists."""
        plain = self._tok.encode("a", add_special_tokens=False).ids
        full = self._tok.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        raise ValueError("tokenizer.json's post-processor changes the text's own ids")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_prompt(self, text: str, *, bos: str = "auto") -> list[int]:
        """Token ids of a prompt string. `bos="auto"`: BOS in front where the tokenizer's
        own encoding adds it (and the text does not already begin with it); `"never"`:
        the text's ids alone (what WALAR's OpenRLHF does: `add_special_tokens=False`)."""
        ids = self.encode(text, add_special_tokens=False)
        if bos == "never":
            return ids
        if bos != "auto":
            raise ValueError(f"bos must be 'auto' or 'never', got {bos!r}")
        prefix = self.bos_prefix
        return ids if ids[:len(prefix)] == prefix else prefix + ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            **kwargs) -> str:
        """The prompt string for `messages`; extra kwargs (e.g. enable_thinking=False)
        are template variables."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        if self._compiled is None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.globals["raise_exception"] = _raise
            self._compiled = env.from_string(self.chat_template)
        variables = {k: v for k, v in self.special.items() if v is not None}
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **variables, **kwargs)
