"""One place that builds the curvature operator a computation asks for (``curvature=``).

Every operator has :class:`~.hvp.HessianOperator`'s interface (``matmat_torch``, ``matvec``, ``hvps``,
``num_parameters``, ``progress``, ``running``, ...), so the solvers (Lanczos, SLQ, Hutch++) accept any of them.
"""
from __future__ import annotations

from .hvp import HessianOperator

CURVATURES = ("hessian",)


def check_curvature(curvature) -> str:
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is not known; pass one of {', '.join(map(repr, CURVATURES))}")
    return curvature


def make_operator(curvature, private, data, objective, **options):
    """The operator of ``curvature`` over ``data`` at the private copy's weights; ``options`` go to its class."""
    check_curvature(curvature)
    return HessianOperator(private, data, objective, **options)


__all__ = ["CURVATURES", "check_curvature", "make_operator"]
