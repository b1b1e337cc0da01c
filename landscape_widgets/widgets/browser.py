"""Checks of values that come from the browser: each returns the (possibly clamped) value and a note, or raises
:class:`Rejected`.  Python-side checks (``check_int`` and the traits' validators) raise ``ValueError`` instead."""
from __future__ import annotations

import math
import numbers


class Rejected(ValueError):
    """A value from the browser that cannot be used; the message is shown in the widget."""


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
