"""The threads plain ``def`` handlers run in: a small executor per subscriber."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

__all__ = ["HandlerThreads"]

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[Future[Any], Callable[[], Any]]


class HandlerThreads(Executor):
    """Runs one subscriber's plain ``def`` handlers, at most ``max_workers`` at once.

    Each subscriber has its own, so a hung handler holds back only its own subscriber, and
    never the broker's own thread work (which has executors of its own, not the event loop's
    default one). Threads are started on demand and named ``localbroker-handler-<name>-<n>``.

    Not a ``ThreadPoolExecutor``: its threads are joined at interpreter exit (concurrent.futures
    registers that with ``threading._register_atexit``), so one handler hung in a call that
    never returns would keep the process from exiting long after ``close()`` returned. These
    are daemon threads: the broker waits for them a bounded time when it closes, then abandons
    those still running (see :meth:`shutdown`), and the interpreter exits without them.
    """

    def __init__(self, name: str, max_workers: int) -> None:
        self.name = name
        self.max_workers = max_workers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._running: set[Future[Any]] = set()
        self._started = 0
        # Released by a thread each time it finishes a job: a permit means a thread is free.
        self._idle = threading.Semaphore(0)
        self._shut_down = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"the handler threads of subscriber {self.name!r} are shut down")
            self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                self._started += 1
                thread = threading.Thread(
                    target=self._work,
                    name=f"localbroker-handler-{self.name}-{self._started}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()
        return future

    def running(self) -> list[Future[Any]]:
        """The futures of the jobs running now."""
        with self._lock:
            return list(self._running)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more jobs; let each thread exit once its current job returns.

        ``wait=True`` joins the threads, however long that takes; the broker passes
        ``wait=False`` and waits on :meth:`running` with a timeout instead.
        """
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        job[0].cancel()
            threads = list(self._threads)
            for _ in threads:
                self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                future, call = job
                del job
                if future.set_running_or_notify_cancel():
                    with self._lock:
                        self._running.add(future)
                    try:
                        result = call()
                    except BaseException as exc:  # SystemExit too: the awaiting task decides
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                    finally:
                        with self._lock:
                            self._running.discard(future)
                del future, call
                self._idle.release()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
