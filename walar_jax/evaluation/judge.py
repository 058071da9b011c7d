"""LLM-as-judge over any OpenAI-compatible chat-completions endpoint (off by default).

Each (model, prompt) is sent once: answers are kept in an append-only JSONL cache, so a
rerun or a resumed evaluation pays for nothing twice. Transient failures (connection
errors, HTTP 408/409/429/5xx, an answer without a score) are retried with backoff.
With `guided_regex`, the server is asked to decode only answers matching it (vLLM's
structured outputs), so even a small judge model answers in the expected format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from walar_jax.prompts import language_name

# A 0-100 direct-assessment rubric in the style of GEMBA-DA, as in the paper's judge.
RUBRIC = (
    "Score the following translation from {src} to {tgt} with respect to the source text "
    "on a continuous scale from 0 to 100. 0 means no meaning is preserved or the "
    "translation is not in {tgt}; 33 means some meaning is preserved; 66 means most meaning "
    "is preserved with few grammar mistakes; 100 means perfect meaning and grammar.\n\n"
    "{src} source: \"{source}\"\n{tgt} translation: \"{hypothesis}\"\n\n"
    "Answer with the score only (a number from 0 to 100)."
)
RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)
_SCORE = re.compile(r"\b(100(?:\.0+)?|\d{1,2}(?:\.\d+)?)\b")


class JudgeError(RuntimeError):
    """The endpoint failed for good, or never answered with a score."""


def parse_score(text: str) -> float | None:
    m = _SCORE.search(text or "")
    return float(m.group(1)) if m else None


def _http_reason(err: urllib.error.HTTPError) -> str:
    """`HTTP 404 (NotFoundError): The model ... does not exist.` from an OpenAI-style error
    body; the raw body (cut) when it is not one."""
    raw = err.read()
    try:
        e = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        e = None
    if isinstance(e, dict) and "message" in e:
        return f"HTTP {err.code} ({e.get('type', 'error')}): {str(e['message'])[:300]}"
    if isinstance(e, str):  # {"error": "Unauthorized"}, as vLLM answers a wrong key
        return f"HTTP {err.code}: {e[:300]}"
    return f"HTTP {err.code}: {raw[:200]!r}"


class Judge:
    """`Judge(base_url, model, api_key, cache_path).score(source, hyp, src, tgt)` -> 0-100."""

    def __init__(self, base_url: str, model: str, api_key: str | None, cache_path: str, *,
                 max_attempts: int = 5, base_delay_s: float = 1.0, timeout_s: float = 60.0,
                 guided_regex: str | None = None):
        """`guided_regex` is sent as vLLM's `structured_outputs: {"regex": ...}` (vLLM >=
        0.10.2; older releases took `guided_regex`, OpenAI's API takes neither)."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--judge_url {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.guided_regex = model, api_key, guided_regex or None
        self.max_attempts, self.base_delay_s, self.timeout_s = max_attempts, base_delay_s, timeout_s
        self.cache_path = cache_path
        self.cache: dict[str, dict] = {}
        self.requests = 0  # HTTP requests actually sent (cache misses and retries)
        self._lock = threading.Lock()
        if os.path.isfile(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self.cache[row["key"]] = row

    def _key(self, prompt: str) -> str:
        # a constrained answer is another answer; unconstrained keys stay as they were
        parts = [self.model, prompt] + ([self.guided_regex] if self.guided_regex else [])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _post(self, prompt: str) -> str:
        request = {"model": self.model, "temperature": 0, "max_tokens": 16,
                   "messages": [{"role": "user", "content": prompt}]}
        if self.guided_regex:
            request["structured_outputs"] = {"regex": self.guided_regex}
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with self._lock:
            self.requests += 1
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        try:
            return data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url} answered without choices[0].message.content: "
                             f"{str(data)[:200]}") from None

    def ask(self, prompt: str) -> float:
        """The score for one prompt: from the cache, or from the endpoint (retried)."""
        key = self._key(prompt)
        if key in self.cache:
            return self.cache[key]["score"]
        last = ""
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.base_delay_s * 2 ** (attempt - 1))
            try:
                answer = self._post(prompt)
            except urllib.error.HTTPError as err:
                last = _http_reason(err)
                if err.code not in RETRY_STATUS:
                    raise JudgeError(f"{self.url}: {last}") from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            score = parse_score(answer)
            if score is None:
                last = f"answer without a 0-100 score: {answer[:100]!r}"
                continue
            self._remember(key, score, answer)
            return score
        raise JudgeError(f"{self.url} failed {self.max_attempts} times; last: {last}")

    def _remember(self, key: str, score: float, answer: str) -> None:
        row = {"key": key, "model": self.model, "score": score, "answer": answer}
        with self._lock:
            self.cache[key] = row
            os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
            with open(self.cache_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    @staticmethod
    def prompt(source: str, hypothesis: str, src: str, tgt: str) -> str:
        return RUBRIC.format(src=language_name(src), tgt=language_name(tgt), source=source,
                             hypothesis=hypothesis)

    def score(self, source: str, hypothesis: str, src: str, tgt: str) -> float:
        return self.ask(self.prompt(source, hypothesis, src, tgt))

    def mean(self, rows: list[dict], workers: int = 1) -> float:
        """Mean judge score of hypothesis rows (empty hypotheses score 0 unasked); distinct
        prompts go out `workers` at a time, each once."""
        prompts = [self.prompt(r["source"], r["hypothesis"], r["src_lang"], r["tgt_lang"])
                   if r["hypothesis"].strip() else None for r in rows]
        unique = sorted({p for p in prompts if p is not None})
        with ThreadPoolExecutor(max(1, workers)) as pool:
            scores = dict(zip(unique, pool.map(self.ask, unique)))
        vals = [scores[p] if p is not None else 0.0 for p in prompts]
        return sum(vals) / len(vals)
