"""The status line: a structured :class:`Status` (what runs or what was made, then named notes) that the front
end renders, and the short failure texts shown where a part of a view could not be computed."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, replace

import numpy as np

SEP = " · "
REASON_CHARS = 200  # a reason shown in a panel's place: one readable line, not a traceback
DETAIL_CHARS = 2000  # the whole message, on hover: its hint (what to change) is often past the first line


@dataclass(frozen=True)
class Status:
    """One status line: ``text`` (what runs, or what was made and how long it took), then ``notes``, ``(key,
    text)`` pairs in order (the gaps, the trust panel, the curvature map), each replaced or removed by its key.
    ``stage``: the step that runs ("preview", "grid", "trust", ...); a script's log shows one line per stage."""

    text: str = ""
    notes: tuple = ()
    stage: str = ""

    def note(self, key, text) -> "Status":
        """This status with note ``key`` set to ``text`` (in its place, or last when new); an empty ``text``
        removes it."""
        notes = [(k, v) for k, v in self.notes if k != key or text]
        if text and not any(k == key for k, _ in notes):
            notes.append((key, text))
        notes = [(k, text if k == key else v) for k, v in notes]
        return replace(self, notes=tuple(notes))

    def get(self, key):
        return next((v for k, v in self.notes if k == key), None)

    def render(self) -> str:
        return SEP.join(p for p in (self.text, *(v for _, v in self.notes)) if p)

    def to_json(self) -> dict:
        return {"text": self.text, "notes": [[k, v] for k, v in self.notes], "stage": self.stage}

    def __str__(self):
        return self.render()


def gaps_text(losses) -> str:
    """'3 NaN, 5 inf points drawn as gaps' when there are any, else '': NaN/inf losses are data, say so."""
    losses = np.asarray(losses)
    n_nan, n_inf = int(np.isnan(losses).sum()), int(np.isinf(losses).sum())
    if not n_nan and not n_inf:
        return ""
    parts = [f"{n} {k}" for n, k in ((n_nan, "NaN"), (n_inf, "inf")) if n]
    return f"{', '.join(parts)} point{'s' if n_nan + n_inf > 1 else ''} drawn as gaps"


def gaps_note(losses) -> str:
    """:func:`gaps_text` as the tail of a status line (' · 3 NaN ...'), '' without gaps."""
    text = gaps_text(losses)
    return SEP + text if text else ""


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


def current_status_log():
    return _STATUS_LOG.get()
