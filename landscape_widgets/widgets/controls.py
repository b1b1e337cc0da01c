"""Controls specs: what each view's controls accept, declared once in Python.

A view builds a :class:`ControlSpec` from its limits and choices; the spec checks every value from the browser
(clamp or reject, see :mod:`.browser`) and is sent to the front end as the view's ``_controls`` trait, from which
the JS builds its sliders, number fields and selects.  The JS holds no limits or choices of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..directions import NORMALIZATIONS
from .browser import Rejected, browser_bool, browser_choice, browser_float, browser_int, browser_text

SEED_MAX = 2 ** 31 - 1  # stays an exact number in JavaScript
NORMALIZATION_CHOICES = tuple(NORMALIZATIONS)


@dataclass(frozen=True)
class IntRange:
    """A whole number in ``low..high``; the browser's value is clamped into it."""
    low: int
    high: int

    def check(self, value, name):
        return browser_int(value, name, self.low, self.high)


@dataclass(frozen=True)
class FloatRange:
    """A positive number in ``low..high``; the browser's value is clamped into it."""
    low: float
    high: float

    def check(self, value, name):
        return browser_float(value, name, self.low, self.high)


@dataclass(frozen=True)
class Pair:
    """Two numbers within ``-limit..limit`` (a curve's span); ``parse`` raises ValueError or TypeError."""
    limit: float
    parse: object

    low = property(lambda self: -self.limit)
    high = property(lambda self: self.limit)

    def check(self, value, name):
        try:
            return self.parse(value), None
        except (TypeError, ValueError) as exc:
            raise Rejected(str(exc)) from None


@dataclass(frozen=True)
class Choice:
    """One of ``options``, ``(value, label)`` pairs.  Whole-number values also come as text (a <select> sends
    text)."""
    options: tuple

    @classmethod
    def of(cls, values, labels=None):
        labels = labels or {}
        return cls(tuple((v, labels.get(v, str(v))) for v in values))

    @property
    def values(self):
        return [v for v, _ in self.options]

    def check(self, value, name):
        values = self.values
        if all(isinstance(v, int) for v in values):
            for v in values:
                if not isinstance(value, bool) and value in (v, str(v)):
                    return v, None
            raise Rejected(f"{name} must be {' or '.join(map(str, values))}, got {value!r}")
        return browser_choice(value, name, values)


@dataclass(frozen=True)
class Flag:
    """True or false."""

    def check(self, value, name):
        return browser_bool(value, name)


@dataclass(frozen=True)
class Text:
    """Text, cut to ``limit`` characters."""
    limit: int = 200

    def check(self, value, name):
        return browser_text(value, name, self.limit)


class ControlSpec:
    """A view's controls by trait name, plus whatever else the view's front end needs (``extra``: JSON-ready)."""

    def __init__(self, controls: dict, *, redraw=(), **extra):
        self.controls = dict(controls)
        self.redraw = tuple(redraw)
        self.extra = extra

    def check(self, name, value):
        """``(value, note)`` for a browser value of ``name``, or Rejected."""
        control = self.controls.get(name)
        if control is None:
            raise Rejected(f"{name} cannot be set from the browser")
        return control.check(value, name)

    def to_json(self) -> dict:
        """``{"limits": {name: [low, high]}, "choices": {name: [[value, label], ...]}, "redraw": [trait, ...],
        **extra}``: what the front end builds its controls from; ``redraw``: the traits whose change redraws the
        plot."""
        limits = {n: [c.low, c.high] for n, c in self.controls.items() if hasattr(c, "low")}
        choices = {n: [list(o) for o in c.options] for n, c in self.controls.items() if isinstance(c, Choice)}
        return {"limits": limits, "choices": choices, "redraw": list(self.redraw), **self.extra}


def common_controls(*, seed=False, normalization=False) -> dict:
    """The controls every view has (title, log scale), and the seed and normalization of the random ones."""
    out = {"title": Text(), "log_scale": Flag()}
    if seed:
        out["seed"] = IntRange(0, SEED_MAX)
    if normalization:
        out["normalization"] = Choice.of(NORMALIZATION_CHOICES)
    return out


def check_normalization_choice(value, name="normalization"):
    if value is None:
        return "filter"
    if value not in NORMALIZATION_CHOICES:
        raise ValueError(f"{name}={value!r} is not known; pass one of "
                         f"{', '.join(map(repr, NORMALIZATION_CHOICES))} or None for 'filter'")
    return value
