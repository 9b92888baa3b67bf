"""Benchmark of the Triton kernels against their eager twins and torch.compile of the twins.

For each operation at the recipe's real shapes (batch 512, float16, channels_last):
forward, backward and both. Two times per pass, both medians with L2 flushed before
every run:
  ms       GPU time: the summed durations of the pass's kernels, read from the
           CUDA profiler (launch gaps excluded). GB/s and the copy share use this.
  wall_ms  triton.testing.do_bench: CUDA events around one call, so host-side
           launch overhead shows wherever it exceeds the kernels' time. (Measured on
           an H200: for these 5-100 us passes it did, for every backend: a custom op's
           Python dispatch and autograd cost more than its kernels.)
Achieved GB/s is over the fewest bytes the pass must move (each input read once,
each output written once); the copy share divides it by the card's measured
device-to-device copy bandwidth. Rows are appended to bench/results/kernels.csv,
keyed by GPU name, date and commit.

    python bench/kernels.py [--csv PATH] [--only gelu,affine_gelu,...] [--no-compile] [--sweep]

--sweep instead times the Triton path alone under other launch sizes (the module
constants below, one changed at a time) to tune for a new card; it writes no rows.

Without a CUDA GPU it says so and exits (status 0): interpreter timings mean nothing.
"""
import argparse
import csv
import datetime
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FIELDS = ["gpu", "date", "commit", "torch", "triton", "op", "shape", "dtype", "layout", "backend", "pass",
          "ms", "gbps", "copy_share", "copy_gbps", "wall_ms"]


@dataclass
class Case:
    op: str
    shape: tuple
    make: Callable            # () -> list of inputs (differentiable ones require grad)
    bytes_fwd: int
    bytes_bwd: int = 0        # 0: forward only
    dtype: torch.dtype = torch.float16
    layout: str = "channels_last"


def _rand(shape, dtype, cl=True, grad=True, scale=1.0):
    t = (torch.randn(shape, device="cuda") * scale).to(dtype)
    if cl and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def batch_norm_gelu_output(fn, eps=1e-12):
    """fn(x, weight, bias[, residual, gate]) -> its output alone (the statistics are for the
    running averages), at the seed recipe's eps."""
    def output(x, weight, bias, residual=None, gate=None, **backend):
        return fn(x, weight, bias, eps, residual, gate, **backend)[0]
    return output


def pool_batch_norm_gelu_output(fn, eps=1e-12):
    """fn(x, weight, bias) -> its output alone, at the seed recipe's eps."""
    def output(x, weight, bias, **backend):
        return fn(x, weight, bias, eps, **backend)[0]
    return output


def cases(dt=torch.float16):
    import kernels
    e = torch.empty((), dtype=dt).element_size()
    out = []
    # gelu: the stem's map, the largest activation of the network
    s = (512, 32, 31, 31)
    n = 512 * 32 * 31 * 31
    out.append(Case("gelu", s, lambda s=s: [_rand(s, dt)], 2 * n * e, 3 * n * e))
    # affine_gelu after every conv: stem, group1 (with residual), group2, group3 (with residual)
    for s, res in (((512, 32, 31, 31), False), ((512, 128, 15, 15), True),
                   ((512, 256, 7, 7), False), ((512, 512, 3, 3), True)):
        n, c = s[0] * s[1] * s[2] * s[3], s[1]

        def make(s=s, c=c, res=res):
            ins = [_rand(s, dt), _rand((c,), torch.float32, scale=0.2) + 1.0, _rand((c,), torch.float32, scale=0.1)]
            ins[1] = ins[1].detach().requires_grad_()
            return ins + [_rand(s, dt) if res else None]
        out.append(Case("affine_gelu" + ("+res" if res else ""), s, make,
                        (3 if res else 2) * n * e, 3 * n * e))
    # batch_norm_gelu, the training step's BatchNorm + GELU: stem, group1 (its last with the
    # residual and the SE gate), group2, group3 (likewise). Forward: the statistics read x,
    # the apply reads x (and the residual) and writes y; backward: the sums read x and dy,
    # dx reads both and writes dx.
    for s, last in (((512, 32, 31, 31), False), ((512, 128, 15, 15), False), ((512, 128, 15, 15), True),
                    ((512, 256, 7, 7), False), ((512, 512, 3, 3), True)):
        n, c = s[0] * s[1] * s[2] * s[3], s[1]

        def make(s=s, c=c, last=last):
            weight = torch.ones(c, device="cuda")
            bias = _rand((c,), torch.float32, scale=0.1)
            return [_rand(s, dt), weight, bias] + ([_rand(s, dt), _rand(s[:2], dt, scale=0.1) + 1.0] if last else [])
        out.append(Case("batch_norm_gelu" + ("+res+gate" if last else ""), s, make,
                        (4 if last else 3) * n * e, 5 * n * e))
    # pool_batch_norm_gelu, after each group's first convolution: the 2x2 max-pool, then
    # BatchNorm + GELU. Forward: x read once, the pooled map, its winners (1 byte each) and
    # y written; backward: the sums read the pooled map and dy, pass 2 reads both and the
    # winners and writes dx at x's size.
    for s in ((512, 128, 31, 31), (512, 256, 15, 15), (512, 512, 7, 7)):
        n_in, c = s[0] * s[1] * s[2] * s[3], s[1]
        n_out = s[0] * s[1] * (s[2] // 2) * (s[3] // 2)

        def make(s=s, c=c):
            return [_rand(s, dt), torch.ones(c, device="cuda"), _rand((c,), torch.float32, scale=0.1)]
        out.append(Case("pool_batch_norm_gelu", s, make, n_in * e + 2 * n_out * e + n_out,
                        4 * n_out * e + n_out + n_in * e))
    # squeeze_excite in group1 and group3
    for s, ch in (((512, 128, 15, 15), 8), ((512, 512, 3, 3), 32)):
        n, c = s[0] * s[1] * s[2] * s[3], s[1]

        def make(s=s, c=c, ch=ch):
            return [_rand(s, dt), _rand((ch, c), dt, scale=c ** -0.5), _rand((ch,), dt),
                    _rand((c, ch), dt, scale=ch ** -0.5), _rand((c,), dt)]
        w = 2 * c * ch * e
        out.append(Case("squeeze_excite", s + (ch,), make, n * e + s[0] * c * (e + 4) + w,
                        n * e + s[0] * c * (e + 4) + 2 * w))
    # channel_scale where the SE gate is applied
    for s in ((512, 128, 15, 15), (512, 512, 3, 3)):
        n = s[0] * s[1] * s[2] * s[3]
        out.append(Case("channel_scale", s, lambda s=s: [_rand(s, dt), _rand(s[:2], dt)],
                        2 * n * e + s[0] * s[1] * e, 3 * n * e + 2 * s[0] * s[1] * e))
    # patch_covariance: the whitening statistics, 5,000 images a call (the release's chunk)
    for pdt in (torch.float16, torch.float32):
        s = (5000, 3, 32, 32)
        n = 5000 * 3 * 32 * 32
        out.append(Case("patch_covariance", s, lambda s=s, pdt=pdt: [_rand(s, pdt, cl=False, grad=False)],
                        n * torch.empty((), dtype=pdt).element_size(), dtype=pdt, layout="contiguous"))
    fns = {"gelu": (kernels.gelu, kernels.gelu_eager),
           "affine_gelu": (kernels.affine_gelu, kernels.affine_gelu_eager),
           "batch_norm_gelu": (batch_norm_gelu_output(kernels.batch_norm_gelu),
                               batch_norm_gelu_output(kernels.batch_norm_gelu_eager)),
           "pool_batch_norm_gelu": (pool_batch_norm_gelu_output(kernels.pool_batch_norm_gelu),
                                    pool_batch_norm_gelu_output(kernels.pool_batch_norm_gelu_eager)),
           "squeeze_excite": (kernels.squeeze_excite, kernels.squeeze_excite_eager),
           "channel_scale": (kernels.channel_scale, kernels.channel_scale_eager),
           "patch_covariance": (kernels.patch_covariance, kernels.patch_covariance_eager)}
    return out, fns


# Launch-size constants tried by --sweep, one at a time from the defaults.
SWEEP = {
    "gelu": ("kernels.gelu", {"BLOCK": [1024, 4096], "NUM_WARPS": [8]}),
    "affine_gelu": ("kernels.affine_gelu", {"FWD_TILE": [1024, 4096], "FWD_WARPS": [8],
                                            "BWD_TILE": [2048, 8192], "BWD_WARPS": [4],
                                            "BWD_PER_SM": [1, 4, 8]}),
    "squeeze_excite": ("kernels.squeeze_excite", {"LOAD_TILE": [1024, 4096], "NUM_WARPS": [8]}),
    "batch_norm_gelu": ("kernels.affine_gelu", {"FWD_TILE": [1024, 4096], "BWD_TILE": [2048, 8192],
                                                "BWD_PER_SM": [1, 4, 8]}),
    "pool_batch_norm_gelu": ("kernels.pool_batch_norm_gelu", {"FWD_TILE": [1024, 4096], "BWD_PER_SM": [1, 4, 8]}),
    "channel_scale": ("kernels.channel_scale", {"FWD_TILE": [1024, 4096], "FWD_WARPS": [8],
                                                "BWD_TILE": [2048, 8192], "BWD_WARPS": [4]}),
    "patch_covariance": ("kernels.patch_covariance", {"TILE_HALF": [2048, 8192], "WARPS_HALF": [4],
                                                      "TILE_F32": [512, 2048], "WARPS_F32": [8],
                                                      "PER_SM": [2, 8]}),
}


def sweep(all_cases, fns, only):
    import importlib

    print(f"GPU time (ms) of the Triton path\n{'op':<18}{'shape':<24}{'setting':<22}{'fwd ms':>9}{'fwd+bwd ms':>12}")
    for case in all_cases:
        base = case.op.split("+")[0]
        if only and base not in only:
            continue
        mod_name, grid = SWEEP[base]
        mod = importlib.import_module(mod_name)
        op = fns[base][0]
        inputs = case.make()
        diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        settings = [("default", None, None)] + [(f"{k}={v}", k, v) for k, vs in grid.items() for v in vs]
        for label, attr, value in settings:
            old = getattr(mod, attr) if attr else None
            if attr:
                setattr(mod, attr, value)
            try:
                with torch.no_grad():
                    fwd = device_ms(lambda: op(*inputs, backend="triton"))
                full = float("nan")
                if case.bytes_bwd:
                    g = torch.randn_like(op(*inputs, backend="triton"))
                    full = device_ms(lambda: torch.autograd.grad(op(*inputs, backend="triton"), diff, g))
                print(f"{case.op:<18}{str(case.shape):<24}{label:<22}{fwd:>9.4f}{full:>12.4f}", flush=True)
            except Exception as exc:       # a setting the kernel cannot take
                print(f"{case.op:<18}{str(case.shape):<24}{label:<22} failed: {type(exc).__name__}: {exc}"[:200])
            finally:
                if attr:
                    setattr(mod, attr, old)


_FLUSH = {}


def _flush():
    """A 256 MiB buffer whose in-place bitwise_not evicts L2, and that kernel's names
    (found by profiling it alone), so that they can be told apart from the pass's own."""
    if not _FLUSH:
        from torch.profiler import ProfilerActivity, profile
        buf = torch.zeros(2 ** 28, dtype=torch.uint8, device="cuda")
        buf.bitwise_not_()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            buf.bitwise_not_()
            torch.cuda.synchronize()
        _FLUSH["buf"] = buf
        _FLUSH["names"] = {e.name for e in _kernel_events(prof)}
    return _FLUSH["buf"], _FLUSH["names"]


def _kernel_events(prof):
    return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def device_ms(fn, iters=20, warmup=3):
    """Median over runs of the summed GPU durations of fn's kernels (L2 flushed first)."""
    import statistics

    from torch.profiler import ProfilerActivity, profile
    buf, flush_names = _flush()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            buf.bitwise_not_()
            fn()
        torch.cuda.synchronize()
    runs, cur = [], None
    for e in sorted(_kernel_events(prof), key=lambda e: e.time_range.start):
        if e.name in flush_names:
            if cur is not None:
                runs.append(cur)
            cur = 0.0
        elif cur is not None:
            cur += e.time_range.end - e.time_range.start
    if cur is not None:
        runs.append(cur)
    if len(runs) != iters:
        raise RuntimeError(f"profiler gave {len(runs)} runs for {iters}: cannot split the trace")
    return statistics.median(runs) / 1000.0


def copy_bandwidth():
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    from triton.testing import do_bench
    src = torch.randn(2 ** 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def _commit():
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels", "bench"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_case(case, fns, use_compile):
    """{(backend, pass): (device ms, wall ms)}."""
    from triton.testing import do_bench
    base = case.op.split("+")[0]
    op, twin = fns[base]
    variants = {"triton": lambda *a: op(*a, backend="triton"), "eager": twin}
    if use_compile:
        try:        # a compiled backward with donated buffers refuses retain_graph=True
            import torch._functorch.config as functorch_config
            functorch_config.donated_buffer = False
        except (ImportError, AttributeError):
            pass
        torch._dynamo.reset()
        variants["compile"] = torch.compile(twin, fullgraph=True)
    inputs = case.make()
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    results = {}

    def both(fn):
        try:
            dev = device_ms(fn)
        except RuntimeError as exc:          # the profiler trace could not be split
            print(f"  {case.op}: no GPU time ({str(exc)[:80]})")
            dev = float("nan")
        return dev, do_bench(fn, warmup=25, rep=100, return_mode="median")

    for name, f in variants.items():
        if not case.bytes_bwd:
            with torch.no_grad():
                results[(name, "fwd")] = both(lambda: f(*inputs))
            continue
        y = f(*inputs)
        g = torch.randn_like(y)
        results[(name, "fwd")] = both(lambda: f(*inputs))
        # (a compiled backward may not be run twice on one graph; a fresh forward each
        # time would add its kernels, so the backward alone is timed on retained graphs
        # only where that works, else left out)
        try:
            results[(name, "bwd")] = both(lambda: torch.autograd.grad(y, diff, g, retain_graph=True))
        except RuntimeError as exc:
            print(f"  {case.op} {name} bwd alone not timed: {str(exc)[:100]}")
        results[(name, "full")] = both(lambda: torch.autograd.grad(f(*inputs), diff, g))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=os.path.join(ROOT, "bench", "results", "kernels.csv"))
    ap.add_argument("--only", default="", help="comma-separated op names")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the twins")
    ap.add_argument("--sweep", action="store_true", help="time launch-size variants of the Triton path only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA GPU here; nothing measured (timings under the "
              "Triton interpreter mean nothing).")
        return 0
    import triton
    all_cases, fns = cases()
    only = set(filter(None, args.only.split(",")))
    if args.sweep:
        sweep(all_cases, fns, only)
        return 0
    gpu = torch.cuda.get_device_name()
    copy = copy_bandwidth()
    print(f"{gpu}: copy bandwidth {copy:.0f} GB/s (read + write)")
    meta = dict(gpu=gpu, date=datetime.date.today().isoformat(), commit=_commit(),
                torch=torch.__version__, triton=triton.__version__)
    rows = []
    hdr = f"{'op':<18}{'shape':<24}{'pass':<6}" + "".join(f"{b + ' ms':>11}{'GB/s':>7}{'%copy':>6}"
                                                          for b in ("triton", "eager", "compile"))
    print("GPU time (kernel durations summed, L2 flushed), medians")
    print(hdr)
    for case in all_cases:
        if only and case.op.split("+")[0] not in only:
            continue
        res = run_case(case, fns, not args.no_compile)
        for p in ("fwd", "bwd", "full"):
            nbytes = {"fwd": case.bytes_fwd, "bwd": case.bytes_bwd,
                      "full": case.bytes_fwd + case.bytes_bwd}[p]
            line = f"{case.op:<18}{str(case.shape):<24}{p:<6}"
            for backend in ("triton", "eager", "compile"):
                if (backend, p) not in res:
                    line += f"{'-':>11}{'':>7}{'':>6}"
                    continue
                ms, wall = res[(backend, p)]
                gbps = nbytes / ms / 1e6
                rows.append(dict(meta, op=case.op, shape="x".join(map(str, case.shape)),
                                 dtype=str(case.dtype).replace("torch.", ""), layout=case.layout,
                                 backend=backend, **{"pass": p}, ms=f"{ms:.5f}", gbps=f"{gbps:.1f}",
                                 copy_share=f"{gbps / copy:.3f}", copy_gbps=f"{copy:.0f}",
                                 wall_ms=f"{wall:.5f}"))
                line += f"{ms:>11.4f}{gbps:>7.0f}{100 * gbps / copy:>5.0f}%"
            if any((b, p) in res for b in ("triton", "eager", "compile")):
                print(line, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
    with open(args.csv, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
