"""Benchmark: vmap-batched grid evaluation vs the per-point loop vs loss-landscapes, on whatever device is here.

Models: the digits MLP and CNN (sklearn's digits; synthetic 8x8 data of the same shape when sklearn is missing,
which changes no timing) and a ResNet-20 (He et al. 2016, CIFAR variant, option-A shortcuts, written here: no
torchvision) on synthetic 32x32 images.  Each method evaluates the same points on the same filter-normalized
random plane; values of the batched evaluator are checked against the loop.  The batched evaluator is timed with
each of its rules for layers with moving weights (``landscape_widgets.gpu``): vmap's own (grouped convolutions),
im2col + bmm (``gpu.im2col``, also with TF32 matmuls), the affine one (``gpu.affine``), and that with each point's
convolution as one Triton kernel (``gpu.triton``, where Triton and a GPU are there).
loss-landscapes (optional) is timed on its own ``random_plane`` with a comparable number of points.  Last, one
forward pass of a ResNet-56 over 50,000 32x32 images is timed (extrapolated from a few batches), the unit of
docs/scaling.md's estimate.

    python benchmarks/gpu.py            # full run on CUDA (< 5 min on one GPU), prints a markdown table
    python benchmarks/gpu.py --quick    # small sizes, any device (CPU: < 1 min), to check the script
    python benchmarks/gpu.py --profile  # only: the kernels of one tile of the digits CNN, per batching rule

Needs torch and numpy; loss_landscapes and scikit-learn are optional.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import sys
import time
import types

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_core():
    """The evaluators, without ``landscape_widgets/__init__`` when its optional dependencies (scipy, ...) are
    missing on a bare GPU machine: the modules used here need only torch and numpy."""
    sys.path.insert(0, ROOT)
    try:
        __import__("landscape_widgets")  # the package with all its imports, or the fallback below
    except ImportError as exc:
        print(f"(landscape_widgets' package imports need {exc.name}; loading the core modules directly)",
              file=sys.stderr)
        for name in [m for m in sys.modules if m == "landscape_widgets" or m.startswith("landscape_widgets.")]:
            del sys.modules[name]
        pkg = types.ModuleType("landscape_widgets")
        pkg.__path__ = [os.path.join(ROOT, "landscape_widgets")]
        sys.modules["landscape_widgets"] = pkg
    mods = {n: importlib.import_module(f"landscape_widgets.{n}") for n in ("_model", "data", "driver", "loop",
                                                                        "batched", "gpu.triton")}
    return mods


# -- models and data --------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin  # option A: subsample and zero-pad channels, no parameters (He et al. §4.2)
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, ::self.stride, ::self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: n=3 is ResNet-20 (0.27 M parameters), n=9 ResNet-56 (0.85 M)."""

    def __init__(self, n=3, num_classes=10, seed=0):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / p[0].numel()) ** 0.5)
                else:  # BN gamma near 1; no exact zeros, which loss-landscapes' 1-D normalization divides by
                    p.copy_(float(name.endswith("weight")) + 0.01 * torch.randn(p.shape, generator=gen))
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 1.5, generator=gen)
                    m.running_mean.normal_(0.0, 0.1, generator=gen)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_data(flat):
    gen = torch.Generator().manual_seed(0)
    try:
        from sklearn.datasets import load_digits
        ds = load_digits()
        x, y = torch.tensor(ds.data, dtype=torch.float32) / 16.0, torch.tensor(ds.target)
    except ImportError:
        x, y = torch.rand(1797, 64, generator=gen), torch.randint(0, 10, (1797,), generator=gen)
    return (x, y) if flat else (x.reshape(-1, 1, 8, 8), y)


def digits_mlp():
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return _seeded(m)


def digits_cnn():
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    return _seeded(m)


def _seeded(m, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            # small non-zero biases: loss-landscapes' element-wise normalization of 1-D tensors divides by them
            scale = (2.0 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.01
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return m


def synthetic_images(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# -- one grid, three ways ---------------------------------------------------------------------------------------
def filter_directions(private, seed=0):
    """Two Gaussian filter-normalized directions, biases and BN zeroed (Li et al. 2018 §4)."""
    gen = torch.Generator().manual_seed(seed)
    dirs = []
    for _ in range(2):
        d = {}
        for n, w in private.base.items():
            r = torch.randn(w.shape, generator=gen).to(w.device, w.dtype)
            if w.dim() <= 1:
                r.zero_()
            else:
                r *= (w.flatten(1).norm(dim=1) / (r.flatten(1).norm(dim=1) + 1e-10)).reshape(-1, *[1] * (w.dim() - 1))
            d[n] = r
        dirs.append(d)
    return dirs


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def run_loss_landscapes(model, x, y, points, device):
    try:
        import loss_landscapes
        import loss_landscapes.metrics
    except ImportError:
        return None, "not installed (pip install loss-landscapes)"
    steps = max(2, int(round(math.sqrt(points))))
    model = model.to(device).eval()
    metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x.to(device), y.to(device))
    try:  # its directions come from torch.rand without a device: make that the model's device
        with torch.no_grad(), torch.device(device):
            loss_landscapes.random_plane(model, metric, distance=1, steps=2, normalization="filter")  # warm-up
            dt, _ = timed(lambda: loss_landscapes.random_plane(model, metric, distance=1, steps=steps,
                                                               normalization="filter"), device)
    except Exception as exc:  # noqa: BLE001 -- report, do not hide, why it could not run here
        return None, f"failed: {type(exc).__name__}: {str(exc)[:80]}"
    return steps * steps / dt, f"{steps}x{steps}"


RULE_COLUMNS = ("vmap", "im2col", "im2col, tf32", "affine", "triton")


def plane_setup(core, model, data, points, device):
    """The private copy, data, moving tensors of a filter-normalized random plane, and ``points`` of its grid."""
    Moving = core["loop"].Moving
    private = core["_model"].PrivateModel(model, device)
    source = core["data"].DataSource(data)
    d1, d2 = filter_directions(private)
    moving = [Moving(private.params[n], private.base[n], [d1[n], d2[n]]) for n in private.names
              if d1[n].count_nonzero() or d2[n].count_nonzero()]
    side = int(math.ceil(math.sqrt(points)))
    a = np.linspace(-1, 1, side)
    coords = np.stack(np.meshgrid(a, a, indexing="ij"), -1).reshape(-1, 2)[:points]
    return private, source, moving, coords, side


def bench(core, name, model, data, points, device, tile, warm=8):
    PointEvaluator, VmapEvaluator = core["loop"].PointEvaluator, core["batched"].VmapEvaluator
    grid_tile_size, run_points = core["driver"].grid_tile_size, core["driver"].run_points
    private, source, moving, coords, side = plane_setup(core, model, data, points, device)
    ny = side if tile == "rows" else len(coords)
    target = core["batched"].TILE_POINTS  # what Landscape.plane uses with the vmap evaluator
    tile_size = grid_tile_size(ny, len(coords), target) if tile == "rows" else len(coords)
    loss = nn.CrossEntropyLoss()
    row = {"model": name, "params": private.num_parameters, "samples": source.num_samples, "points": len(coords)}

    loop = PointEvaluator(private, source, loss, moving)
    run_points(loop, coords[:warm], tile_size=warm)
    t_loop, v_loop = timed(lambda: run_points(loop, coords, tile_size=tile_size), device)

    def rel(v):
        return float(np.max(np.abs(v - v_loop) / np.maximum(np.abs(v_loop), 1e-12)))

    def run_vmap(**kw):
        ev = VmapEvaluator(private, source, loss, moving, **kw)
        run_points(ev, coords[:warm], tile_size=warm)  # warm-up, and the automatic chunk size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dt, v = timed(lambda: run_points(ev, coords, tile_size=tile_size), device)
        return len(coords) / dt, v, ev

    pts_vm, v_vm, vm = run_vmap()  # the library's default rule on this device (chooser.DEFAULT_RULES)
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    diffs = [rel(v_vm)]
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    rules = {}  # each batching rule on its own: vmap's (grouped convolutions), im2col + bmm, the affine one
    for rule in ("vmap", "im2col", "affine"):
        if rule != "im2col" or has_conv:
            rules[rule] = run_vmap(rule=rule) if rule != vm.rule else (pts_vm, v_vm, vm)
    if has_conv:
        # the batched GEMM follows the user's matmul precision; TF32 is what cuDNN already uses for the loop's convs
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            rules["im2col, tf32"] = run_vmap(rule="im2col")
        finally:
            torch.set_float32_matmul_precision(precision)
        if core["gpu.triton"].available(device):  # each point's convolution in one Triton kernel
            try:
                rules["triton"] = run_vmap(rule="triton")
                fallbacks = rules["triton"][2].record().fallbacks
                if fallbacks:
                    row["triton_fallbacks"] = fallbacks
            except Exception as exc:  # noqa: BLE001 -- a kernel that fails here is a finding, not the end of the run
                row["triton_error"] = f"{type(exc).__name__}: {exc}"[:300]
    diffs += [rel(v) for _p, v, _e in rules.values()]
    auto = VmapEvaluator(private, source, loss, moving, autotune=True)
    t_auto, v_auto = timed(lambda: run_points(auto, coords, tile_size=tile_size), device)
    bench_flag = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # an experiment: cuDNN's autotuner on each rule's convolutions
    try:
        cudnn = {r: run_vmap(rule=r)[0] for r in ("vmap", "affine")}
    finally:
        torch.backends.cudnn.benchmark = bench_flag
    chose = auto.mode if auto.mode == "loop" else f"vmap, {auto.rule}"
    row.update(auto=len(coords) / t_auto, auto_mode=chose, cudnn_bench=cudnn, auto_diff=rel(v_auto))
    row.update(loop=len(coords) / t_loop, vmap=pts_vm, rule=vm.rule, chunk=vm.chunk_size, diff=max(diffs), mem=mem,
               rules={k: (p, e.chunk_size) for k, (p, _v, e) in rules.items()})
    row["ll"], row["ll_note"] = run_loss_landscapes(model, *data, max(4, len(coords) // 4), device)
    return row


def resnet56_pass(device, batch, batches):
    """Seconds for one eval-mode pass of a ResNet-56 over 50,000 32x32 images (CIFAR-10's training set size)."""
    model = CifarResNet(n=9).to(device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    with torch.inference_mode():
        model(x)
        dt, _ = timed(lambda: [model(x) for _ in range(batches)], device)
    return 50_000 * dt / (batch * batches)


def profile_cnn(core, device, points):
    """torch.profiler's table of one tile of the digits CNN per batching rule: where a rule's time goes."""
    from torch.profiler import ProfilerActivity, profile

    private, source, moving, coords, _side = plane_setup(core, digits_cnn(), digits_data(False), points, device)
    run_points = core["driver"].run_points
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rules = ("affine", "triton", "vmap", "im2col") if core["gpu.triton"].available(device) else (
        "affine", "vmap", "im2col")
    for rule in rules:
        ev = core["batched"].VmapEvaluator(private, source, nn.CrossEntropyLoss(), moving, rule=rule)
        run_points(ev, coords[:16], tile_size=16)
        dt, _ = timed(lambda: run_points(ev, coords, tile_size=len(coords)), device)
        with profile(activities=activities) as prof:
            run_points(ev, coords, tile_size=len(coords))
        print(f"\n### digits CNN, rule {rule}: {len(coords)} points, {len(coords) / dt:.1f} pts/s unprofiled, "
              f"chunk {ev.chunk_size}\n")
        print(prof.key_averages().table(sort_by=key, row_limit=15))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script on any device in < 1 min")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--tile", choices=("rows", "grid"), default="rows",
                    help="rows: Landscape.plane's tiles (~64 points, whole rows); grid: the whole grid as one tile")
    ap.add_argument("--profile", action="store_true",
                    help="only profile one tile of the digits CNN per batching rule (512 points; --quick: 16)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    core = _import_core()
    if args.profile:
        profile_cnn(core, device, 16 if args.quick else 512)
        return
    q = args.quick
    cases = [("digits MLP", digits_mlp(), digits_data(True), 32 if q else 2601),
             ("digits CNN", digits_cnn(), digits_data(False), 16 if q else 2601),
             ("ResNet-20, synthetic 32x32", CifarResNet(n=3), synthetic_images(32 if q else 1024), 4 if q else 256)]
    t0 = time.perf_counter()
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                              platform.machine())
    cmd = "python benchmarks/gpu.py" + (" --quick" if q else "") + (f" --tile {args.tile}" if args.tile != "rows"
                                                                       else "")
    # the table row by row as each model finishes: a run cut short by a time limit still reports what it measured
    print("\n".join([f"`{cmd}` — {dev} ({device.type}), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
                     f"tiles: {args.tile}", "",
                     "| model | params | samples | points | loop pts/s | vmap pts/s (default rule) | vmap / loop | "
                     "auto pts/s (chose) | chunk | vmap peak GiB | max rel. diff | loss-landscapes pts/s | "
                     "vmap / loss-landscapes | " + " | ".join(f"rule {k} pts/s (chunk)" for k in RULE_COLUMNS)
                     + " | cudnn.benchmark: vmap, affine pts/s |",
                     "|" + "---|" * (13 + len(RULE_COLUMNS) + 1)]), flush=True)
    rows = []
    for name, model, data, points in cases:
        r = bench(core, name, model, data, points, device, args.tile, warm=2 if q else 8)
        rows.append(r)
        ll = f"{r['ll']:.1f} ({r['ll_note']})" if r["ll"] else r["ll_note"]
        ratio = f"{r['vmap'] / r['ll']:.1f}x" if r["ll"] else "—"
        mem = f"{r['mem']:.2f}" if r["mem"] is not None else "—"
        print(f"| {r['model']} | {r['params']:,} | {r['samples']:,} | {r['points']} | {r['loop']:.1f} | "
              f"{r['vmap']:.1f} ({r['rule']}) | {r['vmap'] / r['loop']:.2f}x | {r['auto']:.1f} "
              f"({r['auto_mode']}) | {r['chunk']} | {mem} | {max(r['diff'], r['auto_diff']):.1e} | "
              f"{ll} | {ratio} | " + " | ".join(
                  f"{r['rules'][k][0]:.1f} ({r['rules'][k][1]})" if k in r["rules"] else "—" for k in RULE_COLUMNS)
              + f" | {r['cudnn_bench']['vmap']:.1f}, {r['cudnn_bench']['affine']:.1f} |", flush=True)
        print(f"  {name}: done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    pass_s = resnet56_pass(device, 8 if q else 1000, 1 if q else 10)
    lines = []
    lines += ["", f"ResNet-56 (0.85 M params), one eval pass over 50,000 32x32 images: {pass_s:.2f} s on this device "
                  "(docs/scaling.md multiplies this by 2,601 grid points)."]
    best = {r["model"]: max(((k, v[0]) for k, v in r["rules"].items() if k in ("vmap", "im2col", "affine", "triton")),
                            key=lambda kv: kv[1]) for r in rows}
    lines += ["", "Fastest rule per model (for `chooser.DEFAULT_RULES` and `chooser.MEASURED_RULES`, the rules "
                  "`evaluator=\"vmap\"` and \"auto\" run without "
                  "timing): " + "; ".join(f"{m}: {k} ({v:.1f} pts/s, {v / r['loop']:.2f}x the loop)"
                                          for r in rows for m, (k, v) in [(r["model"], best[r["model"]])])]
    errors = [f"- {r['model']}: rule triton raised {r['triton_error']}" for r in rows if "triton_error" in r]
    errors += [f"- {r['model']}: Triton kernel fell back to cuDNN for layer {k}: {v[:300]}"
               for r in rows for k, v in r.get("triton_fallbacks", {}).items()]
    if errors:
        lines += ["", "Triton rule problems:"] + errors
    if device.type == "cuda":
        lines += ["", "Triton autotuner's choices (C, COUT, HO, WO, KH, KW, dtypes -> config):"] + [
            f"- {k} -> {v}" for k, v in core["gpu.triton"].chosen_configs().items()]
    lines += ["", f"total {time.perf_counter() - t0:.0f} s"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
