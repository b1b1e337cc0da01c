"""Each exact acceleration switched on for certain (asserted used) on the zoo models it concerns, and compared with the
explicit reference: the input-affine shortcut (shared and tied weights: every other user of the shortcut layer's
tensor must see the moved value), micro-batches, channels-last, flat writes, the vmap rules, "auto"'s tuner,
Dask workers and the resumable store."""
import numpy as np
import pytest
import torch

from landscape_widgets import accelerations as E
from landscape_widgets.gpu import affine as al
from landscape_widgets.hessian.hvp import HessianOperator
from landscape_widgets.hessian.spectrum import Spectrum, compute_spectrum

from helpers import auto_as_on_cuda, force_micro_batches
from zoo import models as Z
from zoo.checks import assert_close, check_moved, untouched, use_evaluator
from zoo.reference import Reference, interpolation_buffers, interpolation_point, normalize_dict, point


def _split(case, sizes):
    """The case's one (x, y) batch as a list of batches of ``sizes`` samples."""
    x, y = case.data
    out, i = [], 0
    for n in sizes:
        out.append((x[i:i + n], y[i:i + n]))
        i += n
    assert i == len(y)
    return Z.Case(case.name, case.model, out, loss_fn=case.loss_fn, batch_loss=case.batch_loss, params=case.params,
                  start=case.start, ref_model=case.ref_model)


def _line_ref(ref, curve):
    moved = ref.moved()
    d = normalize_dict(curve.direction, ref.model)
    return [ref.loss(point(ref.model, moved, [d], [a])) for a in curve.alphas]


def _plane_ref(ref, surf):
    moved = ref.moved()
    d1, d2 = (normalize_dict(d, ref.model) for d in surf.directions)
    return np.array([[ref.loss(point(ref.model, moved, [d1, d2], [a, b])) for b in surf.betas] for a in surf.alphas])


def _interp_ref(ref, start, curve):
    moved = ref.moved()
    sp = {n: p.detach() for n, p in start.named_parameters()}
    sb = {n: b.detach() for n, b in start.named_buffers()}
    return [ref.loss(interpolation_point(ref.model, sp, moved, float(a)), interpolation_buffers(ref.model, sb, float(a)))
            for a in curve.alphas]


def _run_all(case, ref, kind="loop", ignore="biasbn"):
    """line, plane and interpolate of ``case``, each checked against the reference; the model and the RNG untouched."""
    with untouched(case.model, case.start):
        ls = case.landscape()
        curve = ls.line(seed=3, steps=5, evaluator=kind, ignore=ignore, progress=False)
        surf = ls.plane(seed=4, resolution=(3, 4), evaluator=kind, ignore=ignore, progress=False)
        interp = ls.interpolate(case.start, steps=4, evaluator=kind, progress=False)
    assert_close(curve.losses, _line_ref(ref, curve), what=f"{case.name} line")
    assert_close(surf.losses, _plane_ref(ref, surf), what=f"{case.name} plane")
    assert_close(interp.losses, _interp_ref(ref, case.start, interp), what=f"{case.name} interpolate")
    return curve, surf, interp


# -- the input-affine shortcut ----------------------------------------------------------------------------------------
@pytest.fixture
def shortcut_spy(monkeypatch):
    made = []

    class Spy(E._AffineShortcut):
        def __init__(self, evaluator, module, *args, **kwargs):
            made.append((type(module).__name__, tuple(module.weight.shape)))
            super().__init__(evaluator, module, *args, **kwargs)

    monkeypatch.setattr(E, "_AffineShortcut", Spy)
    return made


@pytest.mark.parametrize("batches", [None, (25, 15)], ids=["one_batch", "two_batches"])
@pytest.mark.parametrize("name,layer", [("shared_linear", (4, 64)), ("tied_autoencoder", (4, 64)),
                                        ("reused_linear", (24, 24))])
def test_input_affine_shortcut_on_shared_and_tied_weights(name, layer, batches, shortcut_spy):
    """The layer fed the data tensor gets the shortcut (asserted), and every other use of its weight -- b in
    SharedLinear (b.weight is a.weight), the decoder's F.linear(h, enc.weight.t()), the second call of the reused
    Linear -- sees the moved value: the values are the explicit ones (the bug: 1.128 where explicit gives 1.230)."""
    case = Z.build(name)
    if batches is not None:
        x, y = case.data
        case = _split(case, batches if len(y) == 40 else (20, 12))
    ref = Reference(case)
    assert E.SHORTCUT_MIN_FAN_IN * 3 <= layer[1]  # wide enough for a plane (K = 2) as well as a line
    _run_all(case, ref, ignore=None)
    assert shortcut_spy, "the input-affine shortcut was never used"
    assert set(shortcut_spy) == {("Linear", layer)}


@pytest.mark.parametrize("name", ["shared_linear", "tied_autoencoder"])
def test_affine_vmap_rule_on_shared_and_tied_weights(name, monkeypatch):
    """The vmap "affine" rule computes the shared-input layer from its parts (asserted via AffineMode._linear), and
    the other users of the same tensor see the point's value."""
    calls = []
    real = al.AffineMode._linear

    def routed(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(al.AffineMode, "_linear", routed)
    kind, rule = use_evaluator("vmap-affine", monkeypatch)
    case = Z.build(name)
    curve, surf, interp = _run_all(case, Reference(case), kind=kind, ignore=None)
    assert surf.meta["vmap_rule"] == "affine"
    assert any(calls), "the affine rule never computed a layer from its parts"


# -- micro-batches ----------------------------------------------------------------------------------------------------
@pytest.fixture
def micro(monkeypatch):
    """Micro-batches forced on: any activation is 'large', chunks of 4 samples; every plan made is recorded."""
    return force_micro_batches(monkeypatch, 4)


@pytest.mark.parametrize("name", ["batchnorm", "shared_linear", "tied_autoencoder", "parametrized", "compiled"])
def test_micro_batches(name, micro):
    case = Z.build(name)
    _run_all(case, Reference(case), kind=micro.loop)
    used = [p for p in micro.plans if p is not None]
    assert used, f"micro-batches were never used (plans: {micro.plans})"
    assert all(len(p) > 1 and sum(p) == len(case.data[1]) for p in used)


@pytest.mark.parametrize("name", ["l2_regularized", "dict_batch", "gpt2"])
def test_micro_batch_thresholds_keep_batch_losses_exact(name, micro):
    """Where the library may not cut a batch (batch_loss, the model's own loss), forcing the thresholds down changes
    nothing: the values stay the explicit ones."""
    case = Z.build(name)
    _run_all(case, Reference(case), kind=micro.loop)


def test_micro_batched_hessian(micro):
    """The Hessian products on micro-batches (hvp.py) still give the dense Hessian's spectrum."""
    case = Z.build("batchnorm")
    ref = Reference(case)
    H = ref.dense_hessian(ref.moved())
    ev = np.linalg.eigvalsh(H)
    with untouched(case.model):
        # Landscape.spectrum takes the library's tuning: the operator is built here with the forced one
        problem = case.landscape().problem
        op = HessianOperator(problem.private(), problem.data, problem.objective, tuning=micro.tuning)
        with op.running():
            fields, _ = compute_spectrum(op, 2, 1, density=False, trace=True, trace_samples=3 * len(H) + 3)
    spec = Spectrum(**fields)
    np.testing.assert_allclose(spec.top_eigenvalues, ev[::-1][:2], rtol=1e-3)
    np.testing.assert_allclose(spec.bottom_eigenvalues, ev[:1], rtol=1e-3, atol=1e-4 * abs(ev).max())
    assert spec.trace == pytest.approx(np.trace(H), rel=1e-3)
    plans = micro.plans
    assert any(p is not None for p in plans), f"the Hessian products never micro-batched (plans: {plans})"


# -- channels-last ----------------------------------------------------------------------------------------------------
def test_channels_last_conv_net():
    """The BatchNorm conv net runs channels-last in the loop (asserted by a hook on its conv, which the private copy
    inherits) and gives the explicit values; the user's model keeps its contiguous format."""
    case = Z.build("batchnorm")
    seen = []
    record = {"on": False}

    def hook(module, args):
        if record["on"]:
            x = args[0]
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())

    handle = case.model.conv.register_forward_pre_hook(hook)
    try:
        ref = Reference(case)
        record["on"] = True
        with untouched(case.model, case.start):
            ls = case.landscape()
            surf = ls.plane(seed=4, resolution=(3, 4), evaluator="loop", progress=False)
        record["on"] = False
        assert_close(surf.losses, _plane_ref(ref, surf))
    finally:
        handle.remove()
    assert seen and any(seen), "the conv net never ran channels-last"
    assert case.model.conv.weight.is_contiguous()


# -- flat writes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lstm", "gru", "parametrized", "frozen_all", "gpt2", "batchnorm"])
def test_flat_writes(name, monkeypatch):
    """A point is written through views of one flat buffer (asserted): LSTM/GRU flat weights, parametrization
    originals, the tied GPT-2 embedding, BatchNorm buffers in the interpolation all see it."""
    made = []

    class Spy(E.FlatWrites):
        def __init__(self, moving, *args, **kwargs):
            super().__init__(moving, *args, **kwargs)
            made.append(len(self.swapped))

    monkeypatch.setattr(E, "FlatWrites", Spy)
    case = Z.build(name)
    _run_all(case, Reference(case))
    assert made and max(made) > 1, f"flat writes never re-pointed several tensors ({made})"


# -- evaluator="auto" (the CUDA path, simulated on the CPU) ----------------------------------------------------------
@pytest.fixture
def cuda_auto():
    """evaluator="auto" as it resolves on CUDA (vmap with autotune), tuning tiles of 32 points already."""
    return auto_as_on_cuda(auto_min_points=32)


AUTO_CASES = ["shared_linear", "batchnorm", "gpt2", "lstm"]


@pytest.mark.parametrize("name", AUTO_CASES)
def test_auto_tuner_values(name, cuda_auto):
    """A 36-point plane is one tuned tile: split between the rules that apply, then the loop timed; every share of
    the tile equals the reference.  A model vmap cannot batch (LSTM: no batching rule for aten::lstm) must fall back
    to the loop instead of failing."""
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        surf = case.landscape().plane(seed=5, resolution=(6, 6), evaluator=cuda_auto, progress=False)
    assert surf.meta["evaluator"].startswith("auto"), surf.meta["evaluator"]
    assert "evaluator_timings" in surf.meta
    assert_close(surf.losses, _plane_ref(ref, surf), what=f"{name} auto")


@pytest.mark.parametrize("name", AUTO_CASES)
def test_auto_small_tile_values(name, cuda_auto):
    """A 5-point line is below AUTO_MIN_POINTS: it runs untuned on the device's default rule (a widget's preview);
    its values are the explicit ones, for the LSTM too."""
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        curve = case.landscape().line(seed=3, steps=5, evaluator=cuda_auto, progress=False)
    assert_close(curve.losses, _line_ref(ref, curve), what=f"{name} auto preview")


# -- Dask -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import dask

    from landscape_widgets import distributed as lwd

    env = dict(lwd.worker_environ(), OMP_NUM_THREADS="1")  # tiny models: one thread (see conftest.one_thread)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.mark.parametrize("name", ["shared_linear", "gpt2", "l2_regularized", "weighted_triples"])
def test_dask(name, client):
    """Tiles on a Dask worker process (the model, its loss convention and data pickled there): explicit values."""
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model, case.start):
        ls = case.landscape()
        curve = ls.line(seed=3, steps=5, client=client, progress=False)
        surf = ls.plane(seed=4, resolution=(3, 4), client=client, progress=False)
        interp = ls.interpolate(case.start, steps=4, client=client, progress=False)
    assert "dask" in surf.meta
    check_moved(surf.directions, ref, ref.moved(), surf.meta)
    assert_close(curve.losses, _line_ref(ref, curve))
    assert_close(surf.losses, _plane_ref(ref, surf))
    assert_close(interp.losses, _interp_ref(ref, case.start, interp))


# -- store ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["shared_linear", "gpt2", "weighted_triples", "frozen_lora", "batchnorm"])
def test_store(name, tmp_path):
    """store=dir: the first run computes and keeps the tiles, the second loads them all; both explicit."""
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        first = case.landscape().plane(seed=4, resolution=(3, 4), store=tmp_path / "plane", progress=False)
        again = case.landscape().plane(seed=4, resolution=(3, 4), store=tmp_path / "plane", progress=False)
        line = case.landscape().line(seed=3, steps=5, store=tmp_path / "line", progress=False)
    assert first.meta["store"]["tiles_computed"] > 0
    assert again.meta["store"]["tiles_computed"] == 0 and again.meta["store"]["tiles_loaded"] > 0
    np.testing.assert_array_equal(first.losses, again.losses)
    assert_close(first.losses, _plane_ref(ref, first))
    assert_close(line.losses, _line_ref(ref, line))
