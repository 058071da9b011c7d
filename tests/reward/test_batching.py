"""The model lock is held per chunk and first come first served: a Health call and a small
Score return while a big batch is being scored; past --max_concurrent_scores a call gets
UNAVAILABLE at once. Ordering is forced with events, never with sleeps; the event waits
have a long guard so that a broken server fails the assertions instead of hanging."""

import threading

import grpc
import pytest

from protos import reward_pb2, reward_pb2_grpc
from protos.service import make_server
from reward.batching import FairLock
from reward.scorer import RewardConfig, RewardScorer
from reward.server import RewardServicer, parse_args

GUARD_S = 120.0  # only ever reached when the behaviour under test is broken


class HeldScorer(RewardScorer):
    """The real scorer without models (--no_lid --no_align --qe none) that records each
    chunk it is given and holds the one whose first source is `hold` until `go`."""

    def __init__(self, hold: str):
        super().__init__(config=RewardConfig(penalty=0.0))
        self.hold, self.calls = hold, []
        self.entered, self.go = threading.Event(), threading.Event()

    def score(self, items):
        tag = items[0].source.decode()
        self.calls.append(tag)
        if tag == self.hold:
            self.entered.set()
            self.go.wait(GUARD_S)
        return super().score(items)


@pytest.fixture
def serve():
    servers = []

    def start(flags: list[str], hold: str):
        args = parse_args(["--no_lid", "--no_align", "--qe", "none", *flags])
        scorer = HeldScorer(hold)
        servicer = RewardServicer(scorer, args)
        server, port = make_server("127.0.0.1", 0, max_workers=args.max_concurrent_scores + 4)
        reward_pb2_grpc.add_RewardServicer_to_server(servicer, server)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        return reward_pb2_grpc.RewardStub(channel), servicer, scorer

    yield start
    for server, channel in servers:
        channel.close()
        server.stop(0)


def _request(tags: list[str]) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(items=[
        reward_pb2.Item(source=t.encode(), hypothesis=b"x", src_lang="eng_Latn",
                        tgt_lang="fra_Latn") for t in tags])


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except Exception as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_health_and_a_small_call_are_answered_between_chunks_of_a_big_batch(serve):
    stub, servicer, scorer = serve(["--score_chunk", "2"], hold="big-0")
    big = [f"big-{i}" for i in range(6)]  # 3 chunks of 2
    big_thread, big_out = _in_thread(stub.Score, _request(big))
    assert scorer.entered.wait(GUARD_S)  # the big batch holds the lock for its 1st chunk
    health = stub.Health(reward_pb2.HealthRequest(), timeout=GUARD_S)
    assert health.serving and health.score_chunk == 2
    small_thread, small_out = _in_thread(stub.Score, _request(["small"]))
    assert servicer.lock.wait_queued(1, GUARD_S)  # the small call waits for the lock
    scorer.go.set()
    for thread in (big_thread, small_thread):
        thread.join(GUARD_S)
    # the small call went in after the big batch's first chunk, not after all of it
    assert scorer.calls == ["big-0", "small", "big-2", "big-4"]
    assert len(big_out["value"].results) == 6 and big_out["value"].metrics.n_items == 6
    assert len(small_out["value"].results) == 1


def test_calls_past_the_limit_are_unavailable_at_once_and_health_still_answers(serve):
    stub, servicer, scorer = serve(["--max_concurrent_scores", "1"], hold="big-0")
    big_thread, big_out = _in_thread(stub.Score, _request(["big-0", "big-1"]))
    assert scorer.entered.wait(GUARD_S)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(_request(["small"]), timeout=GUARD_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "--max_concurrent_scores" in err.value.details()
    assert stub.Health(reward_pb2.HealthRequest(), timeout=GUARD_S).serving
    scorer.go.set()
    big_thread.join(GUARD_S)
    assert len(big_out["value"].results) == 2
    assert len(stub.Score(_request(["after"]), timeout=GUARD_S).results) == 1  # slot freed


def test_an_unknown_language_fails_before_any_chunk_is_scored(serve):
    stub, _, scorer = serve(["--score_chunk", "1"], hold="none")
    request = _request(["a", "b", "c"])
    request.items[2].tgt_lang = "Elvish"
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request, timeout=GUARD_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item 2 tgt_lang" in err.value.details() and scorer.calls == []


def test_fair_lock_serves_waiters_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for k in range(5):
        def take(k=k):
            with lock:
                order.append(k)
        threads.append(threading.Thread(target=take))
        threads[-1].start()
        assert lock.wait_queued(k + 1, GUARD_S)  # k+1 waiters, in the order started
    lock.release()
    for thread in threads:
        thread.join(GUARD_S)
    assert order == [0, 1, 2, 3, 4] and lock.queued() == 0
    with pytest.raises(RuntimeError, match="unheld"):
        lock.release()
