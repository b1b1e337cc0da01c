"""Benchmark: Li et al.'s curvature map (|lambda_min / lambda_max| at every point of a plane, §6 of arXiv
1712.09913) on a 7x7 grid of the digits MLP and CNN: this tree against a baseline checkout (``--baseline``, e.g.
``git worktree add /tmp/base2 HEAD``), each map in its own process, alternating baseline / this tree per round,
and optionally against PyHessian computing only lambda_max at the same points (``--peers``).

``Landscape.curvature_map`` gives both extreme eigenvalues per point (Lanczos, tol 1e-2 as Li et al.'s eigsh).
Reported per model: seconds (median over rounds) and products of each tree, their ratio, and the largest difference
between the two maps' lambda_max (relative) and lambda_min (relative to lambda_max - lambda_min), which both trees
hold to tol.  PyHessian has no smallest eigenvalue, so its column is the top eigenvalue alone (power iteration,
``eigenvalues(top_n=1, tol=1e-2)``) on a copy of the model moved to each point: a lower bound on what a PyHessian
user pays for the map, compared with a reference map at ``tol=1e-8``.

    .venv/bin/python benchmarks/curvature_map.py [--threads 2] [--resolution 7] [--models mlp,cnn]
        [--baseline /tmp/base2] [--rounds 1] [--peers]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NAMES = {"mlp": "digits MLP", "cnn": "digits CNN"}


def setup(which, n):
    import landscape_widgets as lw
    from landscape_widgets import examples

    x, y = examples.digits(flat=which == "mlp")
    model = examples.digits_mlp() if which == "mlp" else examples.digits_cnn()
    examples.train(model, (x, y), epochs=10)
    model.eval()
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    return model, x, y, ls, ls.plane(resolution=n, progress=False)


def worker(which, n):
    """One map, timed as a user calls it; prints its figures as JSON (run under the tree being measured)."""
    _, _, _, ls, surf = setup(which, n)
    t = time.perf_counter()
    cmap = ls.curvature_map(surf, resolution=n, progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "hvps": int(cmap.meta["hvps"]), "lambda_max": cmap.lambda_max.tolist(),
                      "lambda_min": cmap.lambda_min.tolist()}))


def run_tree(path, which, n, threads):
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", which, "--resolution", str(n),
           "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, cwd=path, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--baseline", default=None, help="a checkout of the tree to compare with (PYTHONPATH)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--peers", action="store_true", help="PyHessian's lambda_max map too (slow)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.resolution
    if args.worker:
        return worker(args.worker, n)
    trees = ([("baseline", os.path.abspath(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    lines = [f"`.venv/bin/python benchmarks/curvature_map.py --threads {args.threads} --resolution {n} --models "
             f"{args.models}{' --baseline ' + args.baseline if args.baseline else ''} --rounds {args.rounds}` — "
             f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the start; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", "| model | tree | seconds (median of rounds) | products | time ratio baseline / this | "
             "max diff lambda_max (rel.) / lambda_min (rel. to spread) |", "|---|---|---|---|---|---|"]
    for which in args.models.split(","):
        runs = {name: [] for name, _ in trees}
        for _ in range(args.rounds):  # alternating: the machine's load affects both trees alike
            for name, path in trees:
                runs[name].append(run_tree(path, which, n, args.threads))
        med = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
        new = runs["this tree"][-1]
        for name, rs in runs.items():
            diff = ""
            ratio = ""
            if name == "this tree" and args.baseline:
                old = runs["baseline"][-1]
                hi, lo = (np.array(new[k]) for k in ("lambda_max", "lambda_min"))
                ohi, olo = (np.array(old[k]) for k in ("lambda_max", "lambda_min"))
                diff = (f"{np.nanmax(np.abs(hi - ohi) / np.abs(ohi)):.2g} / "
                        f"{np.nanmax(np.abs(lo - olo) / (ohi - olo)):.2g}")
                ratio = f"{med['baseline'] / med[name]:.2f}x"
            each = ", ".join(f"{r['seconds']:.1f}" for r in rs)
            lines.append(f"| {NAMES[which]} | {name} | {med[name]:.1f} ({each}) | {rs[-1]['hvps']} | {ratio} | "
                         f"{diff} |")
        print("\n".join(lines[-len(trees):]), flush=True)
        if args.peers:
            import landscape_widgets as lw  # noqa: F401 -- this tree's
            model, x, y, ls, surf = setup(which, n)
            theirs, top = pyhessian_top(model, surf, x, y)
            exact = ls.curvature_map(surf, resolution=n, tol=1e-8, progress=False).lambda_max
            err = [float(np.nanmax(np.abs(np.array(v) - exact) / np.abs(exact))) for v in (new["lambda_max"], top)]
            lines.append(f"| {NAMES[which]} | PyHessian, lambda_max only | {theirs:.1f} | - | "
                         f"{theirs / med['this tree']:.2f}x (PyHessian / this) | max rel. error of lambda_max vs "
                         f"tol 1e-8: this {err[0]:.2g}, PyHessian {err[1]:.2g} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
