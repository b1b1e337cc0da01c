"""The GGN and the empirical Fisher operators against dense float64 matrices built independently.

GGN: ``(1/N) sum_b n_b J_b^T H_b J_b`` with ``J_b`` from ``torch.autograd.functional.jacobian`` of the outputs and
``H_b`` from ``torch.autograd.functional.hessian`` of the loss in the outputs.  Fisher: ``(1/N) sum_i g_i g_i^T``
with ``g_i`` from a plain loop of ``torch.autograd.grad`` over the samples, each the loss of a batch of one sample.
"""
import copy
import dataclasses
import threading
import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from _hessian_cases import classification_data, dense_hessian, small_cnn, small_mlp
from helpers import assert_same, snapshot
from zoo import models as Z
from zoo.reference import Reference

from landscape_widgets import Cancelled, LossReductionWarning, NonFiniteHessian
from landscape_widgets._model import PrivateModel
from landscape_widgets.data import DataSource
from landscape_widgets.hessian.fisher import FisherOperator
from landscape_widgets.hessian.ggn import GGNOperator
from landscape_widgets.hessian.hvp import HessianOperator
from landscape_widgets.hessian.lanczos import extreme_eigenpairs
from landscape_widgets.hessian.operators import CURVATURES, check_curvature, make_operator
from landscape_widgets.objective import Objective

CPU = torch.device("cpu")
CE, MSE = nn.CrossEntropyLoss(), nn.MSELoss()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (a second one only waits on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- independent references --------------------------------------------------------------------------------------
def _double(obj):
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: _double(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_double(v) for v in obj)
    return obj


def _call(module, inputs, state):
    if isinstance(inputs, Mapping):
        return functional_call(module, state, (), dict(inputs), strict=False)
    if isinstance(inputs, (list, tuple)):
        return functional_call(module, state, tuple(inputs), strict=False)
    return functional_call(module, state, (inputs,), strict=False)


class Flat:
    """A float64 copy of ``model`` in eval mode as a function of the flattened ``moved`` parameters (every alias of a
    tied parameter gets the value)."""

    def __init__(self, model, moved):
        self.model = copy.deepcopy(model).double().eval()
        params = dict(self.model.named_parameters())
        self.aliases = {}
        for n, p in self.model.named_parameters(remove_duplicate=False):
            self.aliases.setdefault(next(k for k, q in params.items() if q is p), []).append(n)
        self.moved = list(moved)
        self.shapes = [params[n].shape for n in self.moved]
        self.sizes = [int(np.prod(s)) if len(s) else 1 for s in self.shapes]
        self.flat0 = torch.cat([params[n].detach().reshape(-1) for n in self.moved])

    def state(self, flat):
        out = {}
        for n, t, s in zip(self.moved, torch.split(flat, self.sizes), self.shapes):
            value = t.view(s)  # one tensor under every alias (functional_call ties them)
            for alias in self.aliases[n]:
                out[alias] = value
        return out

    def output(self, flat, inputs):
        return _call(self.model, inputs, self.state(flat))


def dense_ggn(model, moved, batches, loss_of_output, output=lambda out: out):
    """``(1/N) sum_b n_b J_b^T H_b J_b``: ``loss_of_output(z, targets)`` of the output tensor ``z = output(...)``."""
    f = Flat(model, moved)
    P = len(f.flat0)
    G, N = torch.zeros(P, P, dtype=torch.float64), 0
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        for x, y in batches:
            x, y = _double(x), _double(y)
            z0 = output(f.output(f.flat0, x)).detach()
            J = torch.autograd.functional.jacobian(lambda w: output(f.output(w, x)), f.flat0).reshape(-1, P)
            H = torch.autograd.functional.hessian(lambda z: loss_of_output(z.view(z0.shape), y), z0.reshape(-1))
            n = sample_count(y)
            G += n * (J.T @ H @ J)
            N += n
    return (G / N).numpy()


def sample_count(batch):
    t = batch if isinstance(batch, torch.Tensor) else next(v for v in _tensors(batch))
    return int(t.shape[0])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _sample(obj, i, n):
    if isinstance(obj, torch.Tensor):
        return obj[i:i + 1] if obj.ndim and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: _sample(v, i, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_sample(v, i, n) for v in obj)
    return obj


def dense_fisher(model, moved, batches, batch_loss):
    """``(1/N) sum_i g_i g_i^T``, ``g_i`` the gradient of ``batch_loss(output_fn, sample_batch)`` on sample ``i`` alone
    by a python loop of ``torch.autograd.grad``; ``batches`` as ``(batch, n)``."""
    f = Flat(model, moved)
    rows = []
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        for batch, n in batches:
            batch = _double(batch)
            for i in range(n):
                w = f.flat0.clone().requires_grad_(True)
                loss = batch_loss(lambda inputs: f.output(w, inputs), f, w, _sample(batch, i, n))
                rows.append(torch.autograd.grad(loss, w)[0])
    G = torch.stack(rows)
    return (G.T @ G / len(rows)).numpy()


def pair_loss(loss_fn):
    return lambda forward, f, w, batch: loss_fn(forward(batch[0]), batch[1])


def dense_of(op):
    P = op.num_parameters
    M = op.matmat(np.eye(P))
    return M


def check_psd(M, scale, rel=1e-9):
    """lambda_min >= 0 up to rounding (``rel`` of the largest |lambda|: float64 1e-9, float32 1e-5)."""
    ev = np.linalg.eigvalsh(0.5 * (M + M.T))
    assert ev[0] >= -rel * scale, ev[:3]


# -- small models -----------------------------------------------------------------------------------------------
def _data(model, loss, batches):
    """One batch (``batches=None``) or a list of batches of these sizes; MSE targets of the output's shape."""
    sizes = [30] if batches is None else batches
    x, y = classification_data(model, n=sum(sizes), seed=3)
    if loss is MSE:
        y = torch.randn(len(y), model[-1].out_features, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)
    if batches is None:
        return (x, y), [(x, y)]
    out, start = [], 0
    for s in sizes:
        out.append((x[start:start + s], y[start:start + s]))
        start += s
    return out, out


MODELS = {"mlp": small_mlp, "cnn": small_cnn}
PARAMS = {"mlp": ["0.bias", "1.weight", "3.weight"], "cnn": ["0.weight", "4.bias"]}


@pytest.mark.parametrize("backend", ["graph", "func"])
@pytest.mark.parametrize("batches", [None, (13, 9, 5)], ids=["one", "three"])
@pytest.mark.parametrize("loss", [CE, MSE], ids=["ce", "mse"])
@pytest.mark.parametrize("name", list(MODELS))
def test_ggn_equals_dense(name, loss, batches, backend):
    model = MODELS[name]()
    data, listed = _data(model, loss, batches)
    snap, rng = snapshot(model), torch.get_rng_state()
    op = GGNOperator(PrivateModel(model, CPU), DataSource(data), loss, backend=backend)
    moved = [n for n, _ in model.named_parameters()]
    want = dense_ggn(model, moved, listed, loss)
    got = dense_of(op)
    scale = np.abs(np.linalg.eigvalsh(want)).max()
    np.testing.assert_allclose(got, want, atol=1e-10 * scale, rtol=1e-8)
    check_psd(got, scale)
    # the loss of the same pass: the sample-weighted mean of the batch losses
    total = sum(len(b[1]) for b in listed)
    assert op.loss == pytest.approx(sum(float(loss(model(b[0]), b[1])) * len(b[1]) for b in listed) / total)
    # a block equals its rows one at a time
    V = torch.randn(4, op.num_parameters, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    block = op.matmat_torch(V)
    rows = torch.stack([op.matvec_torch(v) for v in V])
    torch.testing.assert_close(block, rows, atol=1e-12 * scale, rtol=1e-10)
    assert op.hvps == op.num_parameters + 8
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("batches", [None, (13, 9, 5)], ids=["one", "three"])
@pytest.mark.parametrize("loss", [CE, MSE], ids=["ce", "mse"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fisher_equals_dense(name, loss, batches):
    model = MODELS[name]()
    data, listed = _data(model, loss, batches)
    snap, rng = snapshot(model), torch.get_rng_state()
    op = FisherOperator(PrivateModel(model, CPU), DataSource(data), loss)
    moved = [n for n, _ in model.named_parameters()]
    want = dense_fisher(model, moved, [(b, len(b[1])) for b in listed], pair_loss(loss))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mean loss: the samples' losses average to it, no warning
        got = dense_of(op)
    assert op.per_sample == "vmap"
    scale = np.abs(np.linalg.eigvalsh(want)).max()
    np.testing.assert_allclose(got, want, atol=1e-10 * scale, rtol=1e-8)
    check_psd(got, scale)
    total = sum(len(b[1]) for b in listed)
    assert op.loss == pytest.approx(sum(float(loss(model(b[0]), b[1])) * len(b[1]) for b in listed) / total)
    V = torch.randn(3, op.num_parameters, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(op.matmat_torch(V), torch.stack([op.matvec_torch(v) for v in V]),
                               atol=1e-12 * scale, rtol=1e-10)
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())


def test_fisher_chunks_and_loop_equal_the_whole(monkeypatch):
    """Samples in chunks of 7 gradients (the memory bound), nothing kept between products, and the loop over the
    samples (what runs where vmap has no rule): the same matrix."""
    import landscape_widgets.hessian.fisher as fisher

    model = small_cnn()
    data, listed = _data(model, CE, None)
    want = dense_fisher(model, [n for n, _ in model.named_parameters()], [(listed[0], 30)], pair_loss(CE))
    P = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(fisher, "FISHER_CHUNK_BYTES", 7 * P * 8)
    monkeypatch.setattr(fisher, "FISHER_CACHE_BYTES", 0)
    op = FisherOperator(PrivateModel(model, CPU), DataSource(data), CE)
    np.testing.assert_allclose(dense_of(op), want, atol=1e-12, rtol=1e-8)
    assert op._kept is None and op.per_sample == "vmap" and op.vmap_error is None
    op = FisherOperator(PrivateModel(model, CPU), DataSource(data), CE, batching="loop")
    np.testing.assert_allclose(dense_of(op), want, atol=1e-12, rtol=1e-8)
    assert op.per_sample == "loop"


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
@pytest.mark.parametrize("name", list(MODELS))
def test_params_subset(name, curvature):
    model = MODELS[name]()
    data, listed = _data(model, CE, (11, 8))
    moved = PARAMS[name]
    op = make_operator(curvature, PrivateModel(model, CPU, params=moved), DataSource(data), CE)
    assert op.names == moved and op.curvature == curvature
    want = dense_ggn(model, moved, listed, CE) if curvature == "ggn" else \
        dense_fisher(model, moved, [(b, len(b[1])) for b in listed], pair_loss(CE))
    np.testing.assert_allclose(dense_of(op), want, atol=1e-12, rtol=1e-8)


def test_ggn_equals_hessian_for_a_linear_model_with_mse():
    """The outputs are linear in the parameters, so the term the GGN drops is zero: G == H exactly."""
    model = nn.Linear(5, 3).double()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randn(20, 3, generator=gen,
                                                                               dtype=torch.float64)
    H = dense_hessian(model, MSE, x, y)
    for backend in ("graph", "func"):
        G = dense_of(GGNOperator(PrivateModel(model, CPU), DataSource((x, y)), MSE, backend=backend))
        np.testing.assert_allclose(G, H, atol=1e-14, rtol=1e-12)
    Hop = dense_of(HessianOperator(PrivateModel(model, CPU), DataSource((x, y)), MSE))
    np.testing.assert_allclose(G, Hop, atol=1e-14, rtol=1e-12)


def test_ggn_differs_from_hessian_for_a_nonlinear_model():
    """The check above can fail: with a tanh layer and CE the two differ (and the Hessian is indefinite)."""
    model = small_mlp()
    x, y = classification_data(model, n=30, seed=3)
    H = dense_hessian(model, CE, x, y)
    G = dense_of(GGNOperator(PrivateModel(model, CPU), DataSource((x, y)), CE))
    assert np.abs(G - H).max() > 1e-3 * np.abs(H).max()


@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_extreme_eigenpairs_equal_eigh(curvature):
    model = small_mlp()
    data, listed = _data(model, CE, (17, 13))
    moved = [n for n, _ in model.named_parameters()]
    want = dense_ggn(model, moved, listed, CE) if curvature == "ggn" else \
        dense_fisher(model, moved, [(b, len(b[1])) for b in listed], pair_loss(CE))
    ev, vecs = np.linalg.eigh(want)
    op = make_operator(curvature, PrivateModel(model, CPU), DataSource(data), CE)
    rng = np.random.default_rng(0)
    top, V, info = extreme_eigenpairs(op, 3, "LA", rng=rng, tol=1e-10)
    assert info["converged"] and info["method"] in ("lanczos", "arpack")
    np.testing.assert_allclose(top, ev[::-1][:3], rtol=1e-8, atol=1e-10 * ev[-1])
    for j in range(3):  # eigenvectors up to sign (the three largest are simple here)
        assert abs(abs(V[:, j] @ vecs[:, -1 - j]) - 1) < 1e-6
    both, _, info = extreme_eigenpairs(op, 1, "BE", rng=rng, tol=1e-8)
    assert both[1] == pytest.approx(ev[-1], rel=1e-7)
    assert abs(both[0] - ev[0]) <= 1e-6 * ev[-1]
    assert both[0] >= -1e-6 * ev[-1]  # PSD: lambda_min is 0 up to rounding (rank-deficient: P > N for the Fisher)


# -- errors, cancel, state ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
def test_cancel_raises_before_a_pass(curvature):
    model = small_mlp()
    data, _ = _data(model, CE, (10, 10))
    event = threading.Event()
    op = make_operator(curvature, PrivateModel(model, CPU), DataSource(data), CE, cancel=event)
    op.matvec(np.ones(op.num_parameters))
    event.set()
    with pytest.raises(Cancelled, match="cancelled after 1 "):
        op.matvec(np.ones(op.num_parameters))
    assert op.hvps == 1


@pytest.mark.parametrize("backend", ["graph", "func"])
@pytest.mark.parametrize("curvature", ["ggn", "fisher"])
@pytest.mark.parametrize("batches", [None, (10, 10)], ids=["one", "two"])
def test_nan_data_raises_non_finite(curvature, batches, backend):
    model = small_mlp()
    data, listed = _data(model, CE, batches)
    listed[-1][0][3, 2] = float("nan")
    snap, rng = snapshot(model), torch.get_rng_state()
    op = make_operator(curvature, PrivateModel(model, CPU), DataSource(data), CE, backend=backend)
    with pytest.raises(NonFiniteHessian, match="NaN or inf"):
        op.matvec(np.ones(op.num_parameters))
    assert op.hvps == 0
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())


def _batch_loss(model, batch):
    return CE(model(batch[0]), batch[1])


class WithLoss(nn.Module):
    """A model whose output carries the loss (the HuggingFace convention, loss_fn=None)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, labels):
        return {"loss": CE(self.inner(x), labels)}


@pytest.mark.parametrize("mode", ["batch_loss", "output"])
def test_ggn_without_loss_fn_says_to_pass_one(mode):
    model = small_mlp()
    x, y = classification_data(model)
    if mode == "batch_loss":
        objective, private = Objective(batch_loss=_batch_loss), PrivateModel(model, CPU)
    else:
        objective, private = Objective(), PrivateModel(WithLoss(model), CPU)
    data = DataSource((x, y), pairs=False)
    with pytest.raises(ValueError, match=r"curvature='ggn' needs the loss as a function of the model's outputs.*"
                                         r"Pass loss_fn\(outputs, targets\)"):
        GGNOperator(private, data, objective)
    # the Fisher takes every loss: here the same matrix as with loss_fn
    want = dense_of(FisherOperator(PrivateModel(model, CPU), DataSource((x, y)), CE))
    np.testing.assert_allclose(dense_of(FisherOperator(private, data, objective)), want, atol=1e-13, rtol=1e-10)


@dataclasses.dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def _dataclass_loss(model, batch):
    return CE(model(batch.x), batch.y)


def test_fisher_of_a_dataclass_batch_runs_the_loop():
    """A batch vmap cannot cut (tensors inside a dataclass): the loop over samples gives the same matrix."""
    model = small_mlp()
    x, y = classification_data(model)
    want = dense_of(FisherOperator(PrivateModel(model, CPU), DataSource((x, y)), CE))
    op = FisherOperator(PrivateModel(model, CPU), DataSource(Batch(x, y), pairs=False),
                        Objective(batch_loss=_dataclass_loss))
    np.testing.assert_allclose(dense_of(op), want, atol=1e-13, rtol=1e-10)
    assert op.per_sample == "loop" and "no pytree" in op.vmap_error
    with pytest.raises(Exception, match="no pytree"):
        dense_of(FisherOperator(PrivateModel(model, CPU), DataSource(Batch(x, y), pairs=False),
                                Objective(batch_loss=_dataclass_loss), batching="vmap"))


def test_unknown_backend_and_curvature():
    model = small_mlp()
    with pytest.raises(ValueError, match="backend='fast' is not known; pass one of 'auto', 'graph', 'func'"):
        GGNOperator(PrivateModel(model, CPU), DataSource(classification_data(model)), CE, backend="fast")
    with pytest.raises(ValueError, match="curvature='gn' is not known; pass one of 'hessian', 'ggn', 'fisher'"):
        check_curvature("gn")
    assert CURVATURES == ("hessian", "ggn", "fisher")


def test_interface_matches_the_hessian_operator():
    """Every public attribute and method of HessianOperator is on both operators (the solvers use any of them)."""
    model = small_mlp()
    data = DataSource(classification_data(model))
    hess = HessianOperator(PrivateModel(model, CPU), data, CE)
    public = {a for a in dir(hess) if not a.startswith("_")} - {"private", "objective", "data", "at", "on_hvp",
                                                                 "cancel", "tuning"}
    for cls in (GGNOperator, FisherOperator):
        op = cls(PrivateModel(model, CPU), data, CE)
        missing = [a for a in public if not hasattr(op, a)]
        assert not missing, (cls.__name__, missing)
        for a in ("num_parameters", "names", "sizes", "shapes", "dtype", "out_dtype", "device", "backend"):
            assert getattr(op, a) == getattr(hess, a), a


def test_weights_take_the_matrix_at_another_point():
    model = small_mlp()
    x, y = classification_data(model)
    other = copy.deepcopy(model)  # other parameters, the same BatchNorm statistics (weights= moves parameters only)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    point = {n: p.detach() for n, p in other.named_parameters()}
    for cls in (GGNOperator, FisherOperator):
        got = dense_of(cls(PrivateModel(model, CPU), DataSource((x, y)), CE, weights=point))
        want = dense_of(cls(PrivateModel(other, CPU), DataSource((x, y)), CE))
        np.testing.assert_allclose(got, want, atol=1e-14, rtol=1e-12)


def test_float32_model_gives_float32_products():
    model = small_mlp(dtype=torch.float32)
    x, y = classification_data(model, dtype=torch.float32)
    want = dense_ggn(model, [n for n, _ in model.named_parameters()], [(x, y)], CE)
    for cls in (GGNOperator, FisherOperator):
        op = cls(PrivateModel(model, CPU), DataSource((x, y)), CE)
        out = op.matmat_torch(torch.eye(op.num_parameters))
        assert out.dtype == torch.float32 and op.out_dtype == torch.float32
        if cls is GGNOperator:
            np.testing.assert_allclose(out.double().numpy(), want, atol=1e-5 * np.abs(want).max())


# -- a HuggingFace model with loss_fn on its logits ----------------------------------------------------------------
def _lm_loss(logits, labels):
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())


@pytest.mark.parametrize("backend", ["graph", "func"])
def test_ggn_of_a_huggingface_model_with_loss_fn_on_logits(backend):
    """The outputs are a ModelOutput (logits and a key/value cache): the loss reads ``out.logits``; the GGN is that
    of the logits."""
    pytest.importorskip("transformers")
    case = Z.gpt2()
    ids = case.data["input_ids"]
    moved = [n for n, p in case.model.named_parameters() if Z.gpt2_hessian_params(n, p)]
    data = [({"input_ids": ids[:3]}, ids[:3]), ({"input_ids": ids[3:]}, ids[3:])]
    snap = snapshot(case.model)
    op = GGNOperator(PrivateModel(case.model, CPU, params=Z.gpt2_hessian_params), DataSource(data),
                     lambda out, labels: _lm_loss(out.logits, labels), backend=backend)
    got = dense_of(op)
    want = dense_ggn(case.model, moved, data, _lm_loss, output=lambda out: out.logits)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=1e-5 * scale)
    check_psd(got, np.abs(np.linalg.eigvalsh(want)).max(), rel=1e-5)  # a float32 model
    assert_same(case.model, snap)


# -- the zoo -------------------------------------------------------------------------------------------------------
def _zoo_setup(name):
    case = Z.build(name)
    ref = Reference(case)
    rule = case.hessian_params if case.hessian_params is not None else "__case__"
    moved = ref.moved(rule)
    params = case.params if rule == "__case__" else rule
    objective = Objective(case.loss_fn, case.batch_loss)
    data = DataSource(case.data, pairs=objective.mode == "loss_fn")
    return case, ref, moved, params, objective, data


def _zoo_tolerance(case, want):
    scale = max(np.abs(np.linalg.eigvalsh(want)).max(), 1e-300)
    return (case.hessian_rtol if case.tol else 1e-6) * scale


@pytest.mark.parametrize("name", list(Z.BUILDERS))
def test_zoo_ggn(name):
    case, ref, moved, params, objective, data = _zoo_setup(name)
    if case.loss_fn is None:
        with pytest.raises(ValueError, match="curvature='ggn' needs the loss as a function of the model's outputs"):
            GGNOperator(PrivateModel(case.model, CPU, params=params), data, objective)
        pytest.skip("the GGN needs loss_fn(outputs, targets); this case computes its loss inside (checked: the "
                    "clear ValueError)")
    snap, rng = snapshot(case.model), torch.get_rng_state()
    op = GGNOperator(PrivateModel(case.model, CPU, params=params), data, objective)
    got = dense_of(op)
    want = dense_ggn(case.ref_model, moved, ref.batches, case.loss_fn)
    np.testing.assert_allclose(got, want, atol=_zoo_tolerance(case, want))
    check_psd(got, np.abs(np.linalg.eigvalsh(want)).max(), rel=case.hessian_rtol if case.tol else 1e-5)
    assert_same(case.model, snap)
    assert torch.equal(rng, torch.get_rng_state())


def _zoo_sample_loss(case):
    """The loss of a batch of one sample, as the case's convention computes it, on the reference's float64 copy."""
    def loss(forward, f, w, batch):
        if case.batch_loss is not None:
            return functional_call(_BatchLossModule(f.model, case.batch_loss), {f"m.{k}": v for k, v in
                                                                                 f.state(w).items()}, (batch,))
        if case.loss_fn is not None:
            return case.loss_fn(forward(batch[0]), batch[1])
        out = forward(batch)
        return out.loss if hasattr(out, "loss") else out["loss"]
    return loss


class _BatchLossModule(nn.Module):
    def __init__(self, model, fn):
        super().__init__()
        self.m, self.fn = model, fn

    def forward(self, batch):
        return self.fn(self.m, batch)


@pytest.mark.parametrize("name", list(Z.BUILDERS))
def test_zoo_fisher(name):
    case, ref, moved, params, objective, data = _zoo_setup(name)
    snap, rng = snapshot(case.model), torch.get_rng_state()
    op = FisherOperator(PrivateModel(case.model, CPU, params=params), data, objective)
    if name == "weighted_triples":  # the weighted batch loss is no plain mean of its samples' losses
        with pytest.warns(LossReductionWarning, match="empirical Fisher takes each sample's loss"):
            got = dense_of(op)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", LossReductionWarning)
            got = dense_of(op)
    want = dense_fisher(case.ref_model, moved, list(zip(ref.batches, ref.counts)), _zoo_sample_loss(case))
    np.testing.assert_allclose(got, want, atol=_zoo_tolerance(case, want))
    check_psd(got, np.abs(np.linalg.eigvalsh(want)).max(), rel=case.hessian_rtol if case.tol else 1e-5)
    assert_same(case.model, snap)
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.parametrize("backend", ["auto", "graph", "func"])
@pytest.mark.parametrize("batching", ["auto", "vmap", "loop"])
def test_ggn_backends_and_batching_agree(backend, batching):
    """Every backend, vectors vmapped (per 5: blocks cut into parts) or one at a time: the dense GGN; "auto" keeps
    the backend it timed faster for single products and for blocks."""
    model = small_cnn()
    x, y = classification_data(model, n=20, seed=3)
    want = dense_ggn(model, [n for n, _ in model.named_parameters()], [(x, y)], CE)
    op = GGNOperator(PrivateModel(model, CPU), DataSource((x, y)), CE, backend=backend, batching=batching,
                     vmap_rows=5)
    np.testing.assert_allclose(dense_of(op), want, atol=1e-12, rtol=1e-8)
    v = np.random.default_rng(0).standard_normal(op.num_parameters)
    np.testing.assert_allclose(op.matvec(v), want @ v, atol=1e-12, rtol=1e-8)
    assert op.vmap_error is None
    if backend == "auto":
        assert set(op.choice) == {"single", "block"} and set(op.timings["block"]) == {"graph", "func"}
    with pytest.raises(ValueError, match="vmap_rows=0 must be a positive int"):
        GGNOperator(PrivateModel(model, CPU), DataSource((x, y)), CE, vmap_rows=0)
    with pytest.raises(ValueError, match="batching='rows' is not known"):
        FisherOperator(PrivateModel(model, CPU), DataSource((x, y)), CE, batching="rows")
