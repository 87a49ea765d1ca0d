"""The inference queue of ``multiguard serve``: one model, one worker thread, a bounded queue of jobs, and
dynamic batching of compatible jobs.

Requests put a :class:`Job` (a batch of images and its certificate settings) on the queue and await its answer.
The worker takes the oldest job; if the job has a merge ``key`` and the queue was given a ``merge`` function, it
also takes the jobs with the same key waiting behind it (oldest first, while their images stay within
``max_batch_images``; the jobs in between keep their places) and runs them all in one ``merge`` call, whose i-th
result answers the i-th job. Jobs without a key (a seeded request) always run alone, through their own ``run``.
If a merged call raises, each of its jobs is run alone, so that one bad request cannot fail the others.

A full queue refuses a job at once (:class:`QueueFullError`, the server's 503); a job whose deadline passed
before the worker reached it is dropped, merged or not (its request has already been answered with the time
limit).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InferenceQueue", "Job", "QueueFullError"]


class QueueFullError(RuntimeError):
    """The queue holds its maximum of waiting jobs."""


@dataclass
class Job:
    """One request's work: ``run()`` (called on the worker thread when the job runs alone) or its ``payload``
    handed to the queue's ``merge`` with those of the jobs merged with it; the result (or exception) resolves
    ``future`` on the event loop ``loop`` as ``(result, requests)``, ``requests`` being how many jobs shared the
    model call (1: alone)."""

    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deadline: float  # time.monotonic() after which the job is not started
    key: Hashable | None = None  # jobs with equal keys may be merged; None: never
    images: int = 1  # what the job counts against max_batch_images
    payload: Any = None  # what ``merge`` gets for this job
    queued_at: float = field(default_factory=time.monotonic)

    def dropped(self) -> bool:
        """Whether the job's request no longer waits for it (deadline passed, or its answer was given up)."""
        return time.monotonic() > self.deadline or self.future.cancelled()


class InferenceQueue:
    """A bounded FIFO of :class:`Job` served by one daemon worker thread (``max_waiting`` jobs may wait; those
    running are not counted). ``merge(payloads) -> results`` (one result per payload, in order) runs up to
    ``max_batch_images`` images of compatible jobs in one call; without it, or with ``max_batch_images`` 1,
    every job runs alone."""

    def __init__(self, max_waiting: int, *, max_batch_images: int = 1,
                 merge: Callable[[Sequence[Any]], Sequence[Any]] | None = None) -> None:
        if max_waiting < 1:
            raise ValueError(f"max-queue: must be at least 1, got {max_waiting}")
        if max_batch_images < 1:
            raise ValueError(f"max-batch-images: must be at least 1, got {max_batch_images}")
        self.max_waiting, self.max_batch_images, self._merge = max_waiting, max_batch_images, merge
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="multiguard-inference", daemon=True)
        self._thread.start()

    async def submit(self, run: Callable[[], Any], time_limit: float, *, key: Hashable | None = None,
                     images: int = 1, payload: Any = None) -> tuple[Any, int]:
        """Run the job (alone: ``run()``; merged: ``payload`` through ``merge``) and return ``(its result, the
        number of jobs in its model call)``; raises :class:`QueueFullError` when the queue is full and
        :class:`TimeoutError` when no answer came within ``time_limit`` seconds."""
        loop = asyncio.get_running_loop()
        job = Job(run, loop, loop.create_future(), time.monotonic() + time_limit, key, images, payload)
        with self._ready:
            if self._closing or len(self._jobs) >= self.max_waiting:
                raise QueueFullError("the server's queue is full; try again shortly")
            self._jobs.append(job)
            self._ready.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=time_limit)
        except TimeoutError:
            job.future.cancel()  # not started yet: the worker skips it; started: its result is dropped
            raise

    def waiting(self) -> int:
        """Jobs waiting for the worker (not counting those it runs)."""
        with self._ready:
            return len(self._jobs)

    def close(self) -> None:
        """Let the worker finish the call it runs, then stop (waiting jobs are not started)."""
        with self._ready:
            self._jobs.clear()
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout=60)

    def _work(self) -> None:
        while (group := self._take()) is not None:
            self._run(group)

    def _take(self) -> list[Job] | None:
        """The next call's jobs: the oldest live job and the live jobs of its key behind it that fit within
        ``max_batch_images`` (dropped jobs met on the way leave the queue); ``None`` once closing."""
        with self._ready:
            while True:
                while not self._jobs and not self._closing:
                    self._ready.wait()
                if self._closing:
                    return None
                first = self._jobs.popleft()
                if not first.dropped():
                    break
            group, images = [first], first.images
            if first.key is None or self._merge is None or images >= self.max_batch_images:
                return group
            kept: deque[Job] = deque()
            for job in self._jobs:
                if job.key == first.key and job.dropped():
                    continue
                if job.key == first.key and images + job.images <= self.max_batch_images:
                    group.append(job)
                    images += job.images
                else:
                    kept.append(job)
            self._jobs = kept
            return group

    def _run(self, group: list[Job]) -> None:
        if len(group) > 1:
            assert self._merge is not None
            try:
                results = list(self._merge([job.payload for job in group]))
                if len(results) != len(group):
                    raise RuntimeError(f"merge gave {len(results)} results for {len(group)} jobs")
            except Exception:  # noqa: BLE001 - each job alone then gets its own answer or error
                pass
            else:
                for job, result in zip(group, results, strict=True):
                    job.loop.call_soon_threadsafe(_resolve, job.future, (result, len(group)), None)
                return
        for job in group:
            if len(group) > 1 and job.dropped():
                continue
            try:
                result = job.run()
            except BaseException as error:  # noqa: BLE001 - handed to the request that asked
                job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
            else:
                job.loop.call_soon_threadsafe(_resolve, job.future, (result, 1), None)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
