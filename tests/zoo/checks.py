"""Shared checks of the zoo tests: state and RNG untouched, evaluator selection, moved-parameter bookkeeping."""
import contextlib

import numpy as np
import torch

from helpers import assert_same, snapshot

from zoo.reference import canonical, normalize_dict

RTOL, ATOL = 1e-5, 1e-6


@contextlib.contextmanager
def untouched(*modules):
    """The modules bitwise unchanged (weights, buffers, requires_grad, grads, train/eval of every submodule) and
    the global RNG state untouched by what runs inside."""
    snaps = [snapshot(m) for m in modules]
    rng = torch.get_rng_state()
    yield
    for m, s in zip(modules, snaps):
        assert_same(m, s)
    assert torch.equal(rng, torch.get_rng_state()), "the global RNG state changed"


def use_evaluator(name, monkeypatch):
    """``"loop"``, or ``"vmap-<rule>"``: the evaluator setting that runs the vmap executor with that rule, and the
    rule."""
    if name == "loop":
        return "loop", None
    rule = name.split("-", 1)[1]
    return f"vmap:{rule}", rule


def check_evaluator_meta(meta, kind, rule):
    assert meta["evaluator"] == kind, meta.get("evaluator")
    if rule is not None:
        assert meta.get("vmap_rule") == rule, meta.get("vmap_rule")


def check_moved(result_dirs, ref, moved, meta):
    """One direction entry per moved parameter, the moved count and rule in meta."""
    for d in result_dirs:
        assert sorted(normalize_dict(d, ref.model)) == sorted(moved)
    params = canonical(ref.model)
    assert meta["moved_parameters"] == sum(params[n].numel() for n in moved)
    assert "params_rule" in meta


def assert_close(got, want, rtol=RTOL, atol=ATOL, what=""):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


VMAP_UNBATCHABLE = {"lstm", "gru"}  # torch.func.vmap has no batching rule for aten::lstm / aten::gru


def run_path(case, kind, fn):
    """``fn()``; for a model that vmap cannot batch, evaluator="vmap" may instead give a clear error that names the
    way out (evaluator='loop'): then None.  Either the values or that error; not torch's raw vmap error."""
    if kind.startswith("vmap") and case.name in VMAP_UNBATCHABLE:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            assert "evaluator='loop'" in msg or 'evaluator="loop"' in msg, (
                f"evaluator='vmap' on {case.name}: neither values nor an error naming evaluator='loop', but "
                f"{type(exc).__name__}: {msg[:300]}")
            return None
    return fn()
