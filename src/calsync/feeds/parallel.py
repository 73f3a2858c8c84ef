"""Rendering fragments in worker processes, for renders with many stale fragments (the cold
nightly rebuild: a million VEVENTs, CPU-bound, one core each).

:class:`RenderPool` is created once per rebuild and forks its workers (``fork`` context,
so they start at once with the renderer already imported) only when a render has at least
``min_fragments`` stale fragments: a small or dirty-feed render stays in-process. The
parent sends primary keys; a worker reads those rows itself (its own connection, what is
committed) and returns the fragment texts and keys (sending the rows would cost the parent
half of what rendering them does). What is written stays the parent's business (all or
nothing per chunk, and a fragment only while its item still has the key it was rendered
for: see :mod:`calsync.feeds.bulk`).

A worker that fails, or dies, fails the render that used it with :class:`FeedRenderError`,
whose message names no event detail (items of private users are masked everywhere else;
an exception's text could carry an item's fields). After a worker died the pool is spent:
later renders run in-process. Workers get SIGTERM when the parent dies (Linux
``PR_SET_PDEATHSIG``) and are shut down when the pool is closed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, TypeVar

from calsync.errors import CalsyncError

__all__ = ["ANSWER_SECONDS", "MIN_FRAGMENTS", "WORKER_BATCH", "FeedRenderError", "RenderPool",
           "worker_count"]

MIN_FRAGMENTS = 5000  # stale fragments in one render before it goes to the workers
WORKER_BATCH = 1000  # fragments per task sent to a worker
# A batch takes a worker well under a second; one that has not answered in this long is
# hung (e.g. on a lock another thread of the parent held when it forked): it is killed and
# its chunk fails, instead of the nightly rebuild waiting for ever.
ANSWER_SECONDS = 600.0

_Task = TypeVar("_Task")
_Result = TypeVar("_Result")


class FeedRenderError(CalsyncError):
    """Rendering fragments in a worker process failed (the render is abandoned)."""

    code = "feed_render_failed"


def worker_count() -> int:
    """One worker per core (none on a single core: the parent would only wait)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return cores if cores > 1 else 0


def _die_with_parent(parent: int) -> None:
    """Worker initializer: SIGTERM when the parent process dies (Linux)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(1)


def _run(render: Callable[[_Task], _Result], task: _Task) -> _Result:
    """Worker side: ``render(task)``; an exception leaves as its type name only."""
    try:
        return render(task)
    except Exception as exc:  # noqa: BLE001 - details stay in the worker
        raise FeedRenderError(f"{type(exc).__name__} while rendering fragments in "
                              f"worker process {os.getpid()}") from None


class RenderPool:
    """Worker processes for big fragment renders; use as a context manager.

    ``wants(n)`` says whether a render of ``n`` stale fragments should use the workers
    (the pool is forked on the first such render); ``submit(fn, task)`` runs ``fn(task)``
    in a worker and ``result(future)`` gives what it returned, or raises
    :class:`FeedRenderError` when the worker failed or died. ``fn`` must be picklable (a
    module-level function, or a ``functools.partial`` of one)."""

    def __init__(self, workers: int | None = None, min_fragments: int | None = None,
                 answer_seconds: float = ANSWER_SECONDS) -> None:
        self.workers = worker_count() if workers is None else workers
        self.min_fragments = MIN_FRAGMENTS if min_fragments is None else min_fragments
        self.answer_seconds = answer_seconds
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._started = False
        self.broken = False

    def wants(self, stale_fragments: int) -> bool:
        return self.workers > 0 and not self.broken and stale_fragments >= self.min_fragments

    @property
    def used(self) -> bool:
        """Whether worker processes were started."""
        return self._started

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._started = True
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("fork"),
                initializer=_die_with_parent, initargs=(os.getpid(),))
        return self._executor

    def submit(self, render: Callable[[_Task], _Result],
               task: _Task) -> concurrent.futures.Future[_Result]:
        try:
            return self._pool().submit(_run, render, task)
        except BrokenProcessPool:
            self._spent()
            raise FeedRenderError("a feed render worker process died") from None

    def result(self, future: concurrent.futures.Future[_Result]) -> _Result:
        """What the submitted task returned, or :class:`FeedRenderError`."""
        try:
            return future.result(timeout=self.answer_seconds)
        except FeedRenderError as exc:
            raise FeedRenderError(exc.message) from None
        except BrokenProcessPool:
            self._spent()
            raise FeedRenderError("a feed render worker process died") from None
        except TimeoutError:
            self._spent(kill=True)
            raise FeedRenderError(f"a feed render worker process did not answer within "
                                  f"{self.answer_seconds:g} s; the workers were stopped") \
                from None
        except Exception as exc:  # noqa: BLE001 - e.g. a row that could not be pickled
            raise FeedRenderError(f"{type(exc).__name__} in a feed render worker "
                                  "process") from None

    def cancel(self, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
        for future in futures:
            future.cancel()
        for future in futures:  # let running ones finish before the caller goes on
            try:
                future.result(timeout=self.answer_seconds)
            except TimeoutError:
                self._spent(kill=True)
            except Exception:  # noqa: BLE001 - the caller already has its error
                pass

    def _spent(self, kill: bool = False) -> None:
        self.broken = True
        if self._executor is not None:
            if kill:  # hung workers: ProcessPoolExecutor has no public way before 3.14
                for process in list(getattr(self._executor, "_processes", {}).values()):
                    with contextlib.suppress(OSError):
                        process.terminate()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
