"""The zoo (tests/zoo/models.py) through loss, line, plane and interpolate on every CPU evaluator path, checked
against the independent reference (tests/zoo/reference.py) at the exact points the library reports; the model's
state and the global RNG are checked to be untouched by every call."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw

from zoo import models as Z
from zoo.checks import assert_close, check_evaluator_meta, check_moved, run_path, untouched, use_evaluator
from zoo.reference import (Reference, canonical, interpolation_buffers, interpolation_point,
                           normalize_dict, point)

ZOO = list(Z.BUILDERS)
EVALUATORS = ["loop", "vmap-vmap", "vmap-im2col", "vmap-affine"]


def start_state(start, ref_model):
    """Parameters and buffers of an interpolation start module under the reference model's names."""
    params = {n: p.detach() for n, p in start.named_parameters()}
    buffers = {n: b.detach() for n, b in start.named_buffers()}
    return params, buffers


def interpolation_reference(case, ref, start, alphas, buffers="interpolate", moved=None):
    moved = ref.moved() if moved is None else moved
    sp, sb = start_state(start, ref.model)
    out = []
    for a in alphas:
        values = interpolation_point(ref.model, sp, moved, float(a))
        if buffers == "interpolate":
            out.append(ref.loss(values, interpolation_buffers(ref.model, sb, float(a))))
        elif buffers == "model":
            out.append(ref.loss(values))
        else:
            out.append(ref.recompute_bn_loss(values))
    return out


# -- the reference itself -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ZOO)
def test_reference_is_self_consistent(name):
    """functional_call with every alias written equals overwriting the copy's own Parameters, at a moved point; and at
    the model's weights equals calling an eval-mode copy the ordinary way."""
    case = Z.build(name)
    ref = Reference(case)
    moved = ref.moved()
    assert moved, "every zoo case moves something"
    g = torch.Generator().manual_seed(7)
    d = {n: 0.1 * torch.randn(p.shape, generator=g) for n, p in canonical(ref.model).items()}
    values = point(ref.model, moved, [d], [0.8])
    assert ref.loss(values) == pytest.approx(ref.loss_inplace(values), rel=1e-6)
    assert any(not torch.equal(values[n], p.detach()) for n, p in canonical(ref.model).items())  # it moved
    assert ref.loss(ref.base_values()) == pytest.approx(ref.loss_inplace(ref.base_values()), rel=1e-6)


# -- loss, line, plane, interpolate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ZOO)
def test_loss(name):
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        got = case.landscape().loss()
    assert_close(got, ref.loss(ref.base_values()), what=name, **(case.tol or {}))


@pytest.mark.parametrize("ev", EVALUATORS)
@pytest.mark.parametrize("name", ZOO)
def test_line(name, ev, monkeypatch):
    kind, rule = use_evaluator(ev, monkeypatch)
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        curve = run_path(case, kind, lambda: case.landscape().line(seed=1, steps=5, span=1.0, evaluator=kind,
                                                                   progress=False))
    if curve is None:
        return
    check_evaluator_meta(curve.meta, kind, rule)
    moved = ref.moved()
    check_moved([curve.direction], ref, moved, curve.meta)
    d = normalize_dict(curve.direction, ref.model)
    assert any(d[n].count_nonzero() for n in moved)
    want = [ref.loss(point(ref.model, moved, [d], [a])) for a in curve.alphas]
    assert_close(curve.losses, want, what=f"{name} line {ev}", **(case.tol or {}))


@pytest.mark.parametrize("ev", EVALUATORS)
@pytest.mark.parametrize("name", ZOO)
def test_plane(name, ev, monkeypatch):
    kind, rule = use_evaluator(ev, monkeypatch)
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model):
        surf = run_path(case, kind, lambda: case.landscape().plane(seed=2, resolution=(3, 4), span=1.0,
                                                                   evaluator=kind, progress=False))
    if surf is None:
        return
    check_evaluator_meta(surf.meta, kind, rule)
    moved = ref.moved()
    check_moved(surf.directions, ref, moved, surf.meta)
    d1, d2 = (normalize_dict(d, ref.model) for d in surf.directions)
    assert surf.losses.shape == (3, 4)
    want = np.array([[ref.loss(point(ref.model, moved, [d1, d2], [a, b])) for b in surf.betas]
                     for a in surf.alphas])
    assert_close(surf.losses, want, what=f"{name} plane {ev}", **(case.tol or {}))


@pytest.mark.parametrize("ev", EVALUATORS)
@pytest.mark.parametrize("name", ZOO)
def test_interpolate(name, ev, monkeypatch):
    """theta(a) = (1-a) theta_start + a theta_model on the moved parameters (the start differs in every parameter:
    the ones that do not move keep the model's values), floating buffers interpolated too."""
    kind, rule = use_evaluator(ev, monkeypatch)
    case = Z.build(name)
    ref = Reference(case)
    with untouched(case.model, case.start):
        curve = run_path(case, kind, lambda: case.landscape().interpolate(case.start, steps=4, span=(-0.5, 1.5),
                                                                          evaluator=kind, progress=False))
    if curve is None:
        return
    check_evaluator_meta(curve.meta, kind, rule)
    assert_close(curve.losses, interpolation_reference(case, ref, case.start, curve.alphas),
                 what=f"{name} interpolate {ev}", **(case.tol or {}))


@pytest.mark.parametrize("ev", ["loop", "vmap-vmap", "vmap-affine"])
def test_interpolate_buffers_model(ev, monkeypatch):
    """buffers="model": the BatchNorm statistics stay the model's while the weights move."""
    kind, _rule = use_evaluator(ev, monkeypatch)
    case = Z.build("batchnorm")
    ref = Reference(case)
    with untouched(case.model, case.start):
        curve = case.landscape().interpolate(case.start, steps=4, buffers="model", evaluator=kind, progress=False)
    assert_close(curve.losses, interpolation_reference(case, ref, case.start, curve.alphas, buffers="model"))


@pytest.mark.parametrize("name", ["batchnorm", "l2_regularized"])
def test_interpolate_buffers_recompute(name):
    """buffers="recompute": BatchNorm statistics re-estimated at every point (a model without BatchNorm: the same as
    "model"), with the case's own loss convention (batch_loss too)."""
    case = Z.build(name)
    if name == "l2_regularized":  # batch_loss with a BatchNorm model: the re-estimation pass runs batch_loss's forward
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
        Z.randomize(model, 3)
        model.train()
        case = Z.Case("l2_bn", model, case.data, batch_loss=Z.l2_batch_loss, start=Z.perturbed(model, 4))
    ref = Reference(case)
    with untouched(case.model, case.start):
        curve = case.landscape().interpolate(case.start, steps=4, buffers="recompute", evaluator="loop",
                                             progress=False)
    assert_close(curve.losses, interpolation_reference(case, ref, case.start, curve.alphas, buffers="recompute"),
                 rtol=1e-4)


def _start_forms(case):
    start = case.start
    forms = {"module": start, "state_dict": start.state_dict()}
    forms["compiled_module"] = torch.compile(start)  # never called: names with _orig_mod.
    forms["compiled_state_dict"] = torch.compile(start).state_dict()
    forms["dataparallel_state_dict"] = nn.DataParallel(start).state_dict()
    return forms


@pytest.mark.parametrize("name", ["gpt2", "shared_linear", "tied_autoencoder", "compiled", "batchnorm", "frozen_lora"])
def test_interpolate_start_forms(name):
    """The start as a module, its state_dict (with tied duplicates: lm_head.weight next to wte.weight, b.weight next
    to a.weight), torch.compile's (_orig_mod.) and DataParallel's (module.) names: all the same curve."""
    case = Z.build(name)
    ref = Reference(case)
    want = None
    ls = case.landscape()
    for form, start in _start_forms(case).items():
        if isinstance(start, dict):
            if name in ("gpt2", "shared_linear"):
                assert len(start) > len(dict(case.start.named_parameters())) + len(dict(case.start.named_buffers())) \
                    or form != "state_dict", "the state_dict carries the tied duplicates"
        with untouched(case.model):
            curve = ls.interpolate(start, steps=3, evaluator="loop", progress=False)
        if want is None:
            want = interpolation_reference(case, ref, case.start, curve.alphas)
        assert_close(curve.losses, want, what=f"{name} start as {form}")


EXPLICIT = ["gpt2", "shared_linear", "tied_autoencoder", "frozen_lora", "compiled", "weighted_triples"]


@pytest.mark.parametrize("ev", ["loop", "vmap-affine"])
@pytest.mark.parametrize("name", EXPLICIT)
def test_explicit_directions(name, ev, monkeypatch):
    """User-given direction dicts (one tensor per moved parameter, biases included: ignore=None, no normalization)
    are used as given, on a line and a plane."""
    kind, _rule = use_evaluator(ev, monkeypatch)
    case = Z.build(name)
    ref = Reference(case)
    moved = ref.moved()
    params = canonical(ref.model)
    g = torch.Generator().manual_seed(11)
    d1, d2 = ({n: 0.2 * torch.randn(params[n].shape, generator=g) for n in moved} for _ in range(2))
    with untouched(case.model):
        ls = case.landscape()
        curve = ls.line(direction=d1, normalization="none", ignore=None, steps=4, evaluator=kind, progress=False)
        surf = ls.plane(directions=(d1, d2), normalization="none", ignore=None, resolution=(3, 3), span=1.0,
                        evaluator=kind, progress=False)
    for n in moved:
        assert torch.equal(normalize_dict(curve.direction, ref.model)[n], d1[n])
        assert torch.equal(normalize_dict(surf.directions[1], ref.model)[n], d2[n])
    assert_close(curve.losses, [ref.loss(point(ref.model, moved, [d1], [a])) for a in curve.alphas])
    want = np.array([[ref.loss(point(ref.model, moved, [d1, d2], [a, b])) for b in surf.betas] for a in surf.alphas])
    assert_close(surf.losses, want)


def test_pca_plane_moves_only_the_selected_parameters():
    """directions="pca" from a trajectory of every parameter: the plane lives in the params set (LoRA adapters)."""
    case = Z.build("frozen_lora")
    ref = Reference(case)
    traj = lw.Trajectory()
    for s in range(4):
        traj.record(Z.perturbed(case.model, 50 + s, 0.2))
    traj.record(case.model)
    with untouched(case.model):
        surf = case.landscape().plane(directions="pca", trajectory=traj, resolution=(3, 3), progress=False,
                                      evaluator="loop")
    moved = ref.moved()
    check_moved(surf.directions, ref, moved, surf.meta)
    d1, d2 = (normalize_dict(d, ref.model) for d in surf.directions)
    want = np.array([[ref.loss(point(ref.model, moved, [d1, d2], [a, b])) for b in surf.betas] for a in surf.alphas])
    assert_close(surf.losses, want)


def test_dataloader_without_generator_leaves_the_global_rng_untouched():
    """A DataLoader built without a generator draws its base seed from the global RNG at every iter(): the library
    iterates the user's data, so it must restore the global RNG around its passes (README: "the global RNG is
    untouched")."""
    case = Z.build("unequal_loader")
    loader = torch.utils.data.DataLoader(case.data.dataset, batch_size=6, shuffle=False)
    case = Z.Case("loader_no_generator", case.model, loader, loss_fn=nn.CrossEntropyLoss(), start=case.start)
    ref = Reference(case)
    with untouched(case.model):
        ls = case.landscape()
        got = ls.loss()
        curve = ls.line(steps=3, progress=False, evaluator="loop")
    assert_close(got, ref.loss(ref.base_values()))
    d = normalize_dict(curve.direction, ref.model)
    assert_close(curve.losses, [ref.loss(point(ref.model, ref.moved(), [d], [a])) for a in curve.alphas])


def test_hf_models_as_built_by_users():
    """GPT-2 and BERT run the default attention (SDPA) and GPT-2's lm_head is tied to wte: the zoo tests what users
    have."""
    for name in ("gpt2", "bert"):
        case = Z.build(name)
        assert case.model.config._attn_implementation == "sdpa"
        assert case.model.training
    gpt2 = Z.build("gpt2").model
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight


# -- the params rule ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("frozen_default", ["head.weight", "head.bias"]),
    ("frozen_all", ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight", "backbone.2.bias", "lora_A.weight",
                    "lora_B.weight", "head.weight", "head.bias"]),
    ("frozen_lora", ["lora_A.weight", "lora_B.weight"]),
    ("frozen_names", ["lora_A.weight", "head.bias"]),
])
def test_params_rule_moves_exactly_the_selected_set(name, expected):
    case = Z.build(name)
    assert Reference(case).moved() == expected
    with untouched(case.model):
        surf = case.landscape().plane(resolution=(3, 3), progress=False, evaluator="loop")
    assert sorted(surf.directions[0]) == sorted(expected) == sorted(surf.directions[1])
    assert surf.meta["params_rule"] == {"frozen_default": "requires_grad", "frozen_all": "all",
                                        "frozen_lora": "callable", "frozen_names": "names"}[name]


def test_tied_parameters_have_one_direction_entry():
    """GPT-2's lm_head.weight is wte.weight, SharedLinear's b.weight is a.weight: one entry each."""
    for name, alias in (("gpt2", "lm_head.weight"), ("shared_linear", "b.weight"), ("tied_autoencoder", None)):
        case = Z.build(name)
        curve = case.landscape().line(steps=3, progress=False, evaluator="loop")
        assert alias not in curve.direction
        assert len(curve.direction) == len(Reference(case).moved())


def test_augmented_loader_warns_and_its_frozen_batches_repeat():
    """The raw NumPy-augmented loader differs between passes and says so once; its frozen batches give the
    reference's values exactly, with no warning (test_loss and the others run them on every path)."""
    case = Z.build("augmented_loader")
    with untouched(case.model):
        raw = lw.Landscape(case.model, case.loss_fn, case.extra["loader"], device="cpu")
        with pytest.warns(lw.DataChangesWarning, match="lw.freeze"):
            raw.loss()
        with warnings.catch_warnings():
            warnings.simplefilter("error", lw.DataChangesWarning)
            ls = case.landscape()
            assert ls.loss() == ls.loss()
    assert_close(ls.loss(), Reference(case).loss(Reference(case).base_values()))


# -- errors -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(Z.ERRORS))
def test_refused_cases(name):
    case = Z.build(name)
    exc, match = case.extra["raises"]
    with pytest.raises(exc, match=match):
        case.landscape()


def test_loss_fn_and_batch_loss_together_is_an_error():
    case = Z.build("l2_regularized")
    with pytest.raises((ValueError, TypeError), match=r"(?s)loss_fn.*batch_loss|batch_loss.*loss_fn"):
        lw.Landscape(case.model, nn.CrossEntropyLoss(), case.data, batch_loss=Z.l2_batch_loss, device="cpu")


@pytest.mark.parametrize("data", ["tensor", "pair", "dict"])
def test_output_without_loss_names_both_ways_out(data):
    """loss_fn=None with a model whose output is logits: the error names loss_fn and batch_loss."""
    model = Z.randomize(Z.MLP(), 0)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    batch = {"tensor": x, "pair": (x, y), "dict": {"x": x}}[data]
    if data == "pair":  # model(*batch) would fail before any output: a one-argument model with a tuple of inputs
        model = TwoInputs()
    with pytest.raises((ValueError, TypeError), match=r"(?s)(loss_fn.*batch_loss|batch_loss.*loss_fn)"):
        lw.Landscape(model, None, batch, device="cpu").loss()


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, y):
        return self.fc(x)


def test_interpolate_mismatched_state_dict_names_it():
    case = Z.build("shared_linear")
    ls = case.landscape()
    other = Z.SharedLinear()
    other.head = nn.Linear(4, 5)  # head.weight [5, 4] instead of [3, 4]
    with pytest.raises(ValueError, match=r"head\.weight"):
        ls.interpolate(other.state_dict(), steps=3, progress=False)
    sd = case.start.state_dict()
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"extra\.weight"):
        ls.interpolate(sd, steps=3, progress=False)
    sd = case.start.state_dict()
    del sd["head.bias"]
    with pytest.raises(ValueError, match=r"head\.bias"):
        ls.interpolate(sd, steps=3, progress=False)
    sd = case.start.state_dict()
    sd["b.weight"] = sd["b.weight"] + 1.0  # the two names of one tied parameter disagree
    with pytest.raises(ValueError, match=r"a\.weight|b\.weight"):
        ls.interpolate(sd, steps=3, progress=False)
