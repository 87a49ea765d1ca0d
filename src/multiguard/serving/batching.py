"""The inference queue of ``multiguard serve``: one model, one worker thread, a bounded queue of jobs.

Requests put a :class:`Job` (a batch of images and its certificate settings) on the queue and await its answer;
the worker runs the jobs one after the other on the one model. A full queue refuses a job at once
(:class:`QueueFullError`, the server's 503); a job whose deadline passed before the worker reached it is dropped
(its request has already been answered with the time limit).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InferenceQueue", "Job", "QueueFullError"]


class QueueFullError(RuntimeError):
    """The queue holds its maximum of waiting jobs."""


@dataclass
class Job:
    """One request's work: ``run()`` is called on the worker thread; its result (or exception) resolves
    ``future`` on the event loop ``loop``."""

    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deadline: float  # time.monotonic() after which the job is not started
    queued_at: float = field(default_factory=time.monotonic)


class InferenceQueue:
    """A bounded FIFO of :class:`Job` served by one daemon worker thread (``max_waiting`` jobs may wait;
    the one running is not counted)."""

    def __init__(self, max_waiting: int) -> None:
        if max_waiting < 1:
            raise ValueError(f"max-queue: must be at least 1, got {max_waiting}")
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._work, name="multiguard-inference", daemon=True)
        self._thread.start()

    async def submit(self, run: Callable[[], Any], time_limit: float) -> Any:
        """Run ``run()`` on the worker and return its result; raises :class:`QueueFullError` when the queue is
        full and :class:`TimeoutError` when no answer came within ``time_limit`` seconds."""
        loop = asyncio.get_running_loop()
        job = Job(run, loop, loop.create_future(), time.monotonic() + time_limit)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFullError("the server's queue is full; try again shortly") from None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=time_limit)
        except TimeoutError:
            job.future.cancel()  # not started yet: the worker skips it; started: its result is dropped
            raise

    def waiting(self) -> int:
        """Jobs waiting for the worker (not counting the one it runs)."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Let the worker finish the job it runs, then stop (waiting jobs are not started)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if time.monotonic() > job.deadline or job.future.cancelled():
                continue
            try:
                result = job.run()
            except BaseException as error:  # noqa: BLE001 - handed to the request that asked
                job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
            else:
                job.loop.call_soon_threadsafe(_resolve, job.future, result, None)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
