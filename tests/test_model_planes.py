"""Planes and lines through other models (Li et al.'s --model_file2/3), their marks, BatchNorm buffers and the loss
barrier, against explicit functional_call arithmetic built by hand from the three state_dicts."""
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import landscape_widgets as lw
from helpers import SmallNet, assert_same, small_data, snapshot
from landscape_widgets import directions as D
from zoo import models as Z
from zoo.reference import Reference, canonical, float_buffers

CE = nn.CrossEntropyLoss()
RTOL, ATOL = 1e-5, 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def three():
    model, b, c = SmallNet(0), SmallNet(1), SmallNet(2)
    for m in (model, b, c):
        m.train()  # as after training: neither used nor changed
    return model, b, c, small_data()


def sd64(model):
    return {n: t.detach().double() for n, t in model.state_dict().items() if t.is_floating_point()}


def hand_plane(model, b, c):
    """d1, d2 over the parameters and the buffers' directions, written out from the three state_dicts."""
    s0, sb, sc = sd64(model), sd64(b), sd64(c)
    pnames = [n for n, _ in model.named_parameters()]
    bnames = [n for n, t in model.named_buffers() if t.is_floating_point()]
    d1 = {n: sb[n] - s0[n] for n in pnames}
    dc = {n: sc[n] - s0[n] for n in pnames}
    a_c = sum(float((dc[n] * d1[n]).sum()) for n in pnames) / sum(float((d1[n] ** 2).sum()) for n in pnames)
    d2 = {n: dc[n] - a_c * d1[n] for n in pnames}
    bd1 = {n: sb[n] - s0[n] for n in bnames}
    bd2 = {n: (sc[n] - s0[n]) - a_c * bd1[n] for n in bnames}
    return s0, d1, d2, bd1, bd2, a_c


def ref_loss(model, params, buffers, x, y):
    """The eval-mode loss of a deep copy with ``params`` and ``buffers`` (float64 arithmetic, cast) swapped in."""
    m = copy.deepcopy(model).eval()
    state = {n: t.float() for n, t in {**params, **buffers}.items()}
    with torch.no_grad():
        return float(F.cross_entropy(functional_call(m, state, (x,)), y))


def own_loss(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(copy.deepcopy(model).eval()(x), y))


def at(s0, dirs, coeffs, names):
    return {n: s0[n] + sum(c * d[n] for c, d in zip(coeffs, dirs)) for n in names}


def recompute_ref(model, params, x, y):
    """update_bn at the point (cumulative averages over the data), then the eval-mode loss."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(params[n].float())
    torch.optim.swa_utils.update_bn([x], m)
    m.eval()
    with torch.no_grad():
        return float(F.cross_entropy(m(x), y))


# -- the plane --------------------------------------------------------------------------------------------------
def test_plane_points_marks_and_buffers_equal_hand_arithmetic(three):
    model, b, c, (x, y) = three
    snaps = [snapshot(m) for m in (model, b, c)]
    rng = torch.get_rng_state()
    surf = lw.Landscape(model, CE, (x, y)).plane(directions=(b, c), resolution=(5, 4), progress=False)
    s0, d1, d2, bd1, bd2, a_c = hand_plane(model, b, c)
    pnames, bnames = list(d1), list(bd1)
    assert surf.meta["a_c"] == pytest.approx(a_c, rel=1e-9)
    np.testing.assert_allclose(np.array(surf.meta["models"]["coords"]), [[0, 0], [1, 0], [a_c, 1]], atol=1e-12)
    assert surf.meta["models"]["labels"] == ["model", "model_b", "model_c"]
    assert surf.meta["buffers"] == "interpolate" and surf.meta["direction_kind"] == "models"
    # default grid: the marks' extent with a quarter of it on each side
    lo, hi = min(0, a_c), max(1, a_c)
    np.testing.assert_allclose(surf.span, ((lo - (hi - lo) / 4, hi + (hi - lo) / 4), (-0.25, 1.25)), atol=1e-12)
    for k, d in enumerate((d1, d2)):
        for n in pnames:
            torch.testing.assert_close(surf.directions[k][n].double(), d[n], rtol=1e-5, atol=1e-6)
    for i, a in enumerate(surf.alphas):
        for j, bb in enumerate(surf.betas):
            ref = ref_loss(model, at(s0, (d1, d2), (a, bb), pnames), at(s0, (bd1, bd2), (a, bb), bnames), x, y)
            assert surf.losses[i, j] == pytest.approx(ref, rel=RTOL, abs=ATOL), (i, j)
    # each model's own loss (its weights and its BatchNorm statistics, eval mode) at its mark
    np.testing.assert_allclose(surf.meta["models"]["losses"], [own_loss(m, x, y) for m in (model, b, c)],
                               rtol=RTOL, atol=ATOL)
    for m, s in zip((model, b, c), snaps):
        assert_same(m, s)
    assert torch.equal(rng, torch.get_rng_state())


def test_buffers_model_and_recompute_against_hand_built_statistics(three):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    s0, d1, d2, _bd1, _bd2, a_c = hand_plane(model, b, c)
    pnames = list(d1)
    own = {n: t for n, t in sd64(model).items() if n not in d1}
    kept = ls.plane(directions=(b, c), resolution=3, buffers="model", progress=False)
    assert kept.meta["buffers"] == "model"
    for i, a in enumerate(kept.alphas):
        for j, bb in enumerate(kept.betas):
            ref = ref_loss(model, at(s0, (d1, d2), (a, bb), pnames), own, x, y)
            assert kept.losses[i, j] == pytest.approx(ref, rel=RTOL, abs=ATOL)
    marks = kept.meta["models"]
    assert marks["losses"][1] == pytest.approx(ref_loss(model, sd64(b), own, x, y), rel=RTOL)  # b's weights, θ's BN
    fresh = ls.plane(directions=(b, c), resolution=2, buffers="recompute", progress=False)
    for i, a in enumerate(fresh.alphas):
        for j, bb in enumerate(fresh.betas):
            ref = recompute_ref(model, at(s0, (d1, d2), (a, bb), pnames), x, y)
            assert fresh.losses[i, j] == pytest.approx(ref, rel=RTOL, abs=ATOL)
    for k, (coeffs, m) in enumerate(zip(([0, 0], [1, 0], [a_c, 1]), (model, b, c))):
        ref = recompute_ref(model, at(s0, (d1, d2), coeffs, pnames), x, y)
        assert fresh.meta["models"]["losses"][k] == pytest.approx(ref, rel=RTOL, abs=ATOL)


def test_other_kinds_take_model_or_recompute_but_not_interpolate(three):
    model, _b, _c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    plain = ls.plane(resolution=3, span=0.5, progress=False)
    same = ls.plane(resolution=3, span=0.5, buffers="model", progress=False)
    np.testing.assert_array_equal(plain.losses, same.losses)  # "model" is what random planes always did
    assert "buffers" not in plain.meta and same.meta["buffers"] == "model"
    fresh = ls.plane(resolution=2, span=0.5, buffers="recompute", progress=False)
    d1, d2 = fresh.directions
    s0 = sd64(model)
    for i, a in enumerate(fresh.alphas):
        for j, bb in enumerate(fresh.betas):
            params = {n: s0[n] + a * d1[n].double() + bb * d2[n].double() for n in d1}
            assert fresh.losses[i, j] == pytest.approx(recompute_ref(model, params, x, y), rel=RTOL, abs=ATOL)
    with pytest.raises(ValueError, match="buffers='interpolate' needs buffer directions"):
        ls.plane(resolution=3, buffers="interpolate", progress=False)
    with pytest.raises(ValueError, match="buffers='interpolate' needs buffer directions"):
        ls.line(buffers="interpolate", progress=False)
    with pytest.raises(ValueError, match="buffers='sideways' is not known"):
        ls.plane(resolution=3, buffers="sideways", progress=False)


def test_state_dicts_modules_and_saved_state_dicts_agree(three, tmp_path):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    by_module = ls.plane(directions=(b, c), resolution=4, progress=False)
    by_state = ls.plane(directions=[b.state_dict(), c.state_dict()], resolution=4, progress=False)
    buf = io.BytesIO()
    torch.save(c.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf)  # torch.save/torch.load keep the state_dict's _metadata
    mixed = ls.plane(directions=(b, loaded), resolution=4, progress=False)
    np.testing.assert_array_equal(by_module.losses, by_state.losses)
    np.testing.assert_array_equal(by_module.losses, mixed.losses)
    assert by_module.meta["models"] == by_state.meta["models"]
    path = by_module.save(tmp_path / "plane.npz")
    back = lw.load(path)
    assert back.meta["models"] == by_module.meta["models"] and back.meta["a_c"] == by_module.meta["a_c"]
    np.testing.assert_array_equal(back.losses, by_module.losses)


def test_a_models_surface_reused_keeps_grid_and_marks_with_the_models_buffers(three):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    surf = ls.plane(directions=(b, c), resolution=4, progress=False)
    again = ls.plane(directions=surf, resolution=4, progress=False)  # no buffer directions kept: "model"
    kept = ls.plane(directions=(b, c), resolution=4, buffers="model", progress=False)
    assert again.span == surf.span and again.meta["buffers"] == "model"
    assert again.meta["models"]["coords"] == surf.meta["models"]["coords"]
    np.testing.assert_allclose(again.losses, kept.losses, rtol=1e-6)
    np.testing.assert_allclose(again.meta["models"]["losses"], kept.meta["models"]["losses"], rtol=1e-6)
    with pytest.raises(ValueError, match="an earlier surface's, reused"):
        ls.plane(directions=surf, buffers="interpolate", progress=False)


def test_recognition_rule_state_dicts_are_models_plain_dicts_are_directions(three):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    assert D.kind_of((b, c)) is D.MODELS and D.kind_of((b.state_dict(), c)) is D.MODELS
    assert D.kind_of(b.state_dict(), "direction") is D.MODELS
    plain = [{n: t.detach().clone() for n, t in m.named_parameters()} for m in (b, c)]
    assert D.kind_of(tuple(plain)) is D.EXPLICIT  # plain dicts of parameter names: directions, as always
    surf = ls.plane(directions=tuple(plain), ignore=None, resolution=3, span=0.1, progress=False)
    assert surf.meta["direction_kind"] == "explicit" and "models" not in surf.meta
    s0 = sd64(model)
    own = {n: t for n, t in s0.items() if n not in plain[0]}
    for i, a in enumerate(surf.alphas):  # theta + a * (b's weights) + b * (c's weights): directions as given
        for j, bb in enumerate(surf.betas):
            params = {n: s0[n] + a * plain[0][n].double() + bb * plain[1][n].double() for n in plain[0]}
            assert surf.losses[i, j] == pytest.approx(ref_loss(model, params, own, x, y), rel=RTOL, abs=ATOL)
    # a plain copy of a whole state_dict (buffers too) is neither silently a direction nor guessed to be a model
    with pytest.raises(ValueError, match=r"names buffer\(s\).*load_state_dict"):
        ls.plane(directions=(dict(b.state_dict()), dict(c.state_dict())), resolution=3, progress=False)
    with pytest.raises(TypeError, match="mixes models and direction dicts"):
        ls.plane(directions=(b, plain[1]), resolution=3, progress=False)


# -- zoo: frozen backbone, tied weights, a HuggingFace dict-batch model ----------------------------------------
def _moved_copy(case, seed, scale=0.3):
    """A copy of the case's model with only the moved parameters shifted (the fixed ones shared), BN unchanged."""
    other = copy.deepcopy(case.model)
    ref = Reference(case)
    moved = set(ref.moved())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in canonical(other).items():
            if n in moved:
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def _check_plane_on(case, b, c, resolution=3):
    ref = Reference(case)
    moved = ref.moved()
    ls = case.landscape()
    with_snap = [snapshot(m) for m in (case.model, b, c)]
    surf = ls.plane(directions=(b, c.state_dict()), resolution=resolution, progress=False)
    base = {n: p.detach().double() for n, p in canonical(ref.model).items()}
    vb = {n: p.detach().double() for n, p in canonical(b).items()}
    vc = {n: p.detach().double() for n, p in canonical(c).items()}
    d1 = {n: vb[n] - base[n] for n in moved}
    dc = {n: vc[n] - base[n] for n in moved}
    a_c = sum(float((dc[n] * d1[n]).sum()) for n in moved) / sum(float((d1[n] ** 2).sum()) for n in moved)
    d2 = {n: dc[n] - a_c * d1[n] for n in moved}
    assert surf.meta["a_c"] == pytest.approx(a_c, rel=1e-7)
    bufs = {m: float_buffers(m) for m in (ref.model, b, c)}

    def point(a, bb):
        values = {n: (base[n] + (a * d1[n] + bb * d2[n] if n in moved else 0)).to(p.dtype)
                  for n, p in canonical(ref.model).items()}
        buffers = {n: (t.double() + a * (bufs[b][n].double() - t.double())
                       + bb * ((bufs[c][n].double() - t.double()) - a_c * (bufs[b][n].double() - t.double())))
                   .to(t.dtype) for n, t in bufs[ref.model].items()}
        return ref.loss(values, buffers)

    for i, a in enumerate(surf.alphas):
        for j, bb in enumerate(surf.betas):
            assert surf.losses[i, j] == pytest.approx(point(a, bb), rel=RTOL, abs=ATOL), (case.name, i, j)
    for k, m in enumerate((ref.model, b, c)):
        own = ref.loss({n: p.detach() for n, p in canonical(m).items()}, bufs[m])
        assert surf.meta["models"]["losses"][k] == pytest.approx(own, rel=RTOL, abs=ATOL), (case.name, k)
    for m, s in zip((case.model, b, c), with_snap):
        assert_same(m, s)
    return ls


def test_frozen_backbone_moves_only_the_head_and_fixed_parameters_must_agree():
    case = Z.build("frozen_default")
    b, c = _moved_copy(case, 1), _moved_copy(case, 2)
    ls = _check_plane_on(case, b, c)
    trimmed = {n: t for n, t in c.state_dict().items() if n.startswith("head.")}  # fixed ones may be left out
    trimmed = type(c.state_dict())(trimmed)
    trimmed._metadata = c.state_dict()._metadata
    np.testing.assert_array_equal(ls.plane(directions=(b, trimmed), resolution=3, progress=False).losses,
                                  ls.plane(directions=(b, c), resolution=3, progress=False).losses)
    other = copy.deepcopy(c)
    with torch.no_grad():
        other.backbone[0].weight.add_(0.01)
    snap = snapshot(other)
    with pytest.raises(ValueError, match=r"differs from the model in parameter\(s\) \['backbone.0.weight'\].*fixed"):
        ls.plane(directions=(b, other), resolution=3, progress=False)
    assert_same(other, snap)


def test_tied_weights_move_once():
    case = Z.build("shared_linear")
    b, c = _moved_copy(case, 1), _moved_copy(case, 2)
    assert b.a.weight is b.b.weight
    _check_plane_on(case, b, c)


def test_huggingface_dict_batches_and_tied_embedding():
    case = Z.build("gpt2")
    b, c = _moved_copy(case, 1, 0.05), _moved_copy(case, 2, 0.05)
    _check_plane_on(case, b, c, resolution=2)


# -- bad inputs -------------------------------------------------------------------------------------------------
def test_bad_models_give_clear_errors_and_leave_everything_untouched(three):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    other_arch = nn.Sequential(nn.Linear(3, 2))
    wide = SmallNet(3)
    wide.fc1 = nn.Linear(3 * 6 * 6, 8)
    wide.fc2 = nn.Linear(8, 4)
    nan = copy.deepcopy(c)
    with torch.no_grad():
        nan.fc2.weight[0, 0] = float("nan")
    on_line = copy.deepcopy(c)  # theta + 2 (theta_b - theta), buffers too: exactly on the line through model and b
    with torch.no_grad():
        for (n, t), tb, t0 in zip(on_line.state_dict().items(), b.state_dict().values(), model.state_dict().values()):
            if t.is_floating_point():
                t.copy_(t0 + 2 * (tb - t0))
    same = copy.deepcopy(model)
    cases = [((b, other_arch), ValueError, "has tensor"), ((b, wide), ValueError, r"has shape \(8, 108\)"),
             ((b, nan), ValueError, "NaN or inf"), ((b, on_line), ValueError, "lies on the line"),
             ((same, c), ValueError, "model_b has the model's own weights"),
             ((b, same), ValueError, "model_c has the model's own weights"),
             ((b,), ValueError, r"two other models: directions=\(model_b, model_c\)"),
             ((b, c, c), ValueError, "got 3"), ((b, "c"), TypeError, "mixes models")]
    every = (model, b, c, other_arch, wide, on_line, same)
    snaps = [snapshot(m) for m in every]
    nan_before = {n: t.clone() for n, t in nan.state_dict().items()}
    rng = torch.get_rng_state()
    for directions, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ls.plane(directions=directions, resolution=3, progress=False)
    with pytest.raises(ValueError, match="normalization='filter' does not apply"):
        ls.plane(directions=(b, c), normalization="filter", resolution=3, progress=False)
    with pytest.raises(ValueError, match=r"needs one other model: direction=model_b"):
        ls.line(direction=(b, c), progress=False)
    state = b.state_dict()
    del state["bn.running_mean"]
    with pytest.raises(ValueError, match="lacks 1 buffer"):
        ls.plane(directions=(state, c), resolution=3, progress=False)
    # without interpolated buffers the models' buffers are not needed
    ls.plane(directions=(state, c), resolution=2, buffers="model", progress=False)
    for m, s in zip(every, snaps):
        assert_same(m, s)
    for n, t in nan.state_dict().items():  # (NaN != NaN: compared with the NaN in place)
        torch.testing.assert_close(t, nan_before[n], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(rng, torch.get_rng_state())


def test_nan_losses_on_the_plane_are_data():
    gen = torch.Generator().manual_seed(0)
    model, b, c = (nn.Sequential(nn.Linear(3, 2)) for _ in range(3))
    for m in (model, b, c):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
    x, y = torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)
    x[0, 0] = float("inf")
    surf = lw.Landscape(model, CE, (x, y)).plane(directions=(b, c), resolution=3, progress=False)
    assert surf.losses.shape == (3, 3) and not np.isfinite(surf.losses).all()


# -- the line and the barrier -----------------------------------------------------------------------------------
def test_line_through_a_model_its_grid_ends_and_barrier(three):
    model, b, _c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y))
    line = ls.line(direction=b.state_dict(), progress=False)
    assert len(line.alphas) == 51 and 0.0 in line.alphas and 1.0 in line.alphas  # exactly
    assert line.alphas[0] == pytest.approx(-0.25, abs=0.02) and line.alphas[-1] == pytest.approx(1.25, abs=0.02)
    s0, sb = sd64(model), sd64(b)
    pnames = [n for n, _ in model.named_parameters()]
    bnames = [n for n in s0 if n not in pnames]
    hand = np.array([ref_loss(model, {n: s0[n] + a * (sb[n] - s0[n]) for n in pnames},
                              {n: s0[n] + a * (sb[n] - s0[n]) for n in bnames}, x, y) for a in line.alphas])
    np.testing.assert_allclose(line.losses, hand, rtol=RTOL, atol=ATOL)
    ends = [own_loss(model, x, y), own_loss(b, x, y)]
    np.testing.assert_allclose(line.meta["models"]["losses"], ends, rtol=RTOL)
    np.testing.assert_allclose(line.losses[[list(line.alphas).index(0.0), list(line.alphas).index(1.0)]], ends,
                               rtol=RTOL)
    seg = (line.alphas >= 0) & (line.alphas <= 1)
    assert line.meta["barrier"] == pytest.approx(hand[seg].max() - np.mean(ends), rel=1e-4, abs=1e-6)
    assert line.meta["barrier_alphas"] == line.alphas[seg].tolist()
    assert line.meta["barrier"] > 0.0  # two unrelated random nets: the midpoint is worse than both ends
    assert line.meta["buffers"] == "interpolate"
    kept = ls.line(direction=b, span=(-1.0, 2.0), steps=7, buffers="model", progress=False)
    own = {n: s0[n] for n in bnames}
    for a, v in zip(kept.alphas, kept.losses):
        assert v == pytest.approx(ref_loss(model, {n: s0[n] + a * (sb[n] - s0[n]) for n in pnames}, own, x, y),
                                  rel=RTOL, abs=ATOL)
    random = ls.line(seed=1, steps=5, progress=False)
    assert "barrier" not in random.meta and "models" not in random.meta
    np.testing.assert_allclose(random.alphas, np.linspace(-1, 1, 5))


def test_interpolate_barrier_evaluates_the_ends_its_grid_lacks(three):
    model, b, _c, (x, y) = three
    curve = lw.Landscape(model, CE, (x, y)).interpolate(b, steps=6, span=(-0.5, 1.5), progress=False)
    assert 0.0 not in curve.alphas and 1.0 not in curve.alphas  # -0.5, -0.1, 0.3, 0.7, 1.1, 1.5
    s0, sb = sd64(b), sd64(model)  # theta(a) = (1 - a) start + a model
    names = list(s0)
    hand = [ref_loss(model, {n: (1 - a) * s0[n] + a * sb[n] for n in names}, {}, x, y) for a in curve.alphas]
    np.testing.assert_allclose(curve.losses, hand, rtol=RTOL, atol=ATOL)
    ends = [own_loss(b, x, y), own_loss(model, x, y)]
    np.testing.assert_allclose(curve.meta["barrier_ends"], ends, rtol=RTOL)
    inside = [v for a, v in zip(curve.alphas, hand) if 0 <= a <= 1]
    assert curve.meta["barrier"] == pytest.approx(max(inside + ends) - np.mean(ends), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(curve.meta["barrier_alphas"], [0.0, 0.3, 0.7, 1.0], atol=1e-12)
    assert curve.meta["models"]["labels"] == ["start", "model"]


def test_loss_barrier_on_given_numbers():
    from landscape_widgets.connect import loss_barrier
    out = loss_barrier([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5], [9.0, 1.0, 4.0, 3.0, 2.0, 9.0], (1.0, 2.0))
    assert out["barrier"] == 4.0 - 1.5 and out["barrier_at"] == 0.25
    assert out["barrier_alphas"] == [0.0, 0.25, 0.5, 1.0]
    nan = loss_barrier([0.0, 0.5, 1.0], [1.0, float("nan"), 1.0], (1.0, 1.0))
    assert np.isnan(nan["barrier"]) and nan["barrier_at"] is None


# -- the widget -------------------------------------------------------------------------------------------------
def test_surface_widget_ships_the_marks(three):
    model, b, c, (x, y) = three
    ls = lw.Landscape(model, CE, (x, y), device="cpu")
    snaps = [snapshot(m) for m in (model, b, c)]
    w = lw.SurfaceWidget(ls, directions=(b, c.state_dict()), resolution=5, trust=False)
    try:
        assert w.error == "" and w._state == "done" and w.directions == "models"
        ref = ls.plane(directions=(b, c), resolution=5, progress=False)
        np.testing.assert_allclose(w.surface.losses, ref.losses, rtol=1e-6)
        assert [m["label"] for m in w._marks] == ["model", "model_b", "model_c"]
        np.testing.assert_allclose([[m["alpha"], m["beta"]] for m in w._marks], ref.meta["models"]["coords"])
        np.testing.assert_allclose([m["loss"] for m in w._marks], [own_loss(m, x, y) for m in (model, b, c)],
                                   rtol=RTOL)
        assert w._controls["kind"]["name"] == "models" and w._controls["kind"]["controls"] == []
        assert "plane through model, model_b, model_c" in w._status
        assert "_marks" in w.export_state()
        w.span = 2.0  # a span overrides the marks' grid; the marks stay
        w.wait(timeout=120)
        assert w.surface.span == ((-2.0, 2.0), (-2.0, 2.0)) and len(w._marks) == 3
    finally:
        w.close()
    with pytest.raises(ValueError, match="lies on the line|model_c has the model's own weights"):
        lw.SurfaceWidget(ls, directions=(b, copy.deepcopy(model)), trust=False)
    with pytest.raises(ValueError, match="directions must be a kind name"):
        lw.SurfaceWidget(ls, directions=({n: p for n, p in model.named_parameters()},) * 2, trust=False)
    for m, s in zip((model, b, c), snaps):
        assert_same(m, s)
    plain = lw.SurfaceWidget(ls, resolution=5, span=0.5, trust=False)
    try:
        assert plain._marks == []
    finally:
        plain.close()


class WithConstant(nn.Module):
    """A non-persistent float buffer (a constant such as rotary frequencies): in named_buffers, not in state_dict."""

    def __init__(self, seed):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("scale", torch.tensor([2.0, 0.5, 1.0]), persistent=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, 3, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.fc(x * self.scale)


def test_state_dicts_without_non_persistent_buffers_use_the_models_own():
    gen = torch.Generator().manual_seed(0)
    model, b, c = WithConstant(0), WithConstant(1), WithConstant(2)
    assert "scale" not in b.state_dict()
    x, y = torch.randn(10, 3, generator=gen), torch.randint(0, 2, (10,), generator=gen)
    ls = lw.Landscape(model, CE, (x, y))
    by_state = ls.plane(directions=(b.state_dict(), c.state_dict()), resolution=3, progress=False)
    by_module = ls.plane(directions=(b, c), resolution=3, progress=False)
    np.testing.assert_array_equal(by_state.losses, by_module.losses)
    np.testing.assert_allclose(by_state.meta["models"]["losses"], [own_loss(m, x, y) for m in (model, b, c)],
                               rtol=RTOL)
