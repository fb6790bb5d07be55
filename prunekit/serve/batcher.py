"""Requests of any task that arrive within a few milliseconds of each other, answered by one backbone pass.

::

    submit(task, image) ─► pending (a bounded deque: full -> QueueFullError, the server's 503)
                              │  the oldest request waits at most max_wait; a batch is at most max_batch requests
                              ▼
                           one worker thread: model(stack(images), tasks=[...])  (MultiTaskModel: mixed tasks)
                              │
                           each request's future gets its own top-k

The event loop only queues and wakes; the forward runs in one worker thread (torch uses its own threads inside it),
so the server keeps accepting requests while a batch runs, and the next batch gathers meanwhile. ``max_batch=1`` turns
batching off (one forward per request), which is what the serving benchmark compares against.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..errors import PrunekitError, UnknownNameError, did_you_mean
from ..tasks.model import MultiTaskModel

__all__ = ["Batcher", "QueueFullError", "Answer"]


class QueueFullError(PrunekitError):
    """Every place in the queue is taken: try again later."""


@dataclass(frozen=True)
class Answer:
    """One request's answer: its top classes ``(label, name, probability)`` and the size of the batch it rode in."""

    top: list[tuple[int, str, float]]
    batch: int


@dataclass
class _Request:
    task: str
    image: torch.Tensor  # (C, H, W), already transformed
    top_k: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers requests into mixed-task batches for a :class:`~prunekit.tasks.model.MultiTaskModel` (module docstring).

    Args:
        model: the tasks.
        max_batch: requests per forward at most (1: no batching).
        max_wait_ms: how long the oldest waiting request may wait for others.
        queue_size: requests waiting at most; one more is refused.
    """

    def __init__(self, model: MultiTaskModel, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 queue_size: int = 256):
        for name, value, least in (("max_batch", max_batch, 1), ("queue_size", queue_size, 1),
                                   ("max_wait_ms", max_wait_ms, 0)):
            if value < least:
                raise PrunekitError(f"{name}: expected at least {least}, got {value}")
        self.model = model
        self.max_batch, self.max_wait, self.queue_size = max_batch, max_wait_ms / 1000, queue_size
        self.batches = 0  # forwards run
        self.answered = 0  # requests answered by them
        self._pending: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Start gathering (in the running event loop)."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="prunekit-model")
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop gathering; requests still waiting are refused."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._pending:
            r = self._pending.popleft()
            if not r.future.done():
                r.future.set_exception(QueueFullError("the server is stopping"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, task: str, image: torch.Tensor, top_k: int) -> Answer:
        """Queue one image under ``task``; waits for its answer.

        Raises:
            QueueFullError: ``queue_size`` requests are already waiting.
            UnknownNameError: the task was removed before the request's batch ran.
        """
        if self._worker is None:
            raise PrunekitError("the batcher is not running: call start() first")
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(f"{self.queue_size} requests are waiting already; try again shortly")
        request = _Request(task, image, top_k, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._arrived.set()
        return await request.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._pending[0].arrived + self.max_wait
            while len(self._pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            batch = [r for r in batch if not r.future.done()]  # a client that went away cancels its future
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self._executor, self._forward, batch)
            except Exception as e:  # a failed forward fails its batch, not the server
                answers = [e] * len(batch)
            for r, a in zip(batch, answers):
                if r.future.done():
                    continue
                if isinstance(a, Exception):
                    r.future.set_exception(a)
                else:
                    r.future.set_result(a)

    @torch.no_grad()
    def _forward(self, batch: list[_Request]) -> list[Answer | Exception]:
        model = self.model
        with model.lock:  # a task added or removed between two batches, never during one
            known = set(model.tasks)
            run = [r for r in batch if r.task in known]
            answers: dict[int, Answer | Exception] = {
                id(r): UnknownNameError(f"task: {r.task!r} was removed;{did_you_mean(r.task, sorted(known))}")
                for r in batch if r.task not in known}
            if run:
                device = next(model.parameters()).device
                x = torch.stack([r.image for r in run]).to(device)
                out = model(x, tasks=[r.task for r in run])
                tops = out.top_k(max(r.top_k for r in run))
                for r, top in zip(run, tops):
                    answers[id(r)] = Answer(top[:r.top_k], len(run))
                self.batches += 1
                self.answered += len(run)
        return [answers[id(r)] for r in batch]
