"""Requests built as OpenRLHF and slime build them, over tiny tokenizers in the real
formats (tests/walar_jax/tokenizer_fixtures.py)."""

from __future__ import annotations

import pathlib

from tests.walar_jax import tokenizer_fixtures as fx

WRITERS = {
    "qwen3": fx.write_qwen3,
    "llamax": fx.write_llama3,
    "gemma3": fx.write_gemma3,
}


def tokenizers(out: pathlib.Path) -> dict:
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(write(out / name))
            for name, write in WRITERS.items()}


def openrlhf_query(tok, prompt: str, response: str) -> str:
    """A query as OpenRLHF builds it (WALAR's fork, experience_maker.py `_generate_vllm`
    and `make_experience`): the prompt tokenized with add_special_tokens=False, the
    response's tokens with EOS appended when the model did not end with it, the sequence
    decoded with skip_special_tokens=False."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids += tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.batch_decode([ids], skip_special_tokens=False)[0]


def decoded(tok, text: str) -> str:
    """The text as it comes back through the tokenizer (what is scored)."""
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def openrlhf_post(url: str, data: dict, token: str | None, timeout: float = 600):
    """OpenRLHF's `request_api_wrapper` (openrlhf/utils/remote_rm_utils.py): one
    `requests.post(json=...)` with a JSON content type; the only addition is the bearer
    header a server with a token needs."""
    import requests

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url=url, json=data, headers=headers, timeout=timeout)
