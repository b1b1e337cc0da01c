"""The spread of a Hessian estimate over disjoint subsets of the data: the same quantity on each, its mean and
standard deviation (``lambda_max 0.92 ± 0.03 over 4 subsets of 256``).

A Hessian taken on a subset of ``n`` samples is a random matrix whose extreme eigenvalues and trace scatter around
those of the full-data Hessian (a subsampled Hessian, e.g. Roosta-Khorasani & Mahoney 2019, arXiv 1601.04737); the
spread over ``K`` disjoint subsets estimates that scatter, so a user sees when ``n`` is too small for the digits
they read.  The standard deviation is the sample one (``ddof=1``) over the ``K`` values: the scatter of one
subset's estimate, not of their mean (which is ``std / sqrt(K)``).
"""
from __future__ import annotations

import math

import numpy as np

SYMBOLS = {"lambda_max": "λmax", "lambda_min": "λmin", "trace_over_n": "tr(H)/N", "kappa_d1": "κ(d1)",
           "kappa_d2": "κ(d2)"}


def spread_of(values: list, samples: int, data: list) -> dict:
    """``values``: one dict (quantity -> float) per subset, in subset order; ``data``: each subset's description.
    Returns a JSON-ready dict: ``subsets``, ``samples``, ``data`` and per quantity ``values``, ``mean``, ``std``."""
    names = [n for n in values[0] if all(n in v for v in values)]
    quantities = {}
    for name in names:
        xs = np.array([float(v[name]) for v in values], dtype=np.float64)
        finite = xs[np.isfinite(xs)]
        quantities[name] = {"values": xs.tolist(),
                            "mean": float(finite.mean()) if len(finite) else math.nan,
                            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan}
    return {"subsets": len(values), "samples": int(samples), "data": list(data), "quantities": quantities}


def describe_spread(spread: dict, name: str = "lambda_max") -> str:
    """``"λmax 0.92 ± 0.03 over 4 subsets of 256"`` for one quantity of :func:`spread_of`'s dict."""
    q = spread["quantities"][name]
    return (f"{SYMBOLS.get(name, name)} {q['mean']:.3g} ± {q['std']:.2g} over {spread['subsets']} subsets of "
            f"{spread['samples']}")


__all__ = ["describe_spread", "spread_of"]
