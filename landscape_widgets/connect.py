"""Mode connectivity: the loss along a quadratic Bézier curve between two models (Garipov et al. 2018, "Loss
Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", arXiv 1802.10026, §3).

Eq. 2, the curve with one bend ``theta_bend``::

    phi(t) = (1 - t)^2 theta + 2 t (1 - t) theta_bend + t^2 theta_b,   t in [0, 1]

Eq. 3, the bend's training: minimise ``E_{t ~ U(0, 1)} L(phi(t))`` over ``theta_bend`` alone, with one ``t`` drawn
per minibatch (their stochastic estimate), starting at the midpoint ``(theta + theta_b) / 2`` (the straight line).

``phi(t) = theta + 2 t (1 - t) (theta_bend - theta) + t^2 (theta_b - theta)``: the curve is a plan with the two
directions ``theta_bend - theta`` and ``theta_b - theta`` at the coordinates ``(2 t (1 - t), t^2)``, and the straight
line ``theta + t (theta_b - theta)`` is ``(0, t)`` on the same plan, so both go through the engine (every executor,
the store, cancellation) in one call.

The loss barrier of a path between two models (Frankle et al. 2020, arXiv 1912.05671, its "error barrier" with the
loss; Garipov et al. 2018): the largest loss on the path minus the mean of the loss at its two ends.
"""
from __future__ import annotations

import copy
import math
import numbers

import numpy as np
import torch

from ._checks import check_int
from .chooser import check_evaluator
from .data import index_batch
from ._checks import check_seed
from .directions.models import model_state
from .driver import Cancelled, is_cancelled
from .engine import Plan, execute, split_values
from .runtime import Timer
from .results import Curve

BUFFER_MODES = ("interpolate", "model", "recompute")
OPTIMIZERS = ("sgd", "adam")
BARRIER_DEFINITION = ("max of the loss over the path's points with t in [0, 1] minus the mean of the loss at t = 0 "
                      "and t = 1 (Frankle et al. 2020, arXiv 1912.05671, with the loss; Garipov et al. 2018)")


def loss_barrier(alphas, losses, ends) -> dict:
    """The barrier of the path sampled at ``alphas`` (the points in [0, 1] count) with the loss ``ends`` at 0 and
    1: ``barrier``, the points used (``barrier_alphas``), ``barrier_ends`` and where the maximum is
    (``barrier_at``); NaN (and ``barrier_at`` None) when a loss on the segment is not finite."""
    alphas, losses = np.asarray(alphas, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    inside = (alphas >= 0.0) & (alphas <= 1.0)
    points = {0.0: float(ends[0]), 1.0: float(ends[1])}
    points.update({float(a): float(v) for a, v in zip(alphas[inside], losses[inside])})
    a = np.array(sorted(points))
    v = np.array([points[k] for k in a])
    finite = bool(np.isfinite(v).all())
    peak = float(v.max()) if finite else float("nan")
    return {"barrier": peak - 0.5 * (float(ends[0]) + float(ends[1])), "barrier_alphas": a.tolist(),
            "barrier_ends": [float(ends[0]), float(ends[1])],
            "barrier_at": float(a[int(np.argmax(v))]) if finite else None,
            "barrier_definition": BARRIER_DEFINITION}


def segment_ends(alphas, losses, evaluate) -> list:
    """The loss at a = 0 and a = 1: the grid's own where it has these points exactly, else ``evaluate([a, ...])``."""
    alphas = np.asarray(alphas, dtype=np.float64)
    ends, missing = [None, None], []
    for k, a in enumerate((0.0, 1.0)):
        hit = np.flatnonzero(alphas == a)
        if hit.size:
            ends[k] = float(losses[hit[0]])
        else:
            missing.append(k)
    if missing:
        for k, v in zip(missing, evaluate([float(k) for k in missing])):
            ends[k] = float(v)
    return ends


def has_batchnorm(module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in module.modules())


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or float(value) <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _minibatches(data, device, batch_size, gen):
    """One epoch: one in-memory batch shuffled by ``gen`` into minibatches of ``batch_size`` (a last minibatch of
    one sample is left out: train-mode BatchNorm needs two), or the batches of a DataLoader as it gives them."""
    if data.single is None:
        yield from data.batches(device)
        return
    (x, y, n), = data.batches(device)
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        idx = perm[i:i + batch_size]
        if len(idx) < 2 <= n:
            continue
        yield index_batch(x, idx, n), (None if y is None else index_batch(y, idx, n)), len(idx)


def _steps_per_epoch(data, batch_size):
    if data.single is None:
        return data.num_batches
    n = data.num_samples
    return n // batch_size + (1 if n % batch_size >= 2 or n < 2 else 0)


def train_bend(problem, private, theta_b, *, buffers="recompute", buffer_states=None, epochs=10, lr=0.05,
               optimizer="sgd", momentum=0.9, batch_size=64, seed=0, progress=True, cancel=None):
    """The bend of Garipov et al.'s Eq. 3 by minibatch SGD (or Adam) on ``problem``'s data: one ``t ~ U(0, 1)`` per
    minibatch from a private generator seeded with ``seed`` (which also shuffles), the loss at ``phi(t)`` (Eq. 2),
    gradients to the bend only; starts at the midpoint.  BatchNorm layers use batch statistics with
    ``buffers="recompute"`` (train mode, as Garipov et al. train; every other layer stays in eval mode: no dropout),
    else the statistics the evaluation uses at ``t`` (``buffer_states``: the three points' buffers when
    interpolated).  Returns the bend (moved parameters, detached) and the record of its training."""
    names = private.names
    theta = {n: private.base[n] for n in names}
    bend = {n: (0.5 * (theta[n].double() + theta_b[n].double())).to(theta[n].dtype).requires_grad_(True)
            for n in names}
    work = copy.deepcopy(private.module)  # train-mode BatchNorm writes its running statistics here, not elsewhere
    work.eval()
    if buffers == "recompute":
        for m in work.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
    leaves = list(bend.values())
    opt = torch.optim.SGD(leaves, lr=lr, momentum=momentum) if optimizer == "sgd" else torch.optim.Adam(leaves, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = _steps_per_epoch(problem.data, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=None if per_epoch is None else epochs * per_epoch, desc="connect: training the bend",
                   unit="step", leave=False)
    history, steps, skipped = [], 0, 0
    try:
        for _epoch in range(epochs):
            total, count = 0.0, 0
            for x, y, n in _minibatches(problem.data, private.device, batch_size, gen):
                if is_cancelled(cancel):
                    raise Cancelled(f"cancelled after {steps} training steps of the bend")
                t = float(torch.rand((), generator=gen, dtype=torch.float64))
                w0, w1, w2 = (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t ** 2
                point = {k: w0 * theta[k] + w1 * bend[k] + w2 * theta_b[k] for k in names}
                if buffer_states is not None:
                    b0, b1, b2 = buffer_states
                    point.update({k: w0 * b0[k] + w1 * b1[k] + w2 * b2[k] for k in b0})
                loss = problem.objective.functional(work, point, x, y)
                if bar is not None:
                    bar.update(1)
                if not torch.isfinite(loss.detach()):
                    skipped += 1  # a NaN step would make the bend NaN: left out and counted
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                total += float(loss.detach()) * n
                count += n
            history.append(total / count if count else float("nan"))
    finally:
        if bar is not None:
            bar.close()
    record = {"init": "midpoint (theta + theta_b) / 2", "optimizer": optimizer, "lr": lr, "epochs": epochs,
              "batch_size": batch_size if problem.data.single is not None else "the data's own batches",
              "seed": seed, "steps": steps, "skipped_nonfinite_steps": skipped, "t": "U(0, 1), one per minibatch",
              "batchnorm": ("batch statistics (train mode)" if buffers == "recompute" else
                            f"eval mode, buffers={buffers!r}"),
              "mean_loss_per_epoch": history}
    if optimizer == "sgd":
        record["momentum"] = momentum
    return {n: b.detach() for n, b in bend.items()}, record


def connect(problem, model_b, *, bend=None, steps=31, buffers=None, epochs=10, lr=0.05, optimizer="sgd",
            momentum=0.9, batch_size=64, seed=0, progress=True, cancel=None, evaluator="auto", client=None,
            store=None) -> Curve:
    """The loss along Garipov et al.'s quadratic Bézier curve (Eq. 2) from the model (t = 0) to ``model_b``
    (t = 1), beside the straight line between them, at ``steps`` values of t in [0, 1].

    ``bend``: a module or state_dict for ``theta_bend``; None trains it (Eq. 3, :func:`train_bend`: ``epochs``
    passes over the data in minibatches of ``batch_size``, ``optimizer`` "sgd" (with ``momentum``) or "adam" at
    learning rate ``lr``, ``seed`` for t and the shuffling).  ``buffers``: "recompute" re-estimates BatchNorm
    statistics at every point (Garipov et al.; the default for models with BatchNorm), "interpolate" moves floating
    buffers along the same curve (the default otherwise; a trained bend's buffers are the midpoint's, so they move
    on the straight line), "model" keeps the model's.  ``evaluator``, ``client`` and ``store``: where and how the
    points are evaluated, as in :meth:`~landscape_widgets.Landscape.plane` (the bend is trained in this process).

    Returns a :class:`~landscape_widgets.Curve`: ``alphas`` = t, ``losses`` the curve's; ``meta["line_losses"]``,
    ``meta["barrier"]`` and ``meta["line_barrier"]`` (:func:`loss_barrier`), ``meta["bend_training"]`` (None for a
    given bend); ``curve.bend`` the bend's moved parameters (and floating buffers with "interpolate"), to pass back
    as ``bend=`` (saved with the curve).
    """
    steps = check_int(steps, "steps", low=2, hint=" (values of t in [0, 1])")
    epochs = check_int(epochs, "epochs", low=1, hint=" (passes over the data to train the bend)")
    batch_size = check_int(batch_size, "batch_size", low=1)
    lr = _positive(lr, "lr")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= float(momentum) < 1:
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is not known; pass one of {', '.join(map(repr, OPTIMIZERS))}")
    seed = check_seed(seed)
    check_evaluator(evaluator)
    timer = Timer()
    private = problem.private()
    if buffers is None:
        buffers = "recompute" if has_batchnorm(private.module) else "interpolate"
    if buffers not in BUFFER_MODES:
        raise ValueError(f"buffers={buffers!r} is not known; pass one of {', '.join(map(repr, BUFFER_MODES))}")
    moved_buffers = buffers == "interpolate"
    theta_b = model_state(model_b, private, argname="model_b", need_buffers=moved_buffers)
    names, bnames = private.names, (private.buffer_names if moved_buffers else [])
    if all(torch.equal(theta_b[n], private.base[n]) for n in names):
        raise ValueError("model_b has the model's own weights (on the moved parameters), so there is nothing to "
                         "connect; pass another model")
    if bend is not None:
        bend_state = model_state(bend, private, argname="bend", need_buffers=moved_buffers)
        training = None
    else:
        bend_state = {n: (0.5 * (private.base_buffers[n].double() + theta_b[n].double())).to(
            private.base_buffers[n].dtype) for n in bnames}
        states = None
        if moved_buffers:
            states = ({n: private.base_buffers[n] for n in bnames}, bend_state, {n: theta_b[n] for n in bnames})
        trained, training = train_bend(problem, private, theta_b, buffers=buffers, buffer_states=states,
                                       epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum,
                                       batch_size=batch_size, seed=seed, progress=progress, cancel=cancel)
        bend_state.update(trained)
    t_train = timer()

    def towards(state, base, keys):
        return {n: (state[n].double() - base[n].double()).to(base[n].dtype) for n in keys}

    dirs = [towards(bend_state, private.base, names), towards(theta_b, private.base, names)]
    buffer_dirs = None
    if moved_buffers:
        db, dm = towards(bend_state, private.base_buffers, bnames), towards(theta_b, private.base_buffers, bnames)
        buffer_dirs = {n: [db[n], dm[n]] for n in bnames}
    ts = np.linspace(0.0, 1.0, steps)
    coords = np.concatenate([np.stack([2.0 * ts * (1.0 - ts), ts ** 2], axis=1),
                             np.stack([np.zeros(steps), ts], axis=1)])
    plan = Plan("connect", private, dirs, coords, tile_size=max(1, -(-2 * steps // 8)), buffer_dirs=buffer_dirs,
                buffers=None if buffers == "model" else buffers, evaluator=evaluator)
    values, done = execute(problem, plan, client=client, cancel=cancel, progress=progress, desc="connect",
                           store=store)
    losses, metrics = split_values(values, problem.objective.metric_names)
    curve, line = losses[:steps], losses[steps:]
    t_total = timer()
    meta = problem.describe(
        private, kind="connect", curve="quadratic Bézier curve (Garipov et al. 2018, arXiv 1802.10026, Eq. 2)",
        buffers=buffers, bend="given" if training is None else "trained", bend_training=training,
        distance=math.sqrt(sum(float((d.double() ** 2).sum()) for d in dirs[1].values())),
        **loss_barrier(ts, curve, (curve[0], curve[-1])), line_losses=line.tolist(),
        line_barrier=loss_barrier(ts, line, (line[0], line[-1]))["barrier"],
        line_metrics={k: v[steps:].tolist() for k, v in metrics.items()},
        timings={"train_s": round(t_train, 6), "evaluate_s": round(t_total - t_train, 6),
                 "total_s": round(t_total, 6), "points": int(2 * steps)}, **done.meta())
    return Curve(ts, curve, meta, execution=done, metrics={k: v[:steps] for k, v in metrics.items()},
                 bend=bend_state)


__all__ = ["BUFFER_MODES", "OPTIMIZERS", "connect", "has_batchnorm", "loss_barrier", "segment_ends", "train_bend"]
