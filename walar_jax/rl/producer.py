"""Rollouts made ahead of the trainer: `rollout.max_staleness` = s > 0.

A background thread generates and scores rollout batches while the trainer updates.
Rollout j (0-based, k rollouts per optimizer step) is generated with exactly the weights
after step max(0, j // k - s): the synchronous loop would use step j // k, so every batch
is at most s versions behind, and which weights make which batch never depends on
thread timing (a resumed run repeats an uninterrupted one). The trainer publishes host
tensors after each step; the thread installs them between generations (the engine
stops only for the install) and blocks while the weights it needs do not exist yet.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ProducerError(RuntimeError):
    """The producer thread failed; `cause` is what it raised."""

    def __init__(self, cause: BaseException):
        super().__init__(f"rollout producer failed: {type(cause).__name__}: {cause}")
        self.cause = cause


@dataclasses.dataclass
class Made:
    """One rollout batch and where it came from."""

    index: int          # rollout index j over the run
    end: int            # stream position after its tasks
    batch: dict         # this process's share (Trainer.collect_local) while stats is None,
    stats: dict | None  # then the joined host arrays and the rollout's metrics
    version: int        # engine weights version that generated it
    gen_step: int       # trainer step of those weights


def needed_step(j: int, per_step: int, staleness: int, floor: int = 0) -> int:
    """The trainer step whose weights generate rollout j (never below `floor`, the
    oldest weights the producer was started with)."""
    return max(floor, j // per_step - staleness)


class Producer:
    """`take()` returns rollouts in index order; `publish(step, tensors)` hands over the
    weights after `step`. `collect(version)` (the trainer's) makes one rollout batch with
    the engine at `version`; `install(tensors)` pushes weights and returns the version."""

    def __init__(self, *, collect: Callable, install: Callable, first_index: int,
                 position: int, per_step: int, staleness: int, installed_step: int,
                 version: int, weights: dict[int, object] | None = None):
        self.collect, self.install = collect, install
        self.per_step, self.staleness = per_step, staleness
        self.next_index = first_index
        self.ends = {first_index - 1: position}  # stream position after each rollout
        self.installed_step, self.version = installed_step, version
        self.ready: dict[int, Made] = {}
        # step -> host tensors not yet installed (older steps' weights a restart needs)
        self.weights: dict[int, object] = dict(weights or {})
        self.floor = min([installed_step, *self.weights])
        self.published = max([installed_step, *self.weights])
        self.error: BaseException | None = None
        self.wait_s = 0.0  # time take() spent blocked: the trainer waiting for rollouts
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def publish(self, step: int, tensors) -> None:
        with self._cv:
            self.weights[step] = tensors
            self.published = step
            self._cv.notify_all()

    def take(self, index: int) -> Made:
        t0 = time.perf_counter()
        with self._cv:
            while index not in self.ready and self.error is None:
                self._cv.wait()
            self.wait_s += time.perf_counter() - t0
            if index not in self.ready:
                raise ProducerError(self.error) from self.error
            return self.ready.pop(index)

    def done_before(self, index: int) -> tuple[list[Made], int]:
        """Waits until every rollout below `index` exists; returns those not taken and
        the stream position right after rollout index - 1."""
        with self._cv:
            while self.next_index < index and self.error is None:
                self._cv.wait()
            if self.error is not None:
                raise ProducerError(self.error) from self.error
            return [self.ready[j] for j in sorted(self.ready) if j < index], self.ends[index - 1]

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                step = needed_step(self.next_index, self.per_step, self.staleness, self.floor)
                with self._cv:
                    while not self._stop and self.published < step:
                        self._cv.wait()
                    if self._stop:
                        return
                    tensors = self.weights.pop(step, None)
                    for old in [s for s in self.weights if s < step]:
                        del self.weights[old]
                if step != self.installed_step:
                    if tensors is None:
                        raise RuntimeError(f"weights of step {step} were never published")
                    self.version = self.install(tensors)
                    self.installed_step = step
                batch, stats, end = self.collect(self.version)
                made = Made(self.next_index, end, batch, stats, self.version, step)
                with self._cv:
                    self.ready[made.index] = made
                    self.ends[made.index] = end
                    self.next_index += 1
                    self._cv.notify_all()
        except BaseException as err:  # noqa: BLE001 - handed to the trainer by take()
            log.exception("rollout producer failed")
            with self._cv:
                self.error = err
                self._cv.notify_all()
