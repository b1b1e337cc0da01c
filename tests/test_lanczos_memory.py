"""The Hessian solvers hold at most their memory budget (plus a few vectors of products and temporaries), however
many products they make.  Counted deterministically: every tensor storage torch allocates during the call is
recorded (a TorchDispatchMode sees every op's outputs) and released when its last tensor dies, giving the high-water
mark of live torch bytes (numpy holds only the small projected matrix and the float64 start vector).  The operator
is a fake with a big ``P`` (a diagonal), so that only the solver's own vectors count."""
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from landscape_widgets.hessian.hutchinson import hutchinson_trace
from landscape_widgets.hessian.lanczos import default_memory_budget, extreme_eigenpairs
from landscape_widgets.hessian.slq import lanczos_quadrature, plan


class LiveBytes(TorchDispatchMode):
    """High-water mark of the bytes of torch storages alive at once, among those created inside the block."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.largest = {}, 0, 0
        self.total = 0

    def _release(self, key):
        refs = self.live.get(key)
        if refs is None:
            return
        refs[1] -= 1
        if refs[1] == 0:
            self.total -= refs[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key == 0:
                    continue
                if key not in self.live:
                    self.live[key] = [storage.nbytes(), 0]
                    self.total += storage.nbytes()
                    self.largest = max(self.largest, storage.nbytes())
                self.live[key][1] += 1
                weakref.finalize(t, self._release, key)
        self.peak = max(self.peak, self.total)
        return out


def measured(fn):
    """``(result, torch peak bytes, None, largest storage)`` of ``fn()``."""
    with LiveBytes() as mode:
        out = fn()
    return out, mode.peak, None, mode.largest


class Diagonal:
    """``H = diag(d)`` of float32 "parameters", the operator interface (products counted)."""

    def __init__(self, d, dtype=torch.float32):
        self.d = torch.as_tensor(d, dtype=dtype)
        self.num_parameters, self.device, self.dtype, self.hvps = len(d), torch.device("cpu"), dtype, 0
        self.out_dtype = torch.promote_types(dtype, torch.float32)

    def matmat_torch(self, V):
        self.hvps += V.shape[0]
        return (V.to(self.dtype) * self.d).to(self.out_dtype)

    def matvec_torch(self, v):
        return self.matmat_torch(v.reshape(1, -1))[0]


P = 1_000_000
VECTOR = 4 * P  # bytes of one float32 vector


def spectrum(seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[np.linspace(1.0, 0.97, 4), np.linspace(-0.5, -0.46, 4), rng.uniform(-0.3, 0.9, P - 8)]


@pytest.mark.parametrize("tol,which,k,held", [(1e-3, "LA", 1, 6), (1e-8, "LA", 1, 6), (1e-6, "SA", 2, 8),
                                             (1e-4, "BE", 1, 10)])
def test_eigenpairs_hold_the_default_budget_whatever_the_number_of_products(tol, which, k, held):
    """The default budget (6 float32 vectors here, or what k needs when that is more: k + 4 basis vectors and the
    k returned, 2 + 6 for both ends) bounds the basis: live torch bytes stay within ``held`` vectors plus two (the
    product and a reorthogonalization slab), from a few dozen products to hundreds."""
    op = Diagonal(spectrum())
    budget = default_memory_budget(op)
    assert budget == 6 * VECTOR
    (w, V, info), peak, _, largest = measured(
        lambda: extreme_eigenpairs(op, k, which, rng=np.random.default_rng(0), tol=tol))
    assert info["converged"] and info["restarts"] > 0 and V.dtype == np.float32
    assert largest <= held * VECTOR and peak <= (held + 2) * VECTOR, (peak / VECTOR, info)
    d = np.sort(op.d.double().numpy())
    want = d[::-1][:k] if which == "LA" else d[:k] if which == "SA" else d[[0, -1]]
    np.testing.assert_allclose(w, want, rtol=max(tol, 1e-6), atol=1e-6)


def test_an_explicit_budget_bounds_the_basis_and_a_too_small_one_says_what_to_pass():
    op = Diagonal(spectrum(1))
    (w, _, info), peak, _, _ = measured(
        lambda: extreme_eigenpairs(op, 2, "LA", rng=np.random.default_rng(0), tol=1e-6, memory_budget=9 * VECTOR))
    assert info["basis"] == 7 and peak <= 11 * VECTOR  # 7 basis vectors + the 2 returned, + product and slab
    with pytest.raises(ValueError, match=r"k=5 with guard=2 needs 14 .*pass memory_budget>="):
        extreme_eigenpairs(op, 5, "LA", rng=np.random.default_rng(0), memory_budget=9 * VECTOR)


def test_quadrature_without_room_for_a_basis_keeps_three_vectors_per_run():
    """SLQ, 90 steps x 10 runs: the full basis (91 vectors a run) does not fit the default budget, so the runs
    use the three-term recurrence, two at a time; live torch bytes stay within the budget plus a vector."""
    op = Diagonal(spectrum(2))
    reorth, block = plan(op, 90, 10)
    assert not reorth and block == 2
    (nodes, weights), peak, _, _ = measured(lambda: lanczos_quadrature(op, 90, 10, rng=np.random.default_rng(0)))
    assert op.hvps == 900 and len(nodes) == 10
    assert peak <= default_memory_budget(op) + VECTOR, peak / VECTOR


def test_hutch_plus_plus_sketch_is_sized_by_the_budget():
    """99 samples: the paper's sketch of 33 vectors does not fit 6, so it gets 4 and the 91 other products go to
    the Hutchinson part (99 in all); live torch bytes stay within the budget plus a vector, and the trace is within
    four standard errors of the exact one."""
    op = Diagonal(spectrum(3))
    (trace, stderr, info), peak, _, _ = measured(lambda: hutchinson_trace(op, 99, rng=np.random.default_rng(0)))
    assert info["sketch"] == 4 and info["hvps"] == 99
    assert peak <= default_memory_budget(op) + VECTOR, peak / VECTOR
    assert abs(trace - float(op.d.double().sum())) <= 4 * stderr


def test_a_spectrum_records_how_its_density_was_orthogonalized():
    """The record says "full" only when the budget let SLQ reorthogonalize fully (slq.plan), else the recurrence."""
    import torch
    from torch import nn

    import landscape_widgets as lw
    from landscape_widgets.hessian import slq

    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    spec = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y)).spectrum(k=1, bottom=0, trace=False, steps=5, runs=2,
                                                                        progress=False)
    assert spec.meta["stages"]["density"]["reorthogonalization"] == "full"
    assert slq.plan(type("Op", (), {"num_parameters": 10 ** 8, "dtype": torch.float32})(), 90, 10,
                    memory_budget=2 ** 20)[0] is False
