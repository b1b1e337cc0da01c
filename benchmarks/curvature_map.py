"""Benchmark: Li et al.'s curvature map (|lambda_min / lambda_max| at every point of a plane, §6 of arXiv
1712.09913) on a 7x7 grid, against PyHessian computing only lambda_max at the same 49 points.

``Landscape.curvature_map`` gives both extreme eigenvalues per point (Lanczos, tol 1e-2 as Li et al.'s eigsh);
PyHessian has no smallest eigenvalue, so its column is the top eigenvalue alone (power iteration,
``eigenvalues(top_n=1, tol=1e-2)``) on a copy of the model moved to each point: a lower bound on what a PyHessian
user pays for the map.  Both lambda_max grids are compared with a reference map at ``tol=1e-8``.

    .venv/bin/python benchmarks/curvature_map.py [--threads 2] [--resolution 7]
"""
from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples


def pyhessian_top(model, surf, x, y):
    from pyhessian import hessian

    out = np.empty((len(surf.alphas), len(surf.betas)))
    t = time.perf_counter()
    for i, a in enumerate(surf.alphas):
        for j, b in enumerate(surf.betas):
            m = copy.deepcopy(model)
            with torch.no_grad():
                for n, p in m.named_parameters():
                    p.add_(a * surf.directions[0][n] + b * surf.directions[1][n])
            torch.manual_seed(0)  # PyHessian draws its start vector from the global generator
            out[i, j] = hessian(m, nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(top_n=1, tol=1e-2)[0][0]
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.resolution
    lines = [f"`.venv/bin/python benchmarks/curvature_map.py --threads {args.threads} --resolution {n}` — "
             f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"| model | ours: lambda_max and lambda_min, {n}x{n} | products | PyHessian: lambda_max only | ratio | "
             "max rel. error of lambda_max, ours / PyHessian |", "|---|---|---|---|---|---|"]
    rng_state = torch.get_rng_state()
    for name, make, flat in [("digits MLP", examples.digits_mlp, True), ("digits CNN", examples.digits_cnn, False)]:
        x, y = examples.digits(flat=flat)
        model = make()
        examples.train(model, (x, y), epochs=10)
        model.eval()
        ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
        surf = ls.plane(resolution=n, progress=False)
        t = time.perf_counter()
        cmap = ls.curvature_map(surf, resolution=n, progress=False)
        ours = time.perf_counter() - t
        theirs, top = pyhessian_top(model, surf, x, y)
        exact = ls.curvature_map(surf, resolution=n, tol=1e-8, progress=False).lambda_max
        err = [float(np.nanmax(np.abs(v - exact) / np.abs(exact))) for v in (cmap.lambda_max, top)]
        lines.append(f"| {name} | {ours:.1f} s | {cmap.meta['hvps']} | {theirs:.1f} s | {theirs / ours:.2f}x | "
                     f"{err[0]:.2g} / {err[1]:.2g} |")
    torch.set_rng_state(rng_state)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
