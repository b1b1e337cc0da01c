"""Benchmark: a digits-CNN plane on 2 single-threaded Dask workers vs one local process with 2 torch threads.

Both evaluate the same trained digits CNN on the same ``resolution``x``resolution`` plane (values compared), in
alternating rounds so drifts in machine load hit both; the Dask time includes shipping the job and each worker
building its model (done per run), not starting the cluster.  Goal: Dask >= 0.9x the local rate.

    python benchmarks/dask_plane.py [--resolution 41] [--rounds 3] [--epochs 10]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import landscape_widgets as lw  # noqa: E402
from landscape_widgets import examples  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=41)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dask-malloc", action="store_true",
                    help="keep Dask's default MALLOC_TRIM_THRESHOLD_=65536 in the workers (3x slower on CPUs)")
    args = ap.parse_args(argv)
    import dask
    from distributed import Client, LocalCluster

    from landscape_widgets.distributed import worker_environ

    data = examples.digits(flat=False)
    model = examples.digits_cnn()
    examples.train(model, data, epochs=args.epochs)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    res = args.resolution
    environ = dask.config.get("distributed.nanny.pre-spawn-environ") if args.dask_malloc else worker_environ()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):  # docs/scaling.md
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        client.run(torch.set_num_threads, 1)  # single-threaded workers (Dask's nanny also sets OMP_NUM_THREADS=1)
        ls.plane(resolution=4, progress=False, client=client)  # warm the workers' imports
        t_local, t_dask, z_local, z_dask = [], [], None, None
        for _ in range(args.rounds):
            torch.set_num_threads(2)
            t = time.perf_counter()
            z_local = ls.plane(resolution=res, progress=False).losses
            t_local.append(time.perf_counter() - t)
            t = time.perf_counter()
            z_dask = ls.plane(resolution=res, progress=False, client=client).losses
            t_dask.append(time.perf_counter() - t)
    finally:
        client.close()
        cluster.close()
    pts = res * res
    local, dask = pts / statistics.median(t_local), pts / statistics.median(t_dask)
    diff = float(np.max(np.abs(z_local - z_dask)))
    flag = " --dask-malloc" if args.dask_malloc else ""
    print(f"`python benchmarks/dask_plane.py --resolution {res} --rounds {args.rounds} --epochs {args.epochs}{flag}` — "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
          f"medians of {args.rounds} alternating rounds, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| setup | points | pts/s | vs local | max abs diff vs local |\n|---|---|---|---|---|")
    print(f"| local process, 2 torch threads | {pts} | {local:.1f} | 1.00x | 0 |")
    env = "Dask's default worker environment" if args.dask_malloc else "workers started with worker_environ()"
    print(f"| Dask LocalCluster, 2 workers x 1 thread, {env} | {pts} | {dask:.1f} | {dask / local:.2f}x | "
          f"{diff:.1e} |")
    print(f"\nrounds (s): local {[round(t, 2) for t in t_local]}, dask {[round(t, 2) for t in t_dask]}")


if __name__ == "__main__":
    main()
