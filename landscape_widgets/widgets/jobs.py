"""The widgets' jobs: typed events, the worker thread and the job controller.

Protocol.  A change of a compute trait (from the browser or from Python) starts a new *generation*: the
controller sets the cancel event of the running job and submits a new job to the widget's single (daemon) worker
thread.  The job computes (a coarse preview, then the full result tile by tile) and never touches a trait; it
``emit``\\s :class:`Event`\\s, which the controller puts into an inbox and asks the kernel's asyncio loop to
deliver, so every trait update (and so every comm message) happens on the kernel's main thread: background-thread
comm sends are unreliable under ipykernel 7 (ipywidgets #4001, #4020), and a computation on the main thread would
queue every browser message behind it (ipywidgets #1349).  Events of an older generation are dropped, so a stale
result is never shown as current.  Without a running event loop (a plain script, the demo) the job runs
synchronously.  Each widget handles events by their type (:meth:`LiveWidget._event_handlers`); a view adds its own
event types beside the common ones here.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..driver import Cancelled as _CancelledError


class Event:
    """A message from a job to its widget.  ``kind`` names it (logs, tests); handlers are found by type."""

    kind = "event"


@dataclass(frozen=True)
class Start(Event):
    """A new generation began: what is shown is no longer current (applied at once, not by the worker)."""
    kind = "start"


@dataclass(frozen=True)
class Preview(Event):
    """A coarse result, shown until the full one arrives."""
    result: Any
    kind = "preview"


@dataclass(frozen=True)
class Tile(Event):
    """A tile of the full result (``part``: which of several results it belongs to)."""
    tile: Any
    part: int = 0
    kind = "tile"


@dataclass(frozen=True)
class Part(Event):
    """One of several full results finished (a curve of several)."""
    part: int
    result: Any
    kind = "part"


@dataclass(frozen=True)
class Progress(Event):
    """A step of a computation without tiles: ``info`` as the computation reports it."""
    info: Any
    kind = "progress"


@dataclass(frozen=True)
class Done(Event):
    """The full result."""
    result: Any
    kind = "done"


@dataclass(frozen=True)
class Failed(Event):
    """The job raised: shown in the widget; the kernel carries on."""
    error: BaseException
    kind = "failed"


@dataclass(frozen=True)
class Cancelled(Event):
    """The job stopped because a newer change superseded it."""
    kind = "cancelled"


@dataclass(frozen=True)
class Finished(Event):
    """The job's last message, whatever happened: ``wait()`` returns once the latest generation's arrived."""
    kind = "end"


class Message(NamedTuple):
    """An event of generation ``generation``, with the job's ``params`` and its start time ``t0``."""
    generation: int
    event: Event
    params: Any
    t0: float


def handler_for(handlers: dict, event: Event):
    """The handler of ``event``'s type, or of its nearest base type with one; None without one."""
    for cls in type(event).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


def start_worker(owner) -> queue.SimpleQueue:
    """One daemon thread running ``(fn, args)`` jobs in order; ``None`` stops it, and so does the owner's garbage
    collection.  A daemon, unlike a ThreadPoolExecutor worker, never holds up a kernel shutdown or restart
    while a long grid is still computing."""
    jobs = queue.SimpleQueue()

    def loop():
        while (item := jobs.get()) is not None:
            fn, args = item
            fn(*args)
            del fn, args, item  # hold no reference to the widget between jobs

    threading.Thread(target=loop, name="lw-widget", daemon=True).start()
    weakref.finalize(owner, jobs.put, None)
    return jobs


class SharedJobs:
    """A view's handle on a shared job queue (a dashboard's one worker): it submits jobs but cannot stop the
    worker (closing one view must not stall the others; the owner stops it)."""

    def __init__(self, jobs):
        self.jobs = jobs

    def put(self, item):
        if item is not None:
            self.jobs.put(item)


def run_job(job, gen, params, cancel, post):
    """Run ``job(params, emit, cancel)`` and post its events as generation ``gen``; end with :class:`Finished`."""
    t0 = time.perf_counter()

    def emit(event):
        post(Message(gen, event, params, t0))
    try:
        if cancel.is_set():  # superseded while queued behind the previous job
            emit(Cancelled())
            return
        job(params, emit, cancel)
    except _CancelledError:
        emit(Cancelled())
    except Exception as exc:  # shown in the widget; the kernel carries on
        emit(Failed(exc))
    finally:
        emit(Finished())


class JobController:
    """One widget's jobs: the generation counter, the cancel event of the running job, the inbox of events and
    the worker they run on (its own, started on first use, or a shared one)."""

    def __init__(self, owner, worker=None):
        self._owner = weakref.ref(owner)
        self.generation = 0
        self.finished = 0
        self.cancel = threading.Event()
        self.inbox = queue.SimpleQueue()
        self.worker = worker
        self.loop = None

    def begin(self):
        """A new generation: cancel the running job; returns ``(generation, cancel event)`` of the new one."""
        self.generation += 1
        self.cancel.set()
        self.cancel = threading.Event()
        return self.generation, self.cancel

    @staticmethod
    def running_loop():
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def submit(self, run, gen, params, cancel, handle) -> bool:
        """Run ``run(gen, params, cancel, post)`` on the worker, its messages delivered to ``handle`` on the
        event loop's thread; without a running loop run it here, now (returns False)."""
        loop = self.running_loop()
        if loop is None:
            run(gen, params, cancel, handle)
            return False
        self.loop = loop
        if self.worker is None:
            self.worker = start_worker(self._owner())
        inbox = self.inbox

        def post(msg):
            inbox.put(msg)
            try:
                loop.call_soon_threadsafe(drain)
            except RuntimeError:  # loop closed: wait() still drains the inbox
                pass

        def drain():
            self.drain(handle)
        self.worker.put((run, (gen, params, cancel, post)))
        return True

    def accept(self, msg: Message) -> bool:
        """Whether ``msg`` is to be shown: not a :class:`Finished` (counted here), not of an older generation."""
        if isinstance(msg.event, Finished):
            self.finished = max(self.finished, msg.generation)
            return False
        return msg.generation == self.generation

    def drain(self, handle):
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return
            handle(msg)

    def wait(self, handle, timeout=None):
        """Deliver messages here until the latest generation has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.finished < self.generation:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"the computation did not finish within {timeout} s")
            try:
                msg = self.inbox.get(timeout=0.05 if left is None else min(0.05, left))
            except queue.Empty:
                continue
            handle(msg)
        self.drain(handle)

    def close(self):
        self.cancel.set()
        if self.worker is not None:
            self.worker.put(None)
            self.worker = None
