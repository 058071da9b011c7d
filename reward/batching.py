"""One scorer shared by every caller (gRPC Score, HTTP), held a chunk at a time.

The models are not thread-safe, so one chunk is scored at a time; but a lock held for a
whole batch made every other call wait behind it (64 long texts held it for 36 s while
Health said serving). Here a batch is scored in chunks of `chunk_size` items, and the lock
is first come, first served (a plain `threading.Lock` is not fair: the thread that just
released it usually takes it again), so a small call waits for one chunk, not a batch.
Languages are resolved for the whole batch before any chunk is scored: an unknown one
fails the call before any work is done.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from reward.scorer import ItemScore, RawItem, RewardScorer, batch_metrics


class FairLock:
    """A FIFO lock: waiters get it in the order they asked. `queued()` counts them."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[object] = collections.deque()
        self._held = False

    def acquire(self) -> None:
        me = object()
        with self._cond:
            self._queue.append(me)
            self._cond.notify_all()  # wakes `wait_queued` watchers too
            while self._held or self._queue[0] is not me:
                self._cond.wait()
            self._queue.popleft()
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def queued(self) -> int:
        """Threads waiting for the lock (not counting the holder)."""
        with self._cond:
            return len(self._queue)

    def wait_queued(self, n: int, timeout: float | None = None) -> bool:
        """Blocks until at least `n` threads wait for the lock (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._queue) >= n, timeout)


class ChunkedScorer:
    """Scores batches chunk by chunk under one FairLock shared by every caller."""

    def __init__(self, scorer: RewardScorer, *, chunk_size: int = 32):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.scorer, self.chunk_size = scorer, chunk_size
        self.lock = FairLock()

    def score(self, items: Sequence[RawItem]) -> tuple[list[ItemScore], dict[str, float]]:
        """Every item's score and the batch metrics; raises UnknownLanguageError before
        scoring anything."""
        self.scorer.resolve_languages(items)
        scores: list[ItemScore] = []
        for start in range(0, len(items), self.chunk_size):
            with self.lock:
                scores += self.scorer.score(items[start:start + self.chunk_size])
        return scores, batch_metrics(scores)
