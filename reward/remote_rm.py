"""Reward functions that OpenRLHF and slime load from a file or module, for a reward
service that requires a token: their built-in HTTP clients send no Authorization header.

- OpenRLHF: `--remote_rm_url /path/to/walar-jax/reward/remote_rm.py` loads
  `reward_func(queries, prompts, labels)` from this file.
- slime: `--custom-rm-path reward.remote_rm.slime_rm` (walar-jax on PYTHONPATH); with
  `--group-rm` it gets the whole group in one request.

Both post to `$WALAR_REWARD_URL` (the HTTP base URL, e.g. http://127.0.0.1:8000) with the
token read from `$WALAR_REWARD_TOKEN_FILE` (a file only you can read) or taken from
`$WALAR_SERVICE_TOKEN`. A refused request raises with the server's reason; nothing here
ever makes up a reward. Standard library only (torch only to hand OpenRLHF tensors),
since it runs in the trainer's environment, not the reward service's.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

TIMEOUT_S = float(os.environ.get("WALAR_REWARD_TIMEOUT_S", "600"))


def _token() -> str | None:
    path = os.environ.get("WALAR_REWARD_TOKEN_FILE")
    if path:
        with open(path) as f:
            return f.read().strip() or None
    return os.environ.get("WALAR_SERVICE_TOKEN") or None


def post(path: str, body) -> object:
    """POSTs `body` as JSON to $WALAR_REWARD_URL + path; the decoded reply, or raises
    RuntimeError with the server's status and reason."""
    url = os.environ["WALAR_REWARD_URL"].rstrip("/") + path
    headers = {"Content-Type": "application/json"}
    token = _token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        reason = err.read()[:4000].decode("utf-8", "replace")
        raise RuntimeError(f"reward service {url}: HTTP {err.code}: {reason}") from None


def reward_func(queries, prompts, labels):
    """OpenRLHF's custom reward function: the service's /get_reward reply, as tensors
    when torch is there (OpenRLHF concatenates them across calls)."""
    out = post("/get_reward", {"query": list(queries),
                               "prompts": None if prompts is None else list(prompts),
                               "labels": None if labels is None else list(labels)})
    try:
        import torch
    except ImportError:
        return out
    return {"rewards": torch.tensor(out["rewards"]), "scores": torch.tensor(out["scores"]),
            "extra_logs": {k: torch.tensor(v) for k, v in out["extra_logs"].items()}}


async def slime_rm(args, samples, **kwargs):
    """slime's custom reward function: one float per sample (a list for a group)."""
    group = isinstance(samples, list)
    body = [{"prompt": s.prompt, "response": s.response, "label": s.label}
            for s in (samples if group else [samples])]
    out = await asyncio.to_thread(post, "/reward", body)
    rewards = [item["reward"] for item in out]
    return rewards if group else rewards[0]
