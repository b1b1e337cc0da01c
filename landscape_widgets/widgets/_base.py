"""Shared machinery of the live widgets: the one JS bundle, browser-value validation, and the recompute loop.

Recompute protocol.  A change of a compute trait (from the browser or from Python) bumps ``_generation``, sets
the cancel event of the running job and submits a new job to the widget's single (daemon) worker thread.  The job
computes a coarse preview, then the full grid tile by tile; it never touches a trait.  It puts
``(generation, kind, payload)`` messages into an inbox and asks the kernel's asyncio loop to drain it, so every
trait update (and so every comm message) happens on the kernel's main thread: background-thread comm sends are
unreliable under ipykernel 7 (ipywidgets #4001, #4020), and a computation on the main thread would queue every
browser message behind it (ipywidgets #1349).  Messages of an older generation are dropped, so a stale result is
never shown as current.  Without a running event loop (a plain script, the demo) the job runs synchronously.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import math
import numbers
import os
import queue
import sys
import threading
import time
import weakref

import anywidget
import ipywidgets
import numpy as np
import traitlets as t

from .._checks import check_int
from ..chooser import check_evaluator
from ..driver import Cancelled
from ..export import STUB, bundle_source, write_html

SEED_MAX = 2 ** 31 - 1  # stays an exact number in JavaScript
NORMALIZATION_CHOICES = ("filter", "layer", "model", "none")
SEND_INTERVAL_S = 0.15  # at most ~7 partial grids a second: the browser redraws, the kernel stays light


def f32(values) -> bytes:
    """float32 little-endian bytes of an array (what the browser reads as a Float32Array); NaN/inf kept."""
    return np.ascontiguousarray(np.asarray(values, dtype="<f4")).tobytes()


def finite(obj):
    """JSON-ready copy: NaN and inf become None (offline pages are strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def engine_note(result) -> str:
    """' on cuda:0, batched (triton)', ' on 4 Dask workers', ...: where and how a result ran (its
    :class:`~landscape_widgets.engine.Execution`), when that is not the plain per-point loop on a CPU."""
    done = result.execution
    if done is None:
        return ""
    if done.dask:
        n = done.dask["workers"]
        return f" on {n} Dask worker{'s' if n != 1 else ''}"
    device = str(result.meta.get("device", "cpu"))
    how = f"batched ({done.rule})" if done.rule else "per-point loop" if done.executor == "loop" else ""
    if device == "cpu" and not done.rule:
        return ""
    return f" on {device}" + (f", {how}" if how else "")


def gaps_note(losses) -> str:
    """' · 3 NaN, 5 inf points drawn as gaps' when there are any: NaN/inf losses are data, say so."""
    losses = np.asarray(losses)
    n_nan, n_inf = int(np.isnan(losses).sum()), int(np.isinf(losses).sum())
    if not n_nan and not n_inf:
        return ""
    parts = [f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "inf")) if n]
    return f" · {', '.join(parts)} point{'s' if n_nan + n_inf > 1 else ''} drawn as gaps"


REASON_CHARS = 200  # a reason shown in a panel's place: one readable line, not a traceback
DETAIL_CHARS = 2000  # the whole message, on hover: its hint (what to change) is often past the first line


def failure_reason(exc: BaseException, limit: int = REASON_CHARS) -> str:
    """'RuntimeError: <first line of the message>', at most ``limit`` characters: why an optional part of a
    view (a trust panel) could not be computed, short enough to stand where that part would be."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def failure_panel(exc: BaseException) -> dict:
    """What the browser shows in place of a panel that could not be computed: the reason, and the whole message
    for its tooltip."""
    detail = f"{type(exc).__name__}: {exc}".strip()
    return {"error": failure_reason(exc), "detail": detail[:DETAIL_CHARS]}


_SHARED_JOBS = contextvars.ContextVar("landscape_widgets_shared_jobs", default=None)


@contextlib.contextmanager
def shared_jobs(jobs):
    """Widgets created inside submit every job, their first included, to ``jobs`` (a dashboard's one worker)."""
    token = _SHARED_JOBS.set(jobs)
    try:
        yield
    finally:
        _SHARED_JOBS.reset(token)


_STATUS_LOG = contextvars.ContextVar("landscape_widgets_status_log", default=None)


@contextlib.contextmanager
def status_log(log):
    """Widgets created inside call ``log(widget, status)`` whenever their state changes (preview, partial, done,
    error) or their stage does: a script sees what runs while a constructor computes (outside a kernel it blocks)."""
    token = _STATUS_LOG.set(log)
    try:
        yield
    finally:
        _STATUS_LOG.reset(token)


class Bundle(anywidget.AnyWidget):
    """The front-end bundle, once per kernel.  In Jupyter each widget's ``_esm`` is a small loader that takes the
    bundle from this widget (a widget reference), so a notebook saved with its widget state stores the 1.8 MB
    bundle once however many widgets it shows."""

    _esm = t.Unicode("export default {};").tag(sync=True)
    source = t.Unicode("").tag(sync=True)


_BUNDLE = None


def shared_bundle() -> Bundle:
    global _BUNDLE
    if _BUNDLE is None or getattr(_BUNDLE, "comm", None) is None:  # first use, or closed
        _BUNDLE = Bundle(source=bundle_source())
    return _BUNDLE


def references_work() -> bool:
    """Whether each widget may load the bundle from the shared :class:`Bundle` (a widget reference, resolved by
    Jupyter's widget manager: JupyterLab, Notebook 7).  marimo renders each anywidget on its own and Colab's manager
    is its own: there, and with ``LANDSCAPE_WIDGETS_SHARED_BUNDLE=0``, every widget carries the whole bundle."""
    if os.environ.get("LANDSCAPE_WIDGETS_SHARED_BUNDLE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "google.colab" in sys.modules:
        return False
    marimo = sys.modules.get("marimo")
    try:
        return not (marimo is not None and marimo.running_in_notebook())
    except Exception:  # noqa: BLE001 -- an older marimo without the function: take the safe path
        return marimo is None


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


class Rejected(ValueError):
    """A value from the browser that cannot be used; the message is shown in the widget."""


# -- browser value checks: each returns the (possibly clamped) value and a note, or raises Rejected ---------------
def browser_int(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise Rejected(f"{name} must be a whole number between {low} and {high}, got {value!r}")
    if float(value) != int(value):
        raise Rejected(f"{name} must be a whole number, got {value!r}")
    v = int(value)
    if v < low or v > high:
        c = min(max(v, low), high)
        return c, f"{name}={v} is outside {low}..{high}; clamped to {c}"
    return v, None


def browser_float(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise Rejected(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v <= 0:
        raise Rejected(f"{name}={v} must be positive")
    if v < low or v > high:
        c = min(max(v, low), high)
        return c, f"{name}={v:g} is outside {low:g}..{high:g}; clamped to {c:g}"
    return v, None


def browser_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise Rejected(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value, None


def browser_bool(value, name):
    if not isinstance(value, bool):
        raise Rejected(f"{name} must be true or false, got {value!r}")
    return value, None


def browser_text(value, name, limit=200):
    if not isinstance(value, str):
        raise Rejected(f"{name} must be text, got {value!r}")
    return value[:limit], None


def private_landscape(ls):
    """A shallow copy of ``ls`` with its own private model copy, so the widget's worker thread never shares a
    model copy with the user's own ``ls.plane()`` calls in the notebook (or with another widget)."""
    from ..landscape import Landscape
    if not isinstance(ls, Landscape):
        raise TypeError(f"ls must be a landscape_widgets.Landscape, got {type(ls).__name__}; "
                        "build one with lw.Landscape(model, loss_fn, data)")
    clone = copy.copy(ls)
    clone.problem = ls.problem.copy()
    return clone


COMPUTE_KEYS = ("client", "evaluator")


def check_compute(compute) -> dict:
    """The widgets' ``compute`` option: where the full grids run (``client``: a ``dask.distributed.Client``,
    docs/scaling.md; ``evaluator``: "auto", "loop" or "vmap").  Previews always run in the kernel."""
    if compute is None:
        return {}
    if not isinstance(compute, dict):
        raise TypeError(f"compute must be a dict such as {{'client': dask_client}}, got {type(compute).__name__}")
    unknown = [k for k in compute if k not in COMPUTE_KEYS]
    if unknown:
        raise ValueError(f"compute has unknown key(s) {unknown}; pass only {', '.join(map(repr, COMPUTE_KEYS))} "
                         "(a store is per run: use ls.plane(store=...) for resumable runs)")
    if "evaluator" in compute:
        check_evaluator(compute["evaluator"])  # a bad name fails here, not in the worker thread
    return dict(compute)


class LiveWidget(anywidget.AnyWidget):
    """Base class: a compute job streamed to the browser with preview, progress, cancellation and errors."""

    _esm = t.Unicode("").tag(sync=True)
    _bundle = t.Instance(Bundle, allow_none=True).tag(sync=True, **ipywidgets.widget_serialization)
    _view = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    log_scale = t.Bool(True).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    _state = t.Unicode("preview").tag(sync=True)   # stale | preview | partial | done | error
    _status = t.Unicode("").tag(sync=True)
    _done = t.Int(0).tag(sync=True)
    _total = t.Int(0).tag(sync=True)

    #: traits whose change recomputes; subclasses set it
    _compute_traits: tuple = ()
    #: traits that make up what is drawn; a finished result re-sends all of them (see ``complete_sync``)
    _display_traits: tuple = ("_done", "_total", "_state", "_status", "error")

    def __init__(self, **kwargs):
        if references_work():
            kwargs.setdefault("_esm", bundle_source(STUB))
            kwargs.setdefault("_bundle", shared_bundle())
        else:
            kwargs.setdefault("_esm", bundle_source())
        self._generation = 0
        self._finished = 0
        self._cancel = threading.Event()
        self._inbox = queue.SimpleQueue()
        self._jobs = None  # queue of the widget's worker thread, started on first use
        self._loop = None
        self._browser_notes = []
        self._started = False
        super().__init__(**kwargs)
        self.observe(self._on_compute_trait, names=list(self._compute_traits))
        log = _STATUS_LOG.get()
        if log is not None:
            self._logged = None
            self.observe(lambda change: self._log_status(log), names=["_state", "_status"])

    def _log_status(self, log):
        # one line per state, and per stage ("Lanczos (top)", ...): not one per tile
        key = (self._state, self._status.split(":")[0] if self._state != "done" else self._status)
        if key != self._logged and self._status:
            self._logged = key
            log(self, self._status)

    # -- browser input ---------------------------------------------------------------------------------------
    def _browser_check(self, name, value):
        """Return (value, note) for a browser value of control ``name`` or raise Rejected; subclasses add theirs
        and end with ``super()._browser_check``."""
        if name == "log_scale":
            return browser_bool(value, name)
        if name == "title":
            return browser_text(value, name)
        if name == "seed" and "seed" in self.keys:
            return browser_int(value, name, 0, SEED_MAX)
        if name == "normalization" and "normalization" in self.keys:
            return browser_choice(value, name, NORMALIZATION_CHOICES)
        raise Rejected(f"{name} cannot be set from the browser")

    def set_state(self, sync_data):
        """Every value from the browser is validated and bounded here, before any work starts."""
        clean, notes, clamped, rejected = {}, [], [], []
        for name, value in sync_data.items():
            try:
                v, note = self._browser_check(name, value)
            except Rejected as exc:
                notes.append(str(exc))
                rejected.append(name)
                continue
            clean[name] = v
            if note:
                notes.append(note)
                clamped.append(note)
        if notes:
            self.error = "; ".join(notes)
        self._browser_notes = clamped  # shown with the computation they cause; rejections clear on the next one
        if clean:
            super().set_state(clean)
        if rejected:
            self.send_state(rejected)  # put the browser's control back to the kernel's value

    # -- recompute -------------------------------------------------------------------------------------------
    def _on_compute_trait(self, change):
        self._schedule()

    def _params(self) -> dict:
        raise NotImplementedError

    def _pending_status(self, params) -> str:
        return "computing…"

    def _job(self, params, emit, cancel):
        """Run in the worker thread: emit("preview"|"tile"|"done", payload); check ``cancel`` between tiles."""
        raise NotImplementedError

    def _apply(self, kind, payload, params, t0):
        """Run on the kernel's main thread: turn a job message (``t0``: when the job started) into trait updates."""
        raise NotImplementedError

    def _reset_partial(self):
        """Forget the partial results of the previous generation (subclasses)."""

    def _schedule(self):
        self._reset_partial()
        self._generation += 1
        gen = self._generation
        self._cancel.set()
        cancel = self._cancel = threading.Event()
        params = self._params()
        # a browser note (clamped value) stays visible for the computation it caused; anything else is cleared
        self.error = "; ".join(self._browser_notes)
        self._browser_notes = []
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._run(gen, params, cancel, self._handle)
            return
        self._loop = loop
        with self.hold_sync():  # what is on screen is no longer current: say so until the preview arrives
            self._state = "stale"
            self._done = 0
            self._status = self._pending_status(params)
        if self._jobs is None:
            self._jobs = _SHARED_JOBS.get() or start_worker(self)

        def post(msg):
            self._inbox.put(msg)
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed: wait() still drains the inbox
                pass
        self._jobs.put((self._run, (gen, params, cancel, post)))

    def _run(self, gen, params, cancel, post):
        t0 = time.perf_counter()
        try:
            if cancel.is_set():  # superseded while queued behind the previous job
                return
            self._job(params, lambda kind, payload=None: post((gen, kind, payload, params, t0)), cancel)
        except Cancelled:
            pass
        except Exception as exc:  # shown in the widget; the kernel carries on
            post((gen, "error", exc, params, t0))
        finally:
            post((gen, "end", None, params, t0))

    def _drain(self):
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(msg)

    def _handle(self, msg):
        gen, kind, payload, params, t0 = msg
        if kind == "end":
            self._finished = max(self._finished, gen)
            return
        if gen != self._generation:
            return  # stale: a newer change owns the display
        if kind == "error":
            with self.hold_sync():
                self._state = "error"
                self.error = f"{type(payload).__name__}: {payload}"
                self._status = "computation failed; change a control to try again"
            return
        self._apply(kind, payload, params, t0)

    @contextlib.contextmanager
    def complete_sync(self):
        """``hold_sync`` whose one message carries every display trait, changed or not: a reader that missed
        earlier messages (nbclient records none between cells; a view opened later) still gets a consistent
        final state."""
        with self.hold_sync():
            yield
            pending = getattr(self, "_states_to_send", None)
            if isinstance(pending, set):
                pending.update(self._display_traits)
        if not isinstance(pending, set):  # another ipywidgets: one extra message instead
            self.send_state(list(self._display_traits))

    def wait(self, timeout=None) -> "LiveWidget":
        """Block until the latest computation has finished (for scripts and notebooks run top to bottom).

        Inside a kernel the results are applied here, on the main thread, as they arrive."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._finished < self._generation:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"the computation did not finish within {timeout} s")
            try:
                msg = self._inbox.get(timeout=0.05 if left is None else min(0.05, left))
            except queue.Empty:
                continue
            self._handle(msg)
        self._drain()
        return self

    def close(self):
        if hasattr(self, "_cancel"):  # close() also runs from __del__ of a widget whose __init__ failed
            self._cancel.set()
        if getattr(self, "_jobs", None) is not None:
            self._jobs.put(None)
            self._jobs = None
        super().close()

    # -- offline export --------------------------------------------------------------------------------------
    def export_state(self) -> dict:
        """The widget's synced state for an offline page (no comm, no bundle), marked ``_offline``."""
        keys = [k for k in self.keys if not k.startswith("_model") and not k.startswith("_view_")
                and k not in ("_esm", "_bundle", "_css", "_anywidget_id", "layout", "comm", "tabbable", "tooltip",
                             "_dom_classes")]
        state = {k: getattr(self, k) for k in keys}
        state["_offline"] = True
        return state

    def to_html(self, path, *, title=None) -> str:
        """Write one self-contained offline HTML page (bundle, styles, data inline; no network requests)."""
        return write_html(path, [self], title=title)


def check_normalization_choice(value, name="normalization"):
    if value is None:
        return "filter"
    if value not in NORMALIZATION_CHOICES:
        raise ValueError(f"{name}={value!r} is not known; pass one of "
                         f"{', '.join(map(repr, NORMALIZATION_CHOICES))} or None for 'filter'")
    return value


class SeededWidget(LiveWidget):
    """A widget with a ``seed`` control (its private generators' seed; the user's global RNG is never used)."""

    seed = t.Int(0).tag(sync=True)

    @t.validate("seed")
    def _v_seed(self, proposal):
        return check_int(proposal["value"], "seed", low=0, high=SEED_MAX)


class RandomDirectionWidget(SeededWidget):
    """A widget whose directions are random: ``seed`` and ``normalization`` controls (Li et al. 2018, §4)."""

    normalization = t.Unicode("filter").tag(sync=True)

    @t.validate("normalization")
    def _v_normalization(self, proposal):
        return check_normalization_choice(proposal["value"])
