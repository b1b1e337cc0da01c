"""Benchmark of the Hessian side, as a user calls it, on the digits MLP and CNN of ``landscape_widgets.examples``
(trained, full data = one batch of 1,797), a GPT-2 from a ``transformers`` config (2 layers, width 64, 500 tokens:
136k parameters) on 32 x 64 tokens, and a ResNet-20 (``benchmarks/gpu.py``, BatchNorm) on 1,000 synthetic 32x32
images as a DataLoader of batches of 128; ``--quick``: the digits models only.

- products: seconds per Hessian-vector product of ``HessianOperator.matmat_torch`` for single vectors and blocks of
  4/16/33 (``--blocks``), by double backward (``backend="graph"``) and forward-over-reverse (``"func"``), each row by
  row (``batching="loop"``) and vmapped over the block (``"vmap"``), all configurations alternating within each
  round (median of ``--rounds``; the graph's build, paid once per operator on one batch, outside the timing); and
  one forward + ``loss.backward()`` of the same model and data, with the ratio of one product to it.
- spectrum: ``Landscape.spectrum()`` with its defaults (top-5, bottom-1, Hutch++ trace of 99 products, SLQ density
  10 x 90 steps), timed whole, with its products and seconds per stage; with ``--baseline PATH`` (a checkout, e.g.
  ``git worktree add /tmp/base2 HEAD``) that tree's spectrum too, each in its own process, alternating per round.
- peers (``--peers``, digits only): top-5 eigenvalues, trace and SLQ density against PyHessian (PyPI ``pyhessian``):
  PyHessian's power iteration with deflation (``eigenvalues(top_n=5)``, maxIter=100, tol=1e-3 (its default) and
  1e-4: its tol bounds the change between iterations, and at 1e-3 its error stays above 1e-3) against our Lanczos
  (``extreme_eigenpairs``: full reorthogonalization, ARPACK's convergence test after every product) and against
  scipy ``eigsh`` (ARPACK) over the same products, all timed from a fresh object (the graph build included);
  agreement against a tight reference (``eigsh`` with tol=1e-10).  90 HVPs by our graph and func backends and by
  PyHessian's ``hessian_vector_product``; one SLQ run of 90 steps against 90 HVPs (PyHessian's ``density()`` is
  tried and its error recorded); Hutch++ with 99 products against PyHessian's Hutchinson (maxIter=100, tol=1e-3).
  hessian-eigenthings (``compute_hessian_eigenthings``, top-5 by its Lanczos) and curvlinops
  (``HessianLinearOperator``, 90 products) are measured when installed, and reported as absent otherwise.

    python benchmarks/hessian.py [--quick] [--threads 2] [--rounds 3] [--blocks 1,4,16,33] [--baseline /tmp/base2]
        [--peers] [--no-spectrum] [--no-products] [--epochs 30] [--device cpu|cuda] [--write]
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

from landscape_widgets import examples
from landscape_widgets._model import PrivateModel
from landscape_widgets.data import DataSource
from landscape_widgets.hessian import HessianOperator
from landscape_widgets.hessian.hutchinson import hutchinson_trace
from landscape_widgets.hessian.lanczos import _arpack, extreme_eigenpairs
from landscape_widgets.hessian.slq import lanczos_quadrature

CE = nn.CrossEntropyLoss()


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, rounds):
    best, out = float("inf"), None
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def operator(model, data, backend="graph", loss=CE, **options):
    return HessianOperator(PrivateModel(model, DEVICE), DataSource(data), loss, backend=backend, **options)


# -- the models --------------------------------------------------------------------------------------------------
def digits_case(cnn, epochs):
    data = examples.digits(flat=not cnn)
    model = examples.digits_cnn() if cnn else examples.digits_mlp()
    examples.train(model, data, epochs=epochs)
    return model.eval(), CE, data


def gpt2_case(epochs):
    sys.path.insert(0, HERE)
    from transformer import bigram_tokens, make_model, next_token_loss, train
    model = make_model(2, 64, 2, 500, 64, seed=0)  # 136,192 parameters
    x = bigram_tokens(32, 64, 500, seed=1)
    train(model, x, steps=20)
    return model.eval(), next_token_loss, (x, x)


def resnet_case(epochs):
    sys.path.insert(0, HERE)
    from gpu import CifarResNet, synthetic_images
    x, y = synthetic_images(1000)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=128)
    return CifarResNet(n=3).eval(), CE, loader


CASES = {"mlp": ("digits MLP", lambda e: digits_case(False, e)), "cnn": ("digits CNN", lambda e: digits_case(True, e)),
         "gpt2": ("GPT-2 (136k params, 32 x 64 tokens)", gpt2_case),
         "resnet20": ("ResNet-20 (1,000 32x32 images, DataLoader of 128)", resnet_case)}


def batches_of(data):
    return data if isinstance(data, torch.utils.data.DataLoader) else [data]


def forward_backward(model, loss_fn, data):
    """Seconds of one forward and ``loss.backward()`` over all the data (sample-weighted batch losses), on a copy."""
    m = copy.deepcopy(model).to(DEVICE)
    total = sum(len(b[1]) for b in batches_of(data))
    sync()
    t = time.perf_counter()
    for x, y in batches_of(data):
        x, y = x.to(DEVICE), y.to(DEVICE)
        (loss_fn(m(x), y) * (len(y) / total)).backward()
    sync()
    return time.perf_counter() - t


PATHS = [("graph", "loop"), ("graph", "vmap"), ("func", "loop"), ("func", "vmap")]


def product_times(model, loss_fn, data, blocks, rounds):
    """Median seconds per product for every (backend, batching, block size), alternating within each round; the
    forward+backward's median; and the vmap fallbacks, if any."""
    ops = {k: operator(model, data, k[0], loss_fn, batching=k[1]) for k in PATHS}
    P = ops[PATHS[0]].num_parameters
    V = torch.randn(max(blocks), P, generator=torch.Generator().manual_seed(0))
    for op in ops.values():
        op.matmat_torch(V[:2])  # one batch: the graph is built here, once per operator
    times = {}
    for _ in range(rounds):
        times.setdefault("fwd+bwd", []).append(forward_backward(model, loss_fn, data))
        for m in blocks:
            for key, op in ops.items():
                if key[1] == "vmap" and m == 1:
                    continue  # a single vector is never vmapped
                sync()
                t = time.perf_counter()
                op.matmat_torch(V[:m])
                sync()
                times.setdefault((key, m), []).append((time.perf_counter() - t) / m)
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, {k: op.vmap_error for k, op in ops.items() if op.vmap_error}


def product_lines(name, P, med, errors, blocks):
    fb = med["fwd+bwd"]
    lines = [f"#### {name} ({P:,} parameters): ms per product; one forward + loss.backward() {1e3 * fb:.1f} ms", "",
             "| block | " + " | ".join(f"{b} {m}" for b, m in PATHS) + " | fastest / fwd+bwd |",
             "|---|" + "---|" * (len(PATHS) + 1)]
    for m in blocks:
        row = [med.get((k, m)) for k in PATHS]
        best = min(v for v in row if v is not None)
        lines.append(f"| {m} | " + " | ".join("-" if v is None else f"{1e3 * v:.1f}" for v in row)
                     + f" | {best / fb:.2f}x |")
    if errors:
        lines += ["", "vmap fell back to the loop: " + "; ".join(f"{k}: {e}" for k, e in errors.items())]
    return lines + [""]


# -- Landscape.spectrum() with its defaults, in a process of the tree being measured ------------------------------
def spectrum_worker(which, epochs):
    import landscape_widgets as lw

    model, loss_fn, data = CASES[which][1](epochs)
    ls = lw.Landscape(model, loss_fn, data, device=str(DEVICE))
    sync()
    t = time.perf_counter()
    spec = ls.spectrum(progress=False)
    sync()
    seconds = time.perf_counter() - t
    meta = spec.meta
    print(json.dumps({"seconds": seconds, "hvps": meta["hvps"], "hvps_total": meta["hvps_total"],
                      "timings": meta["timings"], "top": spec.top_eigenvalues.tolist(),
                      "bottom": spec.bottom_eigenvalues.tolist(), "trace": spec.trace}))


def run_tree(path, args, which):
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, os.path.abspath(__file__), "--spectrum-worker", which, "--threads", str(args.threads),
           "--epochs", str(args.epochs), "--device", args.device]
    out = subprocess.run(cmd, env=env, cwd=path, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"spectrum of {which} under {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spectrum_lines(args, which, trees):
    runs = {name: [] for name, _ in trees}
    for _ in range(args.spectrum_rounds):  # alternating: the machine's load affects both trees alike
        for name, path in trees:
            runs[name].append(run_tree(path, args, which))
    lines = [f"#### Landscape.spectrum() defaults: {CASES[which][0]}", "",
             "| tree | seconds (median; each) | products top / bottom / trace / density = total | "
             "seconds top / bottom / trace / density | lambda_max, lambda_min, trace |", "|---|---|---|---|---|"]
    stages = ("top", "bottom", "trace", "density")
    for name, rs in runs.items():
        r = rs[-1]
        each = ", ".join("%.1f" % x["seconds"] for x in rs)
        counts = " / ".join(str(r["hvps"].get(k, 0)) for k in stages)
        secs = " / ".join("%.1f" % r["timings"].get(k + "_s", 0.0) for k in stages)
        low = r["bottom"][0] if r["bottom"] else float("nan")
        med = statistics.median(x["seconds"] for x in rs)
        lines.append(f"| {name} | {med:.1f}; {each} | {counts} = {r['hvps_total']} | {secs} | "
                     f"{r['top'][0]:.6g}, {low:.6g}, {r['trace']:.6g} |")
    return lines + [""]


def pyh(model, data):
    from pyhessian import hessian

    # a copy: PyHessian sets eval mode and writes .grad; with cuda=True it moves the copy and the data itself
    return hessian(copy.deepcopy(model).to(DEVICE), CE, data=data, cuda=DEVICE.type == "cuda")


def pyhessian_top5(model, data, tol=1e-3):
    h = pyh(model, data)
    vals, _ = h.eigenvalues(top_n=5, tol=tol)
    return np.array(vals)


def ours_top5(model, data, tol):
    op = operator(model, data)
    with op.running():  # as Landscape.spectrum runs it: numpy's BLAS single-threaded between products
        w, _, info = extreme_eigenpairs(op, 5, "LA", rng=np.random.default_rng(0), tol=tol)
    return w, info["hvps"]


def arpack_top5(model, data, tol):
    """scipy's eigsh on the same operator and start vector (ARPACK, the library's fallback after its own Lanczos)."""
    op = operator(model, data)
    with op.running():
        w, _, _ = _arpack(op, 5, "LA", np.random.default_rng(0).standard_normal(op.num_parameters), tol, None, None)
    return w, op.hvps


def hvp_times(model, data, rounds, n=90, n_func=10):
    """Seconds for ``n`` products (the func backend is timed on ``n_func`` and scaled: it is much slower)."""
    out = {}
    for backend, m in (("graph", n), ("func", n_func)):
        op = operator(model, data, backend)
        V = torch.randn(m, op.num_parameters, generator=torch.Generator().manual_seed(0))
        op.matvec_torch(V[0])  # graph built outside the timing: it is reused by every product

        def run():
            for i in range(m):
                op.matvec_torch(V[i])
        out[backend] = best_of(run, rounds)[0] * n / m
    from pyhessian.utils import hessian_vector_product

    h = pyh(model, data)
    vs = [[torch.randn(p.shape, generator=torch.Generator().manual_seed(i)).to(DEVICE) for p in h.params]
          for i in range(n)]

    def run_pyh():
        for v in vs:
            hessian_vector_product(h.gradsH, h.params, v)
    out["pyhessian"] = best_of(run_pyh, rounds)[0]
    return out


def density_time(model, data, rounds, steps=90):
    def run():
        op = operator(model, data)
        op.matvec_torch(torch.zeros(op.num_parameters))  # the graph build is not part of the 90 steps
        sync()
        t = time.perf_counter()
        with op.running():
            lanczos_quadrature(op, steps, 1, rng=np.random.default_rng(0))
        sync()
        return time.perf_counter() - t
    return min(run() for _ in range(rounds))


def pyhessian_density_error(model, data):
    try:
        pyh(model, data).density(iter=90, n_v=1)
        return "ran"
    except Exception as exc:  # noqa: BLE001 -- what fails is the measurement
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def traces(model, data, rounds):
    def theirs():
        return float(np.mean(pyh(model, data).trace()))

    def ours():
        op = operator(model, data)
        with op.running():
            return hutchinson_trace(op, 99, rng=np.random.default_rng(0))[:2]
    t_p, v_p = best_of(theirs, rounds)
    t_o, (v_o, se_o) = best_of(ours, rounds)
    return t_p, v_p, t_o, v_o, se_o


def matched(t3, w3, t4, w4, err):
    """PyHessian's time at the loosest of its tolerances whose result is within 1e-3 of the reference (NaN if
    neither is): the goal compares the libraries at 1e-3 relative agreement, and its default tol does not reach it."""
    for t, w in ((t3, w3), (t4, w4)):
        if err(w) <= 1e-3:
            return t
    return float("nan")


def other_peers(model, data):
    """hessian-eigenthings' top-5 and curvlinops' products, where installed (neither is a dependency)."""
    lines = []
    try:
        from hessian_eigenthings import compute_hessian_eigenthings
    except ImportError:
        lines.append("hessian-eigenthings: not installed (pip install hessian-eigenthings)")
    else:
        loader = [tuple(t.to(DEVICE) for t in data)]
        m = copy.deepcopy(model).to(DEVICE)
        t = time.perf_counter()
        vals, _ = compute_hessian_eigenthings(m, loader, CE, 5, mode="lanczos", use_gpu=DEVICE.type == "cuda")
        lines.append(f"hessian-eigenthings Lanczos top-5: {', '.join(f'{v:.5g}' for v in sorted(vals)[::-1])} in "
                     f"{time.perf_counter() - t:.3f} s")
    try:
        from curvlinops import HessianLinearOperator
    except ImportError:
        lines.append("curvlinops: not installed (pip install curvlinops-for-pytorch)")
    else:
        m = copy.deepcopy(model).to(DEVICE)
        params = [p for p in m.parameters() if p.requires_grad]
        H = HessianLinearOperator(m, CE, params, [tuple(t.to(DEVICE) for t in data)])
        V = np.random.default_rng(0).standard_normal((H.shape[0], 90)).astype(np.float32)
        t = time.perf_counter()
        for i in range(90):
            H @ V[:, i]
        lines.append(f"curvlinops HessianLinearOperator: 90 products in {time.perf_counter() - t:.3f} s")
    return lines + [""]


def peer_lines(name, make, flat, args):
    lines = []
    data = examples.digits(flat=flat)
    model = make()
    examples.train(model, data, epochs=args.epochs)
    with torch.no_grad():
        loss = float(CE(model.eval()(data[0]), data[1]))
    data = tuple(t.to(DEVICE) for t in data)
    P = sum(p.numel() for p in model.parameters())
    ref, _ = arpack_top5(model, data, tol=1e-10)
    t_pyh, w_pyh = best_of(lambda: pyhessian_top5(model, data), args.rounds)
    t_pyh4, w_pyh4 = best_of(lambda: pyhessian_top5(model, data, 1e-4), args.rounds)
    t_ours, (w_ours, n_ours) = best_of(lambda: ours_top5(model, data, 1e-3), args.rounds)
    t_ours6, (w_ours6, n_ours6) = best_of(lambda: ours_top5(model, data, 1e-6), args.rounds)
    t_arp, (w_arp, n_arp) = best_of(lambda: arpack_top5(model, data, 1e-3), args.rounds)
    hv = hvp_times(model, data, args.rounds)
    t_dens = density_time(model, data, args.rounds)
    dens_err = pyhessian_density_error(model, data)
    t_tp, v_tp, t_to, v_to, se_to = traces(model, data, args.rounds)
    err = lambda w: float(np.max(np.abs(np.sort(w)[::-1] - ref) / np.abs(ref)))  # noqa: E731
    lines += [
        f"### {name} ({P:,} parameters, loss {loss:.4f})", "",
        f"top-5 eigenvalues (reference, eigsh tol 1e-10): {', '.join(f'{v:.5g}' for v in ref)}", "",
        "| top-5 | time (s) | HVPs | max rel. error vs reference |", "|---|---|---|---|",
        f"| PyHessian power iteration (maxIter 100, tol 1e-3, its default) | {t_pyh:.3f} | - | {err(w_pyh):.2e} |",
        f"| PyHessian power iteration (maxIter 100, tol 1e-4) | {t_pyh4:.3f} | - | {err(w_pyh4):.2e} |",
        f"| scipy eigsh (ARPACK) tol 1e-3, same products | {t_arp:.3f} | {n_arp} | {err(w_arp):.2e} |",
        f"| ours: Lanczos tol 1e-3 | {t_ours:.3f} | {n_ours} | {err(w_ours):.2e} |",
        f"| ours: Lanczos tol 1e-6 (library default) | {t_ours6:.3f} | {n_ours6} | {err(w_ours6):.2e} |",
        f"| speed-up, both at tol 1e-3 (PyHessian / ours) | {t_pyh / t_ours:.2f}x | | |",
        f"| speed-up at <= 1e-3 measured error (PyHessian's fastest such row / ours tol 1e-3) | "
        f"{matched(t_pyh, w_pyh, t_pyh4, w_pyh4, err) / t_ours:.2f}x | | |", "",
        "| 90 HVPs | time (s) | per HVP (ms) |", "|---|---|---|",
        *(f"| {k} | {v:.3f} | {1e3 * v / 90:.2f} |" for k, v in hv.items()),
        f"| SLQ, 90 steps, full reorthogonalization | {t_dens:.3f} | ratio to 90 graph HVPs: "
        f"{t_dens / hv['graph']:.2f} |", "",
        f"PyHessian `density(iter=90, n_v=1)`: {dens_err}", "",
        f"trace: PyHessian Hutchinson {v_tp:.4g} in {t_tp:.3f} s; ours Hutch++ (99 HVPs) {v_to:.4g} "
        f"± {se_to:.2g} in {t_to:.3f} s", ""]
    lines += other_peers(model, data)
    return lines


def _where():
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads of {os.cpu_count()} cores)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the digits models only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", default="1,4,16,33", help="block sizes of the product table")
    ap.add_argument("--spectrum-rounds", type=int, default=1, help="alternating rounds of Landscape.spectrum()")
    ap.add_argument("--baseline", default=None, help="a checkout to compare Landscape.spectrum() with (PYTHONPATH)")
    ap.add_argument("--peers", action="store_true", help="PyHessian (and hessian-eigenthings, curvlinops) on digits")
    ap.add_argument("--no-spectrum", action="store_true")
    ap.add_argument("--no-products", action="store_true")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every library on it)")
    ap.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    ap.add_argument("--spectrum-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # PyHessian draws its vectors from the global RNG; ours use private generators
    if args.spectrum_worker:
        return spectrum_worker(args.spectrum_worker, args.epochs)
    names = ["mlp", "cnn"] if args.quick else list(CASES)
    blocks = [int(b) for b in args.blocks.split(",")]
    lines = []
    if not args.no_products:
        lines += ["### Hessian-vector products (median of %d rounds, alternating)" % args.rounds, ""]
        for which in names:
            model, loss_fn, data = CASES[which][1](args.epochs)
            P = sum(p.numel() for p in model.parameters() if p.requires_grad)
            med, errors = product_times(model, loss_fn, data, blocks, args.rounds)
            lines += product_lines(CASES[which][0], P, med, errors, blocks)
            print("\n".join(lines[-(len(blocks) + 6):]), flush=True)
    if not args.no_spectrum:
        trees = ([("baseline", os.path.abspath(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
        lines += ["### Landscape.spectrum() with its defaults, as a user calls it", ""]
        for which in (["cnn"] if args.quick else ["cnn", "gpt2", "resnet20"]):
            lines += spectrum_lines(args, which, trees)
            print("\n".join(lines[-(len(trees) + 5):]), flush=True)
    if args.peers:
        lines += ["### Against PyHessian (and hessian-eigenthings, curvlinops where installed)", ""]
        for name, make, flat in (("digits MLP", examples.digits_mlp, True), ("digits CNN", examples.digits_cnn, False)):
            lines += peer_lines(name, make, flat, args)
            print("\n".join(lines[-26:]), flush=True)
    header = ["## Hessian: products, Landscape.spectrum(), peers", "",
              f"`.venv/bin/python benchmarks/hessian.py {' '.join(sys.argv[1:])}` — {_where()}, torch "
              f"{torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end; "
              f"{time.strftime('%Y-%m-%d %H:%M')} UTC.", ""]
    text = "\n".join(header + lines) + "\n"
    if args.write:
        with open("benchmarks/RESULTS.md", "a") as fh:
            fh.write("\n" + text)
    print(text)


if __name__ == "__main__":
    main()
