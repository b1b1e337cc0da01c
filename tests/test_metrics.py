"""Metrics beside the loss (``Landscape(metrics=...)``): every value against explicit ``functional_call`` arithmetic
at the reported points (the sample-weighted mean over the batches of each metric, by hand), on every path: the loop
and vmap, one batch and several, micro-batches, the input-affine shortcut, BatchNorm recompute, the resumable store
and Dask; results saved, loaded and turned into xarray; bad metrics give clear errors."""
import copy
import json
import threading
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from landscape_widgets import accelerations as E, batched as B

from helpers import SmallNet, assert_same, force_micro_batches, small_data, snapshot
from zoo import models as Z
from zoo.checks import assert_close, untouched
from zoo.reference import (aliases, batches, canonical, interpolation_buffers, interpolation_point, moved_names,
                           normalize_dict, point, sample_count)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- metrics (module level: Dask workers unpickle them) ----------------------------------------------------------------
def accuracy(out, y):
    return (out.argmax(-1) == y).float().mean()


def mean_logit(out, y):
    return out.mean()


def mae(out, y):
    return (out - y).abs().mean()


def hf_accuracy(out, batch):
    return (out.logits.argmax(-1) == batch["labels"]).float().mean()


def top_logit(out, y):
    """Not a mean over samples: the largest output of the whole batch."""
    return out.max()


def item_accuracy(out, y):
    """A metric vmap cannot trace (``.item()``): the per-point fallback computes it."""
    return torch.tensor((out.argmax(-1) == y).float().mean().item())


METRICS = {
    "shared_linear": {"accuracy": accuracy, "mean_logit": mean_logit},
    "tied_autoencoder": {"mae": mae},
    "lstm": {"accuracy": accuracy},
    "bert": {"accuracy": hf_accuracy},
    "unequal_loader": {"accuracy": accuracy},
    "batchnorm": {"accuracy": accuracy},
}


# -- the explicit reference ------------------------------------------------------------------------------------------
def _call(model, state, inputs):
    if isinstance(inputs, Mapping):
        return functional_call(model, state, (), dict(inputs))
    return functional_call(model, state, (inputs,))


def _loss_of(case):
    if case.loss_fn is not None:
        return case.loss_fn
    return lambda out, batch: out.loss


def explicit(case, values, metrics, buffers=None, model=None, per_batch=False):
    """name -> the sample-weighted mean over the batches of ``fn(outputs, targets or batch)``, "loss" included, with
    the parameters at ``values`` (canonical names; written under every alias of a tied parameter) and ``buffers``,
    on a deep copy in eval mode.  ``per_batch``: the plain (unweighted) mean of the batch values instead."""
    model = copy.deepcopy(case.ref_model if model is None else model).eval()
    pairs = case.loss_fn is not None
    state = {alias: values[n] for n, names in aliases(model).items() for alias in names}
    state.update(buffers or {})
    fns = {"loss": _loss_of(case), **metrics}
    acc, total, count = {k: 0.0 for k in fns}, 0, 0
    with torch.no_grad():
        for b in batches(case.data, pairs=pairs):
            inputs, arg = (b[0], b[1]) if pairs else (b, b)
            out = _call(model, state, inputs)
            n = sample_count(b, pairs=pairs)
            for k, fn in fns.items():
                acc[k] += float(fn(out, arg)) * (1 if per_batch else n)
            total += n
            count += 1
    return {k: v / (count if per_batch else total) for k, v in acc.items()}


def recompute_explicit(case, values, metrics):
    """buffers="recompute": BatchNorm statistics re-estimated at the point with cumulative averages over one
    train-mode pass (torch.optim.swa_utils.update_bn), then the eval-mode loss and metrics."""
    m = copy.deepcopy(case.ref_model)
    with torch.no_grad():
        own = canonical(m)
        for n, t in values.items():
            own[n].copy_(t)
        for bn in m.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.reset_running_stats()
                bn.momentum = None
        m.train()
        for x, _y in batches(case.data, pairs=True):
            m(x)
    return explicit(case, {n: p.detach() for n, p in canonical(m).items()}, metrics,
                    {n: b.detach() for n, b in m.named_buffers()}, model=m)


def reference_plane(case, surf, metrics):
    moved = moved_names(case.ref_model, case.params)
    d1, d2 = (normalize_dict(d, case.ref_model) for d in surf.directions)
    rows = [[explicit(case, point(case.ref_model, moved, [d1, d2], [a, b]), metrics) for b in surf.betas]
            for a in surf.alphas]
    return {k: np.array([[r[k] for r in row] for row in rows]) for k in ["loss", *metrics]}


def reference_line(case, curve, metrics):
    moved = moved_names(case.ref_model, case.params)
    d = normalize_dict(curve.direction, case.ref_model)
    pts = [explicit(case, point(case.ref_model, moved, [d], [a]), metrics) for a in curve.alphas]
    return {k: np.array([p[k] for p in pts]) for k in ["loss", *metrics]}


def reference_interpolation(case, curve, metrics):
    moved = moved_names(case.ref_model, case.params)
    sp = {n: p.detach() for n, p in case.start.named_parameters()}
    sb = {n: b.detach() for n, b in case.start.named_buffers()}
    pts = [explicit(case, interpolation_point(case.ref_model, sp, moved, float(a)),
                    metrics, interpolation_buffers(case.ref_model, sb, float(a))) for a in curve.alphas]
    return {k: np.array([p[k] for p in pts]) for k in ["loss", *metrics]}


def check(result, ref, what=""):
    assert list(result.metrics) == [k for k in ref if k != "loss"], (list(result.metrics), list(ref))
    assert result.meta["metrics"] == list(result.metrics)
    assert_close(result.losses, ref["loss"], what=f"{what} loss")
    for name, values in result.metrics.items():
        assert values.shape == result.losses.shape and values.dtype == np.float64
        assert_close(values, ref[name], what=f"{what} {name}")


def run_all(case, metrics, **kw):
    """line, plane and interpolate of ``case`` with ``metrics``, each against the reference; model and RNG untouched."""
    with untouched(case.model, case.start):
        ls = case.landscape(metrics=metrics)
        curve = ls.line(seed=3, steps=4, progress=False, **kw)
        surf = ls.plane(seed=4, resolution=(3, 3), progress=False, **kw)
        interp = ls.interpolate(case.start, steps=3, progress=False, **kw)
    check(curve, reference_line(case, curve, metrics), f"{case.name} line")
    check(surf, reference_plane(case, surf, metrics), f"{case.name} plane")
    check(interp, reference_interpolation(case, interp, metrics), f"{case.name} interpolate")
    return curve, surf, interp


# -- values on every path ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,evaluator", [
    ("shared_linear", "loop"), ("shared_linear", "vmap"), ("tied_autoencoder", "loop"), ("tied_autoencoder", "vmap"),
    ("lstm", "loop"), ("bert", "loop"), ("bert", "vmap"), ("unequal_loader", "loop"), ("unequal_loader", "vmap")])
def test_metrics_match_explicit_arithmetic(name, evaluator, monkeypatch):
    """Tied and shared weights (the shortcut layer's other users), an LSTM, a HuggingFace model with its own loss
    and dict batches (the metric reads outputs.logits and batch["labels"]), a DataLoader with an unequal last
    batch: loss and metrics at every point are the explicit ones, on the loop and on vmap.  On vmap the argmax
    metrics run inside vmap (asserted), with the loss."""
    in_vmap = []
    real = B.VmapEvaluator._vmapped_losses

    def spy(self, *args):
        out = real(self, *args)
        in_vmap.append(self._loss_in_vmap)
        return out

    monkeypatch.setattr(B.VmapEvaluator, "_vmapped_losses", spy)
    case = Z.build(name)
    curve, surf, interp = run_all(case, METRICS[name], evaluator=evaluator)
    if evaluator == "vmap":
        assert surf.meta["evaluator"] == "vmap" and in_vmap and all(in_vmap)
    assert curve.meta["metrics"] == list(METRICS[name])


def test_batches_are_weighted_by_their_sample_counts():
    """A DataLoader of 6, 6 and 3 samples: the accuracy is the sample-weighted mean of the batch accuracies (what
    one batch of all 15 samples gives), not their plain mean, which differs at these points."""
    case = Z.build("unequal_loader")
    ls = case.landscape(metrics={"accuracy": accuracy})
    surf = ls.plane(seed=4, resolution=(3, 3), progress=False)
    xs, ys = zip(*case.data)
    one = Z.Case("one", case.model, (torch.cat(xs), torch.cat(ys)), loss_fn=case.loss_fn)
    whole = one.landscape(metrics={"accuracy": accuracy}).plane(directions=surf, resolution=(3, 3), progress=False)
    assert_close(surf.metrics["accuracy"], whole.metrics["accuracy"])
    moved = moved_names(case.model, None)
    d1, d2 = surf.directions
    plain = np.array([[explicit(case, point(case.model, moved, [d1, d2], [a, b]), {"accuracy": accuracy},
                                per_batch=True)["accuracy"] for b in surf.betas] for a in surf.alphas])
    assert np.abs(plain - surf.metrics["accuracy"]).max() > 1e-3  # the weighting is visible here


def test_metrics_leave_the_losses_bitwise_unchanged():
    """The loss with metrics is bitwise the loss without them, on the loop and on vmap; ``.metrics`` is {} without."""
    case = Z.build("shared_linear")
    for evaluator in ("loop", "vmap"):
        plain = case.landscape().plane(seed=4, resolution=(3, 4), progress=False, evaluator=evaluator)
        with_m = case.landscape(metrics=METRICS["shared_linear"]).plane(seed=4, resolution=(3, 4), progress=False,
                                                                        evaluator=evaluator)
        np.testing.assert_array_equal(plain.losses, with_m.losses)
        assert plain.metrics == {} and plain.meta["metrics"] == []


# -- accelerations, each asserted used -------------------------------------------------------------------------------
def test_input_affine_shortcut(monkeypatch):
    made = []

    class Spy(E._AffineShortcut):
        def __init__(self, evaluator, module, *args, **kwargs):
            made.append(type(module).__name__)
            super().__init__(evaluator, module, *args, **kwargs)

    monkeypatch.setattr(E, "_AffineShortcut", Spy)
    case = Z.build("shared_linear")
    with untouched(case.model):
        ls = case.landscape(metrics=METRICS["shared_linear"])
        surf = ls.plane(seed=4, resolution=(3, 3), progress=False, evaluator="loop", ignore=None)
    assert made, "the input-affine shortcut was never used"
    check(surf, reference_plane(case, surf, METRICS["shared_linear"]), "shortcut")


@pytest.fixture
def micro(monkeypatch):
    """Micro-batches forced on (any activation is 'large', chunks of 5 samples: 24 = 4 x 5 + 4, so that unequal
    chunk weights show); every plan made is recorded."""
    return force_micro_batches(monkeypatch, 5)


def test_micro_batches(micro):
    """The batch cut in chunks of 5, 5, 5, 5 and 4 (asserted): the chunks' metrics are averaged with their sample
    counts."""
    case = Z.build("batchnorm")
    run_all(case, METRICS["batchnorm"], evaluator=micro.loop)
    used = [p for p in micro.plans if p is not None]
    assert used and all(p == [5, 5, 5, 5, 4] for p in used), micro.plans


def test_micro_batches_refused_for_a_metric_that_is_no_mean(micro):
    """A metric of the whole batch (its largest output) keeps the batch whole: its values are the full batch's."""
    case = Z.build("batchnorm")
    metrics = {"accuracy": accuracy, "top": top_logit}
    ls = case.landscape(metrics=metrics)
    surf = ls.plane(seed=4, resolution=(3, 3), progress=False, evaluator=micro.loop)
    assert micro.plans and all(p is None for p in micro.plans), micro.plans
    check(surf, reference_plane(case, surf, metrics), "whole batch")


def test_vmap_falls_back_per_point_for_a_metric_vmap_cannot_trace(monkeypatch):
    seen = []
    real = B.VmapEvaluator._vmapped_losses

    def spy(self, *args):
        out = real(self, *args)
        seen.append(self._loss_in_vmap)
        return out

    monkeypatch.setattr(B.VmapEvaluator, "_vmapped_losses", spy)
    case = Z.build("shared_linear")
    metrics = {"accuracy": item_accuracy}
    with untouched(case.model):
        surf = case.landscape(metrics=metrics).plane(seed=4, resolution=(3, 3), progress=False, evaluator="vmap")
    assert seen and not any(seen)  # computed per point on vmap's outputs
    check(surf, reference_plane(case, surf, metrics), "vmap fallback")


@pytest.mark.parametrize("split", [False, True], ids=["one_batch", "two_batches"])
def test_batchnorm_recompute(split):
    """interpolate(buffers="recompute"): the statistics re-estimated at every point, then loss and accuracy."""
    case = Z.build("batchnorm")
    if split:
        x, y = case.data
        case = Z.Case(case.name, case.model, [(x[:15], y[:15]), (x[15:], y[15:])], loss_fn=case.loss_fn,
                      start=case.start)
    metrics = METRICS["batchnorm"]
    with untouched(case.model, case.start):
        curve = case.landscape(metrics=metrics).interpolate(case.start, steps=3, buffers="recompute",
                                                            progress=False)
    moved = moved_names(case.model, None)
    sp = {n: p.detach() for n, p in case.start.named_parameters()}
    pts = [recompute_explicit(case, interpolation_point(case.model, sp, moved, float(a)), metrics)
           for a in curve.alphas]
    check(curve, {k: np.array([p[k] for p in pts]) for k in ["loss", *metrics]}, "recompute")


# -- store ------------------------------------------------------------------------------------------------------------
def test_store_resumes_with_metrics_and_keeps_runs_apart(tmp_path):
    """A plane of two tiles cancelled after the first, resumed from the store: the finished tile is loaded, the
    other computed, and the values are the uninterrupted run's.  A run with other metrics (or none) is refused."""
    case = Z.build("shared_linear")
    metrics = METRICS["shared_linear"]
    ls = case.landscape(metrics=metrics)
    store = tmp_path / "plane"
    stop = threading.Event()
    tiles = []

    def on_tile(tile):
        tiles.append(tile)
        stop.set()

    opts = dict(seed=4, resolution=(34, 2), progress=False, evaluator="loop")
    with untouched(case.model), pytest.raises(lw.Cancelled):
        ls.plane(store=store, callback=on_tile, cancel=stop, **opts)
    assert len(tiles) == 1 and list(tiles[0].metrics) == list(metrics)
    resumed = ls.plane(store=store, **opts)
    assert resumed.meta["store"]["tiles_loaded"] == 1 and resumed.meta["store"]["tiles_computed"] == 1
    whole = ls.plane(**opts)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for n in metrics:
        np.testing.assert_array_equal(resumed.metrics[n], whole.metrics[n])
        np.testing.assert_array_equal(tiles[0].metrics[n], whole.metrics[n].ravel()[tiles[0].start:tiles[0].stop])
    check(resumed, reference_plane(case, resumed, metrics), "resumed")
    settings = json.loads((store / "run.json").read_text())["settings"]
    assert [m["name"] for m in settings["metrics"]] == list(metrics)
    with pytest.raises(ValueError, match="metrics"):
        case.landscape().plane(store=store, **opts)
    with pytest.raises(ValueError, match="metrics"):
        case.landscape(metrics={"accuracy": accuracy}).plane(store=store, **opts)
    with pytest.raises(ValueError, match="metrics"):
        case.landscape(metrics={"accuracy": mean_logit, "mean_logit": accuracy}).plane(store=store, **opts)
    plain = tmp_path / "plain"
    case.landscape().plane(store=plain, **opts)
    assert "metrics" not in json.loads((plain / "run.json").read_text())["settings"]  # stores made before still open
    with pytest.raises(ValueError, match="metrics"):
        ls.plane(store=plain, **opts)


# -- Dask -------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import dask

    from landscape_widgets import distributed as lwd

    env = dict(lwd.worker_environ(), OMP_NUM_THREADS="1")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    cl = distributed.Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shared_linear", "bert"])
def test_dask(name, client):
    """Tiles on a Dask worker process: the worker computes the same [loss, metrics] vector."""
    case = Z.build(name)
    metrics = METRICS[name]
    with untouched(case.model):
        ls = case.landscape(metrics=metrics)
        surf = ls.plane(seed=4, resolution=(3, 3), client=client, progress=False)
        curve = ls.line(seed=3, steps=4, client=client, progress=False)
    assert "dask" in surf.meta
    check(surf, reference_plane(case, surf, metrics), "dask plane")
    check(curve, reference_line(case, curve, metrics), "dask line")


# -- results ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results():
    model, data = SmallNet(), small_data()
    metrics = {"z_accuracy": accuracy, "a_mean": mean_logit}  # not alphabetical: the order given is kept
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu", metrics=metrics)
    plain = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    return {"curve": ls.line(steps=4, progress=False), "surface": ls.plane(resolution=(3, 4), progress=False),
            "spread": ls.seed_spread(2, resolution=3), "plain": plain.line(steps=4, progress=False), "ls": ls}


@pytest.mark.parametrize("kind", ["curve", "surface", "spread"])
def test_save_and_load_round_trip(kind, results, tmp_path):
    result = results[kind]
    assert list(result.metrics) == ["z_accuracy", "a_mean"] and result.meta["metrics"] == ["z_accuracy", "a_mean"]
    back = lw.load(result.save(tmp_path / kind))
    assert type(back) is type(result) and list(back.metrics) == ["z_accuracy", "a_mean"]
    np.testing.assert_array_equal(back.losses, result.losses)
    for n, v in result.metrics.items():
        assert v.shape == result.losses.shape
        np.testing.assert_array_equal(back.metrics[n], v)


def test_seed_spread_metrics_are_each_seeds_plane(results):
    spread, ls = results["spread"], results["ls"]
    for k, seed in enumerate(spread.seeds):
        surf = ls.plane(seed=int(seed), resolution=3, progress=False)
        np.testing.assert_array_equal(spread.losses[k], surf.losses)
        for n in surf.metrics:
            np.testing.assert_array_equal(spread.metrics[n][k], surf.metrics[n])


def test_without_metrics_and_files_written_before(results, tmp_path):
    plain = results["plain"]
    back = lw.load(plain.save(tmp_path / "plain"))
    assert back.metrics == {} and plain.metrics == {}
    with np.load(tmp_path / "plain.npz") as z:
        assert not any(k.startswith("metrics/") for k in z.files)
    # a file as earlier versions wrote it: no metrics arrays and no meta["metrics"]
    meta = {k: v for k, v in plain.meta.items() if k != "metrics"}
    np.savez_compressed(tmp_path / "old.npz", __kind__=np.array("Curve"), __format__=np.array(1),
                        __meta__=np.array(json.dumps(meta)), alphas=plain.alphas, losses=plain.losses)
    old = lw.load(tmp_path / "old.npz")
    assert old.metrics == {} and "metrics" not in old.meta
    np.testing.assert_array_equal(old.losses, plain.losses)


def test_to_xarray(results):
    pytest.importorskip("xarray")
    surf = results["surface"]
    ds = surf.to_xarray()
    assert list(ds.data_vars) == ["loss", "z_accuracy", "a_mean"]
    np.testing.assert_array_equal(ds["loss"].values, surf.losses)
    np.testing.assert_array_equal(ds["z_accuracy"].values, surf.metrics["z_accuracy"])
    np.testing.assert_array_equal(ds["alpha"].values, surf.alphas)
    assert ds["a_mean"].dims == ("alpha", "beta")
    curve = results["curve"].to_xarray()
    np.testing.assert_array_equal(curve["z_accuracy"].values, results["curve"].metrics["z_accuracy"])
    plain = results["plain"].to_xarray()
    assert plain.name == "loss" and plain.dims == ("alpha",)  # without metrics: the DataArray as before


def test_result_checks_metric_shapes():
    with pytest.raises(ValueError, match="metric 'acc'.*shape"):
        lw.Curve([0.0, 1.0], [1.0, 2.0], metrics={"acc": [1.0, 2.0, 3.0]})


def test_tiles_carry_metrics():
    model, data = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu", metrics={"accuracy": accuracy})
    tiles = []
    surf = ls.plane(resolution=(34, 2), progress=False, callback=tiles.append)
    assert len(tiles) == 2
    np.testing.assert_array_equal(np.concatenate([t.values for t in tiles]), surf.losses.ravel())
    np.testing.assert_array_equal(np.concatenate([t.metrics["accuracy"] for t in tiles]),
                                  surf.metrics["accuracy"].ravel())
    assert lw.Landscape(model, nn.CrossEntropyLoss(), data).line(steps=3, progress=False,
                                                                callback=tiles.append).metrics == {}
    assert tiles[-1].metrics == {}


# -- errors and odd values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("metrics,error,match", [
    ([accuracy], TypeError, "metrics must be a dict"),
    ({1: accuracy}, TypeError, "metric names must be non-empty strings"),
    ({"": accuracy}, TypeError, "non-empty strings"),
    ({"loss": accuracy}, ValueError, "'loss' is taken"),
    ({"alpha": accuracy}, ValueError, "'alpha' is taken"),
    ({"acc": 3}, TypeError, "metric 'acc' must be callable"),
])
def test_bad_metrics_are_refused_at_construction(metrics, error, match):
    with pytest.raises(error, match=match):
        lw.Landscape(SmallNet(), nn.CrossEntropyLoss(), small_data(), metrics=metrics)


def test_batch_loss_with_metrics_says_what_to_do():
    case = Z.build("l2_regularized")
    with pytest.raises(ValueError, match="batch_loss.*loss_fn"):
        lw.Landscape(case.model, data=case.data, batch_loss=case.batch_loss, metrics={"accuracy": accuracy})
    lw.Landscape(case.model, data=case.data, batch_loss=case.batch_loss, metrics={})  # no metrics: fine


@pytest.mark.parametrize("evaluator", ["loop", "vmap"])
@pytest.mark.parametrize("fn,error,match", [
    (lambda out, y: out.argmax(-1) == y, ValueError, "metric 'bad' must return a scalar.*shape \\(40,\\)"),
    (lambda out, y: "high", TypeError, "metric 'bad' must return a scalar tensor or a number"),
])
def test_a_bad_metric_value_names_the_metric(fn, error, match, evaluator):
    model, data = SmallNet(), small_data()
    model.train()
    snap, rng = snapshot(model), torch.get_rng_state()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu", metrics={"bad": fn})
    with pytest.raises(error, match=match):
        ls.line(steps=3, progress=False, evaluator=evaluator)
    assert_same(model, snap)
    assert torch.equal(rng, torch.get_rng_state())


def test_nan_and_plain_numbers_are_values():
    model, data = SmallNet(), small_data()
    metrics = {"nan": lambda out, y: out.sum() * float("nan"), "half": lambda out, y: 0.5,
               "count": lambda out, y: (out.argmax(-1) == y).sum()}  # an integer tensor: the mean of the counts
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu", metrics=metrics)
    curve = ls.line(steps=3, progress=False)
    assert np.isnan(curve.metrics["nan"]).all() and np.isfinite(curve.losses).all()
    np.testing.assert_array_equal(curve.metrics["half"], 0.5)
    ref = ls.line(steps=3, progress=False, evaluator="vmap")
    np.testing.assert_array_equal(ref.metrics["count"], curve.metrics["count"])
    x, y = data
    m = copy.deepcopy(model).eval()
    values = {n: p.detach() + 0.0 for n, p in m.named_parameters()}
    d = curve.direction
    for a, got in zip(curve.alphas, curve.metrics["count"]):
        state = {n: values[n] + float(a) * d[n] for n in values}
        with torch.no_grad():
            want = float((functional_call(m, state, (x,)).argmax(-1) == y).sum())
        assert got == want


def test_the_hessian_uses_the_loss_alone():
    """Spectra with and without metrics are the same numbers: nothing differentiates the metrics."""
    model, data = SmallNet(), small_data()
    kw = dict(k=1, bottom=1, density=False, trace=False, progress=False)
    plain = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu").spectrum(**kw)
    with_m = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu",
                          metrics={"accuracy": accuracy}).spectrum(**kw)
    np.testing.assert_array_equal(plain.top_eigenvalues, with_m.top_eigenvalues)
    np.testing.assert_array_equal(plain.bottom_eigenvalues, with_m.bottom_eigenvalues)


def test_loss_at_the_model_with_metrics():
    model, (x, y) = SmallNet(), small_data()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu", metrics={"accuracy": accuracy})
    with torch.no_grad():
        want = float(F.cross_entropy(copy.deepcopy(model).eval()(x), y))
    assert ls.loss() == pytest.approx(want, rel=1e-6)
