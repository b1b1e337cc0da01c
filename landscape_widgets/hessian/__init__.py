"""Hessian of the full-data loss: products (``hvp``), extreme eigenpairs (``lanczos``), spectral density
(``slq``), trace (``hutchinson``), the ``Spectrum`` result (``spectrum``) and the trust panel (``trust``)."""
from .hvp import HessianOperator, NonFiniteHessian
from .spectrum import Spectrum, compute_spectrum

__all__ = ["HessianOperator", "NonFiniteHessian", "Spectrum", "compute_spectrum"]
