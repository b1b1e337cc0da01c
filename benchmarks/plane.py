"""Benchmark: ``Landscape.plane(resolution=41)`` against ``loss_landscapes.random_plane`` on the same directions.

Both libraries evaluate the same 41x41 grid (loss-landscapes' own uniform, orthogonalized, filter-normalized
directions and its zigzag grid are rebuilt from the same seed and handed to ``plane`` as explicit directions),
alternating, with the same thread count; values are compared point by point.  Reports points per second, the
ratio, and the fraction of this CPU's measured float32 GEMM peak (forward FLOPs from torch's FlopCounterMode).

    python benchmarks/plane.py [--threads 2] [--rounds 3] [--resolution 41] [--write]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples


def gemm_peak(n=2048, reps=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def forward_flops(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops()


def ll_directions(model, steps, seed):
    """loss-landscapes' random_plane directions and grid, rebuilt with its own functions from the same seed."""
    from loss_landscapes.model_interface.model_parameters import orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model

    torch.manual_seed(seed)
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    d1 = rand_u_like(start)
    d2 = orthogonal_to(d1)
    d1.filter_normalize_(start)
    d2.filter_normalize_(start)
    d1.mul_(((start.model_norm() / 1) / steps) / d1.model_norm())
    d2.mul_(((start.model_norm() / 1) / steps) / d2.model_norm())
    names = [n for n, _ in model.named_parameters()]
    dirs = tuple({n: t.detach().clone() for n, t in zip(names, d._get_parameters())} for d in (d1, d2))
    # random_plane starts at theta - steps/2 (d1 + d2) and walks d2 in a zigzag, adding d2 *before* each
    # evaluation on even columns and subtracting it before each one on odd columns: even rows sit at
    # beta = j + 1 - steps/2, odd rows at j - steps/2.  We evaluate the union lattice (one extra column).
    span = ((-steps / 2, steps / 2 - 1), (-steps / 2, steps / 2))
    return dirs, span


def run_ll(model, x, y, steps, seed):
    import loss_landscapes
    import loss_landscapes.metrics

    metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x, y)
    torch.manual_seed(seed)
    t = time.perf_counter()
    z = loss_landscapes.random_plane(model, metric, distance=1, steps=steps, normalization="filter",
                                     deepcopy_model=True)
    return time.perf_counter() - t, np.asarray(z, dtype=np.float64)


def run_ours(ls, dirs, span, steps):
    t = time.perf_counter()
    surf = ls.plane(directions=dirs, normalization="none", ignore=None, resolution=(steps, steps + 1), span=span,
                    progress=False)
    dt = time.perf_counter() - t
    z = np.where((np.arange(steps) % 2 == 0)[:, None], surf.losses[:, 1:], surf.losses[:, :-1])
    return dt, z


def bench(name, model, data, steps, rounds, seed=0):
    x, y = data
    model.eval()
    dirs, span = ll_directions(model, steps, seed)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    t_ll, t_us = [], []
    z_ll = z_us = None
    for _ in range(rounds):  # alternate so drifts in machine load hit both
        dt, z_ll = run_ll(model, x, y, steps, seed)
        t_ll.append(dt)
        dt, z_us = run_ours(ls, dirs, span, steps)
        t_us.append(dt)
    pts = steps * steps
    pts_us = steps * (steps + 1)
    flops = forward_flops(model, x)
    diff = np.abs(z_ll - z_us)
    rel = float(np.max(diff / np.maximum(np.abs(z_ll), 1e-12)))
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "flops_per_point": flops,
            "ll_pts_s": pts / statistics.median(t_ll), "us_pts_s": pts_us / statistics.median(t_us),
            "ll_best": pts / min(t_ll), "us_best": pts_us / min(t_us),
            "ll_rounds": [round(pts / t, 1) for t in t_ll], "us_rounds": [round(pts_us / t, 1) for t in t_us],
            "max_rel_diff": rel, "rounds": rounds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=41)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = gemm_peak()
    rows = []
    for name, make, flat in [("digits MLP 64-128-128-10", examples.digits_mlp, True),
                             ("digits CNN", examples.digits_cnn, False)]:
        data = examples.digits(flat=flat)
        model = make()
        examples.train(model, data, epochs=args.epochs)
        rows.append(bench(name, model, data, args.resolution, args.rounds))
    lines = [f"`python benchmarks/plane.py --threads {args.threads} --rounds {args.rounds} "
             f"--resolution {args.resolution}` — {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} threads, GEMM peak {peak / 1e9:.0f} GFLOP/s, "
             f"medians of {args.rounds} alternating rounds, {time.strftime('%Y-%m-%d')}",
             "",
             "| model | params | MFLOP/pt | loss-landscapes pts/s (median / best) | landscape_widgets pts/s "
             "(median / best) | ratio of medians | ratio of bests | % of GEMM peak (ours, median) | max rel. diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['flops_per_point'] / 1e6:.1f} | "
                     f"{r['ll_pts_s']:.0f} / {r['ll_best']:.0f} | {r['us_pts_s']:.0f} / {r['us_best']:.0f} | "
                     f"{r['us_pts_s'] / r['ll_pts_s']:.2f}x | {r['us_best'] / r['ll_best']:.2f}x | "
                     f"{100 * r['us_pts_s'] * r['flops_per_point'] / peak:.0f}% | {r['max_rel_diff']:.1e} |")
    lines.append("")
    for r in rows:
        lines.append(f"Rounds ({r['model']}), pts/s: loss-landscapes {r['ll_rounds']}, landscape_widgets "
                     f"{r['us_rounds']}")
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(__file__.replace("plane.py", "RESULTS.md"), "a") as fh:
            fh.write("\n### Plane evaluation vs loss-landscapes (CPU)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
