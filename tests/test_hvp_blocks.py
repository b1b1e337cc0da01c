"""Block Hessian-vector products (``HessianOperator.matmat_torch`` of ``V[m, P]``) by every path -- backend "graph"
(double backward) and "func" (forward-over-reverse) x batching "loop" and "vmap" x one batch, a DataLoader of
unequal batches and CPU micro-batches -- against the dense Hessian of torch.autograd.functional.hessian: float64
models to 1e-10 relative (tests/_hessian_cases.py), the zoo (float32 products of a float64 dense Hessian) to float32's
accuracy."""
import numpy as np
import pytest
import torch
from torch import nn

from _hessian_cases import classification_data, dense_hessian, small_cnn, small_mlp
from helpers import assert_same, snapshot
from landscape_widgets._model import PrivateModel
from landscape_widgets.accelerations import Tuning
from landscape_widgets.data import DataSource
from landscape_widgets.hessian import HessianOperator
from landscape_widgets.hessian.hvp import PLAN

from zoo import models as Z
from zoo.checks import untouched
from zoo.reference import Reference, strip_key

pytestmark = pytest.mark.usefixtures("one_thread")

CE = nn.CrossEntropyLoss()
PATHS = [(b, m) for b in ("graph", "func") for m in ("loop", "vmap")]
MICRO = Tuning(micro_min_bytes=0, micro_bytes=1, micro_min_samples=8)  # 23 samples -> chunks of 8, 8, 7


def _data(x, y, layout):
    if layout == "loader":  # batches of 10, 10, 3: the sample weights matter
        ds = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(ds, batch_size=10, shuffle=False)
    return x, y


def _rel(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("layout", ["single", "loader", "micro"])
@pytest.mark.parametrize("make", [small_mlp, small_cnn])
@pytest.mark.parametrize("backend,batching", PATHS)
def test_block_products_equal_the_dense_hessian(backend, batching, make, layout):
    """Blocks of 1, 4, 16 and 33 vectors (33 > vmap_rows=16: three vmapped calls of 11) and the loss, every path."""
    model = make()
    x, y = classification_data(model, n=23)
    H = dense_hessian(model, CE, x, y)
    snap = snapshot(model)
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource(_data(x, y, layout)), CE,
                         backend=backend, batching=batching, tuning=MICRO if layout == "micro" else None)
    rng = np.random.default_rng(0)
    for m in (1, 4, 16, 33):
        V = rng.standard_normal((m, H.shape[0]))
        got = op.matmat_torch(torch.from_numpy(V)).numpy()
        assert got.dtype == np.float64
        assert _rel(got, V @ H) <= 1e-10, (m, _rel(got, V @ H))
    assert op.hvps == 54
    assert op.vmap_error is None  # these models batch: no fallback was taken
    with torch.no_grad():
        assert op.loss == pytest.approx(float(CE(model(x), y)), rel=1e-12)
    if layout == "micro":  # the chunks were used (they are what this layout tests)
        plan = op.micro_batches()
        assert plan is not PLAN and [n for *_, n in plan] == [8, 8, 7]
    assert_same(model, snap)


def test_paths_agree_row_by_row_and_vmap_rows_cut_evenly():
    """The vmapped block equals the loop's products row by row to rounding (not just in norm), for any vmap_rows."""
    model = small_cnn()
    x, y = classification_data(model, n=23)
    V = torch.from_numpy(np.random.default_rng(1).standard_normal((7, 243)))
    outs = {}
    for backend, batching in PATHS:
        for rows in (1, 3, 16):
            op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE, backend=backend,
                                 batching=batching, vmap_rows=rows)
            outs[backend, batching, rows] = op.matmat_torch(V).numpy()
    ref = outs["graph", "loop", 1]
    for key, out in outs.items():
        np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-12 * np.abs(ref).max(), err_msg=str(key))
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE, vmap_rows=16)
    assert [(s.start, s.stop) for s in op._rows(33)] == [(0, 11), (11, 22), (22, 33)]


class Square(torch.autograd.Function):
    """``x ** 2`` with a hand-written backward (differentiable) and jvp, and no vmap rule: ``torch.func.vmap`` over
    the tangents refuses it, a loop of single jvps does not."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2.0 * x * g

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 2.0 * x * t


class SquareNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3).double()

    def forward(self, x):
        return Square.apply(self.lin(x))


@pytest.mark.parametrize("backend", ["graph", "func"])
def test_vmap_failure_falls_back_to_the_loop_and_is_remembered(backend):
    model = SquareNet().eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g)
    H = dense_hessian(nn.Sequential(model), CE, x, y)
    V = np.random.default_rng(0).standard_normal((5, H.shape[0]))
    auto = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE, backend=backend,
                           batching="vmap")
    if backend == "graph":
        # the first-order graph holds Square's backward as plain ops: a batched double backward works
        assert _rel(auto.matmat_torch(torch.from_numpy(V)).numpy(), V @ H) <= 1e-10
        assert auto.vmap_error is None
        return
    assert _rel(auto.matmat_torch(torch.from_numpy(V)).numpy(), V @ H) <= 1e-10
    assert auto.vmap_error is not None and "vmap" in auto.vmap_error
    assert _rel(auto.matmat_torch(torch.from_numpy(V)).numpy(), V @ H) <= 1e-10  # the loop again, no retry
    assert auto.hvps == 10
    # on a CPU "auto" runs the loop (measured faster there): no vmap attempted, nothing to fall back from
    cpu = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE, backend=backend)
    assert _rel(cpu.matmat_torch(torch.from_numpy(V)).numpy(), V @ H) <= 1e-10 and cpu.vmap_error is None


def test_bad_arguments_say_what_to_pass():
    model = small_mlp()
    x, y = classification_data(model, n=10)
    priv = PrivateModel(model, torch.device("cpu"))
    with pytest.raises(ValueError, match="'auto', 'vmap', 'loop'"):
        HessianOperator(priv, DataSource((x, y)), CE, batching="batched")
    with pytest.raises(ValueError, match="'auto', 'graph', 'func'"):
        HessianOperator(priv, DataSource((x, y)), CE, backend="forward")
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="vmap_rows"):
            HessianOperator(priv, DataSource((x, y)), CE, vmap_rows=bad)


def test_auto_backend_chooses_per_size_class_and_counts_only_the_returned_products():
    model = small_cnn()
    x, y = classification_data(model, n=23)
    H = dense_hessian(model, CE, x, y)
    op = HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE, backend="auto")
    rng = np.random.default_rng(2)
    for m in (1, 1, 6, 6):
        V = rng.standard_normal((m, H.shape[0]))
        assert _rel(op.matmat_torch(torch.from_numpy(V)).numpy(), V @ H) <= 1e-10
    assert set(op.choice) == {"single", "block"} and set(op.choice.values()) <= {"graph", "func"}
    assert all(set(t) == {"graph", "func"} and min(t.values()) > 0 for t in op.timings.values())
    assert op.hvps == 14


# -- the zoo ------------------------------------------------------------------------------------------------------
HF = ("gpt2", "bert")
# backend="func" refuses, naming backend="graph": the CPU LSTM's mkldnn layer has no forward-mode derivative, and
# torch.func's forward-over-reverse fails on the tied decoder's transposed weight
NO_FORWARD_AD = {"lstm", "tied_autoencoder"}


@pytest.mark.parametrize("name", list(Z.BUILDERS))
def test_zoo_blocks_by_every_path(name):
    """Every zoo model (tied and shared weights, RNNs, parametrizations, frozen parts, batch_loss, dict batches,
    loaders, low precision): a block of 5 by each path against the dense float64 Hessian of its moved parameters, to
    float32's accuracy (the zoo's models are float32; bfloat16/float16 to their documented accuracy); vmap batches
    every one of them (no fallback to the loop was taken).  The CPU LSTM/GRU have no forward-mode
    derivative, and forward-over-reverse fails on the tied decoder: there backend="func" says to pass
    backend="graph" (and backend="auto" takes it)."""
    case = Z.build(name)
    ref = Reference(case)
    rule = case.hessian_params if case.hessian_params is not None else "__case__"
    moved = ref.moved(rule)
    H = ref.dense_hessian(moved, math_sdpa=name in HF)
    V = np.random.default_rng(0).standard_normal((5, len(H)))
    want = V @ H
    rtol = case.hessian_rtol if case.tol else 1e-5
    with untouched(case.model):
        problem = case.landscape(params=rule).problem
        private = problem.private()
        assert [strip_key(n, ref.model) for n in private.names] == moved
        for backend, batching in PATHS:
            op = HessianOperator(private, problem.data, problem.objective, backend=backend, batching=batching)
            if backend == "func" and name in NO_FORWARD_AD:
                with pytest.raises(RuntimeError, match="backend='graph'"):
                    op.matmat_torch(torch.from_numpy(V))
                continue
            got = op.matmat_torch(torch.from_numpy(V)).double().numpy()
            err = np.abs(got - want).max() / (np.abs(np.linalg.eigvalsh(H)).max() * np.abs(V).max() * np.sqrt(len(H)))
            assert err <= rtol, (backend, batching, err, op.vmap_error)
            assert op.vmap_error is None
