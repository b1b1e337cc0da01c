"""The live widgets' base: :class:`LiveWidget` (a job streamed to the browser, see :mod:`.jobs`) and the helpers
every view uses.  The parts live beside it: :mod:`.bundle` (the front-end bundle and front-end detection),
:mod:`.browser` (checks of browser values), :mod:`.controls` (each view's controls spec), :mod:`.status` (the
structured status line and failure texts), :mod:`.jobs` (typed events, worker thread, job controller).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time

import anywidget
import ipywidgets
import numpy as np
import traitlets as t

from .._checks import check_int
from ..chooser import check_evaluator
from ..export import write_html
from .browser import Rejected
from .bundle import Bundle, esm_traits
from .controls import SEED_MAX, ControlSpec, check_normalization_choice, common_controls
from .jobs import Failed, JobController, Message, Start, handler_for, run_job
from .status import Status, current_status_log, status_log  # noqa: F401 -- status_log: scripts import it from here

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
    :class:`~landscape_widgets.driver.Execution`, which says it), when that is not the plain per-point loop on a
    CPU; empty for a loaded result."""
    return "" if result.execution is None else result.execution.note(result.device or "cpu")


def private_landscape(ls):
    """A shallow copy of ``ls`` with its own private model copy, so the widget's worker thread never shares a
    model copy with the user's own ``ls.plane()`` calls in the notebook (or with another widget)."""
    from ..landscape import Landscape
    if not isinstance(ls, Landscape):
        raise TypeError(f"ls must be a landscape_widgets.Landscape, got {type(ls).__name__}; "
                        "build one with lw.Landscape(model, loss_fn, data)")
    return ls.copy()


COMPUTE_KEYS = ("client", "evaluator")


def check_send_interval(value) -> float:
    """The widgets' ``send_interval``: a non-negative, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"send_interval must be a non-negative, finite number of seconds between partial results "
                         f"sent to the browser (0: every one), got {value!r}")
    return float(value)


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
    """Base class: a compute job streamed to the browser with preview, progress, cancellation and errors.

    A view declares its controls (``controls=``, a :class:`~.controls.ControlSpec`: every browser value is checked
    by it, and the front end builds its controls from it), its compute traits, ``_params`` (the settings of one
    job), ``_job`` (run in the worker thread, emitting :mod:`.jobs` events) and ``_event_handlers`` (event type ->
    handler, run on the kernel's main thread).  ``jobs``: the worker queue to submit to (a dashboard's shared one;
    default: the widget's own, started on first use).  ``send_interval``: the least seconds between two partial
    results sent to the browser (default ``SEND_INTERVAL_S``; 0 sends every one)."""

    _esm = t.Unicode("").tag(sync=True)
    _bundle = t.Instance(Bundle, allow_none=True).tag(sync=True, **ipywidgets.widget_serialization)
    _view = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    log_scale = t.Bool(True).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    _state = t.Unicode("preview").tag(sync=True)   # stale | preview | partial | done | error
    _status = t.Unicode("")  # the status line as text, for scripts and logs; the browser renders _status_line
    _status_line = t.Dict().tag(sync=True)  # the status line, structured: Status.to_json()
    _done = t.Int(0).tag(sync=True)
    _total = t.Int(0).tag(sync=True)
    _controls = t.Dict().tag(sync=True)  # what the front end may offer: the view's ControlSpec.to_json()

    #: traits whose change recomputes; subclasses set it
    _compute_traits: tuple = ()
    #: traits that make up what is drawn; a finished result re-sends all of them (see ``complete_sync``)
    _display_traits: tuple = ("_done", "_total", "_state", "_status_line", "error")

    def __init__(self, *, controls: ControlSpec | None = None, jobs=None, send_interval=None, **kwargs):
        self._send_interval = SEND_INTERVAL_S if send_interval is None else check_send_interval(send_interval)
        for k, v in esm_traits().items():
            kwargs.setdefault(k, v)
        self._ctl = JobController(self, worker=jobs)
        self._spec = controls if controls is not None else ControlSpec(common_controls())
        self.status_line = Status()
        self._browser_notes = []
        kwargs.setdefault("_controls", self._spec.to_json())
        super().__init__(**kwargs)
        self._handlers = self._event_handlers()
        self.observe(self._on_compute_trait, names=list(self._compute_traits))
        log = current_status_log()
        if log is not None:
            self._logged = None
            self.observe(lambda change: self._log_status(log), names=["_state", "_status"])

    # -- the job controller's state, under the names scripts and tests read ---------------------------------
    _generation = property(lambda self: self._ctl.generation)
    _finished = property(lambda self: self._ctl.finished)

    @property
    def _jobs(self):
        """The worker queue jobs go to (None until the first job in a running event loop)."""
        return self._ctl.worker

    @_jobs.setter
    def _jobs(self, worker):
        self._ctl.worker = worker

    def _log_status(self, log):
        # one line per state, and per stage ("Lanczos (top)", ...): not one per tile
        key = (self._state, self.status_line.stage if self._state != "done" else self._status)
        if key != self._logged and self._status:
            self._logged = key
            log(self, self._status)

    def _set_status(self, status: Status):
        """Show ``status`` (a :class:`Status`; text: one without notes)."""
        if isinstance(status, str):
            status = Status(status)
        self.status_line = status
        self._status_line = status.to_json()
        self._status = status.render()

    # -- browser input ---------------------------------------------------------------------------------------
    def _browser_check(self, name, value):
        """Return (value, note) for a browser value of control ``name`` or raise Rejected (the controls spec)."""
        return self._spec.check(name, value)

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
        rejected = [name for name in rejected if name in self.keys]
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
        """Run in the worker thread: ``emit(event)`` (:mod:`.jobs` events, or the view's own); check ``cancel``
        between tiles."""
        raise NotImplementedError

    def _event_handlers(self) -> dict:
        """Event type -> ``handler(event, params, t0)`` (``t0``: when the job started), run on the kernel's main
        thread; a subclass extends its parent's."""
        return {Start: self._on_start, Failed: self._on_failed}

    def _reset_partial(self):
        """Forget the partial results of the previous generation (subclasses)."""

    def _schedule(self):
        self._reset_partial()
        gen, cancel = self._ctl.begin()
        params = self._params()
        # a browser note (clamped value) stays visible for the computation it caused; anything else is cleared
        self.error = "; ".join(self._browser_notes)
        self._browser_notes = []
        if self._ctl.running_loop() is not None:  # what is on screen is no longer current: say so
            self._handle(Message(gen, Start(), params, time.perf_counter()))
        self._ctl.submit(self._run, gen, params, cancel, lambda msg: self._handle(msg))

    def _run(self, gen, params, cancel, post):
        run_job(self._job, gen, params, cancel, post)

    def _drain(self):
        self._ctl.drain(self._handle)

    def _handle(self, msg: Message):
        if not self._ctl.accept(msg):
            return  # the end of a job, or stale: a newer change owns the display
        handler = handler_for(self._handlers, msg.event)
        if handler is not None:
            handler(msg.event, msg.params, msg.t0)

    def _on_start(self, event, params, t0):
        with self.hold_sync():  # until the preview arrives
            self._state = "stale"
            self._done = 0
            self._set_status(Status(self._pending_status(params), stage="start"))

    def _on_failed(self, event, params, t0):
        exc = event.error
        with self.hold_sync():
            self._state = "error"
            self.error = f"{type(exc).__name__}: {exc}"
            self._set_status(Status("computation failed; change a control to try again", stage="failed"))

    @contextlib.contextmanager
    def complete_sync(self):
        """``hold_sync`` whose one message carries every display trait, changed or not: a reader that missed
        earlier messages (nbclient records none between cells; a view opened later) still gets a consistent
        final state."""
        with self.hold_sync():
            yield
            # ipywidgets collects the held changes in this set; adding the display traits sends them in the same
            # message (a second message of every array would double what a finished result sends)
            pending = getattr(self, "_states_to_send", None)
            if isinstance(pending, set):
                pending.update(self._display_traits)
        if not isinstance(pending, set):  # another ipywidgets: one extra message instead
            self.send_state(list(self._display_traits))

    def wait(self, timeout=None) -> "LiveWidget":
        """Block until the latest computation has finished (for scripts and notebooks run top to bottom).

        Inside a kernel the results are applied here, on the main thread, as they arrive."""
        self._ctl.wait(self._handle, timeout)
        return self

    def close(self):
        if hasattr(self, "_ctl"):  # close() also runs from __del__ of a widget whose __init__ failed
            self._ctl.close()
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
