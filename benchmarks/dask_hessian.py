"""Benchmark: Hessian-vector products on 2 single-threaded Dask workers, each on half the data, vs one process.

The model is a ResNet-20 (benchmarks/gpu.py's CifarResNet, 0.27 M parameters) on synthetic 32x32 images
(``--model resnet20``, default 1,000 images), or the digits CNN on all 1,797 digits (``--model cnn``).  Both sides
build their operator once and keep its graph (the first product, which builds it, is timed apart); then, in
alternating rounds so that drifts in machine load hit both, each times ``--products`` single-vector products (what
Lanczos asks for) and, with ``--spectrum``, ``compute_spectrum(op, k=5, bottom=1, density=False, trace=False)``.
The products of both sides are compared on the same vectors.  The local process runs with each of
``--local-threads`` torch threads (2 and 1 by default: on a loaded machine an OpenMP team of 2 can lose more to
waiting for a descheduled thread than it gains), each worker with 1 (the machine's 2 cores either way).  Reports
medians, their ratios, the product counts and peak resident memory (VmHWM).

    python benchmarks/dask_hessian.py [--model resnet20] [--images 1000] [--rounds 3] [--products 5] [--spectrum]
                                      [--local-threads 2,1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # benchmarks/gpu.py's ResNet; the workers inherit the path and unpickle it from there

import landscape_widgets as lw  # noqa: E402
from landscape_widgets import examples  # noqa: E402
from landscape_widgets.hessian.hvp import HessianOperator  # noqa: E402
from landscape_widgets.hessian.sharded import sharded_operator  # noqa: E402
from landscape_widgets.hessian.spectrum import compute_spectrum  # noqa: E402


def _case(name, images):
    if name == "cnn":
        x, y = examples.digits(flat=False)
        model = examples.digits_cnn()
        examples.train(model, (x, y), epochs=5)
        return "digits CNN", model, (x[:images], y[:images])
    from gpu import CifarResNet, synthetic_images
    x, y = synthetic_images(images)
    return "ResNet-20", CifarResNet(n=3).eval(), (x, y)


def _peak_mib():
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over a spawn's exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _products(op, V):
    """Seconds per product of single-vector products, and the products."""
    out = []
    t = time.perf_counter()
    for v in V:
        out.append(op.matvec_torch(v))
    return (time.perf_counter() - t) / len(V), torch.stack(out)


def _spectrum(op):
    t = time.perf_counter()
    with op.running():
        fields, meta = compute_spectrum(op, 5, 1, density=False, trace=False, tol=1e-6)
    return time.perf_counter() - t, fields, meta["hvps_total"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("resnet20", "cnn"), default="resnet20")
    ap.add_argument("--images", type=int, default=None, help="samples (default: 1000 images, all 1797 digits)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--products", type=int, default=5, help="single-vector products timed per round and side")
    ap.add_argument("--spectrum", action="store_true", help="also time compute_spectrum(k=5, bottom=1) per round")
    ap.add_argument("--local-threads", default="2,1", help="torch threads of the local process, one row each")
    args = ap.parse_args(argv)
    images = args.images or (1000 if args.model == "resnet20" else 1797)
    import dask
    from distributed import Client, LocalCluster

    from landscape_widgets.distributed import worker_environ

    title, model, data = _case(args.model, images)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    P = ls.problem.private().num_parameters
    V = torch.randn(args.products, P, generator=torch.Generator().manual_seed(0))
    threads = [int(t) for t in args.local_threads.split(",")]
    torch.set_num_threads(threads[0])
    mine = ls.problem.copy()  # a private copy of its own: refreshing the other (sharded_operator) leaves its graph
    local = HessianOperator(mine.private(), mine.data, mine.objective)
    t = time.perf_counter()
    local.matvec_torch(V[0])
    build_local = time.perf_counter() - t
    peak_local = _peak_mib()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):  # docs/scaling.md
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    sides = [f"local{n}" for n in threads] + ["dask"]
    rows = {k: [] for k in sides}
    spec = {k: [] for k in sides}
    try:
        client.run(torch.set_num_threads, 1)
        t = time.perf_counter()
        remote = sharded_operator(client, ls.problem)
        remote.matvec_torch(V[0])
        build_dask = time.perf_counter() - t
        diff = 0.0
        for _ in range(args.rounds):
            for n in threads:
                torch.set_num_threads(n)
                s_local, out_local = _products(local, V)
                rows[f"local{n}"].append(s_local)
                if args.spectrum:
                    spec[f"local{n}"].append(_spectrum(local))
            torch.set_num_threads(threads[0])
            s_dask, out_dask = _products(remote, V)
            rows["dask"].append(s_dask)
            diff = max(diff, float((out_dask - out_local).abs().max() / out_local.abs().max()))
            if args.spectrum:
                spec["dask"].append(_spectrum(remote))
        peak_workers = client.run(_peak_mib)
    finally:
        client.close()
        cluster.close()
    print(f"`python benchmarks/dask_hessian.py --model {args.model} --images {images} --rounds {args.rounds} "
          f"--products {args.products}{' --spectrum' if args.spectrum else ''} --local-threads {args.local_threads}`"
          f" — {title}, {P} parameters, "
          f"{images} samples; {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with "
          f"other work: timings are noisy), torch {torch.__version__}, medians of {args.rounds} alternating "
          f"rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    md = statistics.median(rows["dask"])
    print("| setup | first product (builds the graph) s | s / product | dask speed-up vs it | peak RSS MiB |\n"
          "|---|---|---|---|---|")
    for n in threads:
        ml = statistics.median(rows[f"local{n}"])
        first = f"{build_local:.2f}" if n == threads[0] else "(built)"
        print(f"| one process, {n} torch thread{'s' if n > 1 else ''} | {first} | {ml:.3f} | {ml / md:.2f}x | "
              f"{peak_local:.0f} |")
    print(f"| 2 Dask workers x 1 thread, half the samples each | {build_dask:.2f} | {md:.3f} | 1.00x | "
          f"workers {', '.join(f'{v:.0f}' for v in peak_workers.values())}; kernel {_peak_mib():.0f} |")
    print(f"\nmax |H v (dask) - H v (local)| / max |H v| = {diff:.1e}; shards {[s for _w, s, _t in remote.shards]}")
    print("rounds (s / product): " + ", ".join(f"{k} {[round(t, 3) for t in rows[k]]}" for k in sides))
    if args.spectrum:
        lam_d = spec["dask"][-1][1]["top_eigenvalues"]
        sd = statistics.median(t for t, _f, _h in spec["dask"])
        print("\ncompute_spectrum(k=5, bottom=1, density=False, trace=False), median s (products):")
        for k in sides:
            s = statistics.median(t for t, _f, _h in spec[k])
            lam = spec[k][-1][1]["top_eigenvalues"]
            print(f"- {k}: {s:.1f} s ({spec[k][-1][2]} products), dask speed-up {s / sd:.2f}x, top eigenvalues max "
                  f"rel diff vs dask {float(np.max(np.abs(lam_d - lam) / np.abs(lam))):.1e}")
        print("rounds (s): " + ", ".join(f"{k} {[round(t, 1) for t, _f, _h in spec[k]]}" for k in sides))


if __name__ == "__main__":
    main()
