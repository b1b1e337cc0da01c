"""Time and peak memory of recording and embedding a long run of a ~1M-parameter model.

A 64-1000-1000-10 MLP (1,075,010 parameters) is trained on sklearn's digits for ``--steps`` SGD steps and recorded
after every step into an ``lw.Trajectory(max_bytes=--budget-mib MiB)``.  Reported: the time of ``record`` alone
(summed over the steps), the snapshot store's size, tracemalloc's peak over recording (numpy snapshots are traced;
torch's own allocations are not, so the training itself does not count), then time and tracemalloc peak of every
embedding and of the PCA directions behind ``ls.plane(directions="pca")`` (the directions only: the grid's cost
is the plane benchmark's subject).  ``ru_maxrss`` is the whole process's peak resident memory, torch and the data
included.

    .venv/bin/python benchmarks/trajectory.py --steps 1000 --budget-mib 256
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import tracemalloc

import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples
from landscape_widgets.directions.pca import pca_directions
from landscape_widgets._model import PrivateModel


def timed_and_traced(fn):
    """Time a clean run, then trace a second one for memory: tracemalloc slows Python-heavy code several-fold."""
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, seconds, peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--budget-mib", type=int, default=256)
    ap.add_argument("--methods", nargs="+", default=["pca", "umap", "autoencoder"])
    ap.add_argument("--umap-inverse", action="store_true", default=None,
                    help="run umap-learn's inverse_transform whatever the size (minutes at 1M parameters)")
    args = ap.parse_args()
    x, y = examples.digits()
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))
    num = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    traj = lw.Trajectory(max_bytes=args.budget_mib * 2 ** 20)
    record_s = 0.0
    tracemalloc.start()  # the store is numpy arrays, which tracemalloc sees; torch's own allocations it does not
    t_all = time.perf_counter()
    for _step in range(args.steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        t0 = time.perf_counter()
        traj.record(model, loss=loss.detach())
        record_s += time.perf_counter() - t0
    total_s = time.perf_counter() - t_all
    record_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end of training")
    print(f"model: {num:,} parameters ({4 * num / 2 ** 20:.1f} MiB per float32 snapshot); {args.steps} steps")
    print(f"trajectory: {traj}")
    print()
    print("| what | time | tracemalloc peak | result |")
    print("|---|---|---|---|")
    print(f"| record x {args.steps} (training loop {total_s:.1f} s) | {record_s:.2f} s total, "
          f"{1e3 * record_s / args.steps:.2f} ms/step | {record_peak / 2 ** 20:.0f} MiB | {len(traj)} snapshots kept, "
          f"stride {traj.stride}, store {traj.nbytes / 2 ** 20:.0f} MiB |")
    for method in args.methods:
        emb, seconds, peak = timed_and_traced(lambda: traj.embed(method=method, umap_inverse=args.umap_inverse))
        err = "None" if emb.reconstruction_error is None else f"{emb.reconstruction_error:.3g}"
        print(f"| embed {method} | {seconds:.2f} s | {peak / 2 ** 20:.0f} MiB | trustworthiness "
              f"{emb.trustworthiness:.3f}, reconstruction error {err} |")
    private = PrivateModel(model, torch.device("cpu"))
    made, seconds, peak = timed_and_traced(lambda: pca_directions(private, 2, trajectory=traj))
    meta = made.meta
    print(f"| PCA directions + path + random-walk baseline | {seconds:.2f} s | {peak / 2 ** 20:.0f} MiB | explained "
          f"{[round(v, 3) for v in meta['explained_variance']]}, random walk "
          f"{[round(v, 3) for v in meta['random_walk_explained_variance']]} |")
    print(f"\nprocess peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10:.0f} MiB")


if __name__ == "__main__":
    main()
