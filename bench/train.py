#!/usr/bin/env python3
"""Whole-run benchmark: the engine's variants in one process on one device.

    python bench/train.py --data /tmp/cifar10.npz --data-label "CIFAR-10 (JPEG copy)" --runs 10
    python bench/train.py --recipe airbench94-muon --variants eager,compile+triton --data ...

One recipe per call (--recipe, default seed).

Variants: eager (eager network, eager kernel twins), compile (torch.compile,
eager twins), compile+triton (torch.compile, the Triton kernels): the default
set; compile+cudagraphs and compile+triton+cudagraphs are the last two with
compile mode reduce-overhead (CUDA graphs). Each is warmed up (and compiled)
first; then the kernel launches of one training step are counted and checked
against the variant's name (bench/kernel_launches.py: a variant that does not run
what its name says fails there, before its timed runs); then it is trained
--runs times with seeds --seed.. . Per variant it prints mean
and std of the reported accuracy (the EMA network's, for the seed recipes), the
share of runs >= 94%, seconds per run in both timing conventions, the speed-up
over the eager variant (None for a variant that finishes before eager), achieved
TFLOP/s (counted with torch.utils.flop_counter) and peak GPU memory. As each
variant ends, --json is rewritten ("partial": true until the last), one row is
appended to bench/results/train.csv (--csv) and a "row ..." line is printed, so a
time limit loses only the variant it cuts. A variant that fails
(a compile error, say) is reported as FAILED and the others go on.

--profile-steps K: after a variant's timed runs, the same trainer trains once
more under torch.profiler (bench/profile_steps.py), stopped after a K-step window
early in epoch 2; not counted in the statistics. Per variant: host and wall
ms/step, GPU kernel ms/step, kernels and launch calls per step, the top kernels
and host ops; --trace-dir also keeps a gzip'd Chrome trace of the window.
"""
from __future__ import annotations

import argparse
import csv
import gc
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:   # after the root: bench/kernels.py
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # must not shadow the kernels package

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from engine.training.data import CifarLoader, DataError, load_cifar10  # noqa: E402
from engine.training.ops import make_ops  # noqa: E402
from engine.recipes import DEFAULT_RECIPE, RECIPES, make_config  # noqa: E402
from engine.results.report import environment, summarize, write_json  # noqa: E402
from engine.training.train import COMPILE_MODES, Trainer  # noqa: E402
from kernel_launches import VariantMismatch, check as check_launches, count_launches, format_counts  # noqa: E402
from profile_steps import fmt_or_dash, format_detail, format_line, profile_run  # noqa: E402

VARIANTS = {                      # name: (compile, kernels, compile mode; None: --compile-mode)
    "eager": (False, "eager", None),
    "compile": (True, "eager", None),
    "compile+triton": (True, "triton", None),
    "compile+cudagraphs": (True, "eager", "reduce-overhead"),
    "compile+triton+cudagraphs": (True, "triton", "reduce-overhead"),
}
DEFAULT_VARIANTS = ("eager", "compile", "compile+triton")
# For dry runs of bench/device_check.sh: after this many variants (the env value, a whole
# number) the process kills itself (SIGKILL), as a stage limit does, deterministically.
KILL_AFTER_VARIANTS = "BENCH_TRAIN_KILL_AFTER_VARIANTS"
RESULTS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train.csv")
CSV_COLUMNS = ("gpu", "date", "commit", "torch", "triton", "data", "recipe", "variant", "compile_mode", "runs",
               "mean_ema_accuracy", "std_ema_accuracy", "share_at_or_above_94", "mean_train_seconds",
               "mean_total_seconds", "speedup_total", "tflops", "peak_memory_gib", "compile_seconds")


def flops_per_run(config, device, dtype, test_images: int) -> dict:
    """FLOPs of one run of the recipe (torch.utils.flop_counter): per training step (forward +
    backward), per test image of the final evaluation (every test-time view), and per run."""
    model = config.build_network(make_ops("eager"), device, dtype)
    images = torch.randn(config.batch_size, 3, 32, 32, device=device, dtype=dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (config.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter:
        config.loss(model(images), labels).backward()
    step = counter.get_total_flops()
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        config.evaluation_views(final=True)(model, images)
    evaluation_per_image = counter.get_total_flops() / config.batch_size
    return {"step": step, "evaluation_per_image": evaluation_per_image,
            "run": step * config.total_steps + evaluation_per_image * test_images}


def compile_mode_of(name: str, default_mode: str) -> str:
    """The compile mode a variant really uses ("off" when it is not compiled)."""
    compile, _, mode = VARIANTS[name]
    return (mode or default_mode) if compile else "off"


def prepare_variant(name, args, config, train, test, device, dtype):
    """The variant's Trainer, warmed up (and compiled), and the launches of one of its
    training steps, checked against its name (VariantMismatch when they do not fit).
    Returns (trainer, warm-up seconds, launches)."""
    compile, kernels, _ = VARIANTS[name]
    mode = compile_mode_of(name, args.compile_mode)
    if compile:
        import torch._dynamo
        torch._dynamo.reset()     # each variant compiles afresh (and never hits the recompile limit)
    trainer = Trainer(config, make_ops(kernels), device, dtype, compile=compile,
                      compile_mode=mode if compile else args.compile_mode)
    start = time.perf_counter()
    warmup = trainer.warm_up(train, test)
    print(f"[{name}] warm-up{f' + compile ({mode})' if compile else ''}: {warmup:.1f} s "
          f"(wall {time.perf_counter() - start:.1f} s)", flush=True)
    launches = count_launches(trainer, train, test, args.seed)     # before the timed runs: a variant
    launches["note"] = note = check_launches(name, launches)        # that is not what it says fails now
    print(f"[{name}] launches: {format_counts(launches)}{f' ({note})' if note else ''}", flush=True)
    return trainer, warmup, launches


def bench_variant(name, args, config, train, test, device, dtype, flops, runs: list) -> dict:
    """prepare_variant, --runs timed runs (appended to `runs` as they finish) and the optional
    profiling run of one variant; exceptions propagate to the caller."""
    _, kernels, _ = VARIANTS[name]
    mode = compile_mode_of(name, args.compile_mode)
    trainer, warmup, launches = prepare_variant(name, args, config, train, test, device, dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index in range(args.runs):
        result = trainer.run(train, test, args.seed + index, evaluate_every_epoch=False)
        runs.append(result.to_dict())
        print(f"[{name}] run {index + 1}/{args.runs}: accuracy {100 * result.ema_accuracy:.2f}%  "
              f"{result.train_seconds:.3f} s training  {result.total_seconds:.3f} s in all", flush=True)
    summary = summarize(runs)
    summary.update(
        compile_seconds=trainer.compile_seconds, warmup_seconds=warmup,
        tflops=flops / summary["mean_total_seconds"] / 1e12,
        peak_memory_gib=(torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None))
    entry = {"compile_mode": mode, "kernels": kernels, "launches": launches, "summary": summary, "runs": runs}
    if args.profile_steps:
        trace = (os.path.join(args.trace_dir, f"trace_{args.recipe}_{name.replace('+', '_')}.json.gz")
                 if args.trace_dir else None)
        try:
            entry["profile"] = profile_run(trainer, train, test, args.seed, args.profile_steps, trace,
                                           args.trace_max_mb)
            print(f"[{name}] {format_line(name, entry['profile'])}; {entry['profile']['seconds']:.1f} s",
                  flush=True)
        except Exception as error:   # the timed figures stand without it
            entry["profile"] = failure(error)
            print(f"[{name}] profiling FAILED: {entry['profile']['error']}\n{entry['profile']['traceback']}",
                  flush=True)
    return entry


def failure(error: Exception) -> dict:
    """What the JSON records of an exception being handled: `error` ("Type: first line")
    and the `traceback`."""
    first = (str(error).strip().splitlines() or [""])[0]
    return {"error": f"{type(error).__name__}: {first}", "traceback": traceback.format_exc()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=RECIPES, default=DEFAULT_RECIPE, help=f"(default {DEFAULT_RECIPE})")
    p.add_argument("--data", default="synthetic", help="as run.py --data (default synthetic)")
    p.add_argument("--data-label", help="how reports name the data, e.g. 'CIFAR-10 (JPEG copy)'")
    p.add_argument("--synthetic-size", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=5, help="runs per variant (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="compile mode of the variants that do not fix their own (default 'default')")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, help="(default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    p.add_argument("--base-width", type=int, help="(default: the recipe's)")
    p.add_argument("--profile-steps", type=int, default=0, metavar="K",
                   help="after the timed runs, profile K steps of one more run per variant (default 0: off)")
    p.add_argument("--trace-dir", help="with --profile-steps: keep a gzip'd Chrome trace per variant here")
    p.add_argument("--trace-max-mb", type=float, default=15.0, help="drop a trace larger than this (default 15)")
    p.add_argument("--json", help="write all figures here")
    p.add_argument("--csv", default=RESULTS_CSV, help="append rows here (default bench/results/train.csv); '' for none")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        p.error(f"unknown variant(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.profile_steps < 0:
        p.error("--profile-steps must be 0 (off) or more")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; use --device cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    try:
        data = load_cifar10(args.data, synthetic_size=args.synthetic_size, seed=args.seed)
    except DataError as error:
        print(f"bench/train.py: error: {error}", file=sys.stderr)
        return 2
    data_source = (args.data_label or data.source) + (" (synthetic)" if data.synthetic and args.data_label else "")
    overrides = {name: value for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                                 ("base_width", args.base_width)) if value is not None}
    try:
        config = make_config(args.recipe, train_images=len(data.train_labels), **overrides)
    except ValueError as error:
        p.error(str(error))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train = CifarLoader(data.train_images, data.train_labels, config, True, device, dtype)
    test = CifarLoader(data.test_images, data.test_labels, config, False, device, dtype)
    counted = flops_per_run(config, device, dtype, len(data.test_labels))
    flops = counted["run"]
    env = environment(device)
    print(f"recipe: {args.recipe} | device: {env['device']} | torch {env['torch']} | triton {env['triton']} | "
          f"data: {data_source} | {args.runs} runs per variant | {flops / 1e12:.1f} TFLOP per run "
          f"({counted['step'] / 1e9:.0f} GFLOP per step of {config.batch_size})", flush=True)

    date = time.strftime("%Y-%m-%d")
    payload = {"recipe": args.recipe, "variants": {}, "partial": True, "data_source": data_source,
               "runs_per_variant": args.runs, "flops_per_run": flops, "flops_per_step": counted["step"],
               "compile_mode": args.compile_mode, "profile_steps": args.profile_steps,
               "config": config.to_dict(), "date": date, **env}
    results = payload["variants"]
    rows = 0
    for name in variants:      # each variant's JSON and CSV row are written as soon as it ends
        runs = []
        try:
            results[name] = bench_variant(name, args, config, train, test, device, dtype, flops, runs)
        except Exception as error:    # a failed variant (a compile error, say) must not stop the others
            results[name] = {"compile_mode": compile_mode_of(name, args.compile_mode), "kernels": VARIANTS[name][1],
                             **failure(error), "runs": runs}
            if isinstance(error, VariantMismatch):
                results[name]["launches"] = error.launches
            print(f"[{name}] FAILED: {results[name]['error']}\n{results[name]['traceback']}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "summary" in results[name]:
            compare_with_eager(results[name]["summary"], results.get("eager", {}).get("summary"))
            if args.csv:
                append_csv_row(args.csv, csv_row(payload, name))
                rows += 1
        if args.json:     # after every variant: a time limit never loses a finished variant
            write_json(args.json, payload)
        print(row_line(args.recipe, name, results[name]), flush=True)
        if "profile" in results[name]:
            print(format_line(f"{args.recipe}/{name}", results[name]["profile"]), flush=True)
        rows_then_kill = os.environ.get(KILL_AFTER_VARIANTS, "")
        if rows_then_kill.isdigit() and len(results) == int(rows_then_kill) < len(variants):
            os.kill(os.getpid(), signal.SIGKILL)     # a dry run's stand-in for a stage's time limit

    finished = {name: entry for name, entry in results.items() if "summary" in entry}
    width = max(15, *(len(name) for name in results))
    print(f"\nbench/train.py on {env['device']}, {date}, commit {env['git_commit']}, torch {env['torch']}, "
          f"triton {env['triton']}, recipe: {args.recipe}, data: {data_source}")
    print(f"{'variant':<{width}} {'mode':<15} {'runs':>4} {'accuracy':>8} {'std':>6} {'vs eager':>8} {'>=94%':>6} "
          f"{'train s':>8} {'total s':>8} {'speed-up':>8} {'TFLOP/s':>8} {'peak GiB':>8} {'compile s':>9}")
    for name, entry in results.items():
        if "summary" not in entry:
            print(f"{name:<{width}} {entry['compile_mode']:<15} FAILED: {entry['error']}")
            continue
        s = entry["summary"]
        delta = s["ema_accuracy_minus_eager"]
        delta = fmt_or_dash(None if delta is None else 100 * delta, "+.2f", "pt")
        print(f"{name:<{width}} {entry['compile_mode']:<15} {s['runs']:>4} {100 * s['mean_ema_accuracy']:>7.2f}% "
              f"{100 * s['std_ema_accuracy']:>5.2f}% {delta:>8} "
              f"{100 * s['share_at_or_above_94']:>5.0f}% "
              f"{s['mean_train_seconds']:>8.3f} {s['mean_total_seconds']:>8.3f} "
              f"{fmt_or_dash(s['speedup_total'], '>7.2f')}x {s['tflops']:>8.1f} "
              f"{fmt_or_dash(s['peak_memory_gib'], '>8.2f')} "
              f"{fmt_or_dash(s['compile_seconds'], '>9.1f')}")
    profiled = {name: entry["profile"] for name, entry in results.items() if "profile" in entry}
    if profiled:
        print("\nprofiled window per variant (ms per training step; host: the CPU's time to issue the steps, "
              "wall: until the GPU is done; unprofiled: the same count of steps just before, no profiler)")
        for name, profile in profiled.items():
            print(format_line(f"{args.recipe}/{name}", profile))
        for name, profile in profiled.items():
            detail = format_detail(name, profile)
            if detail:
                print(detail)

    del payload["partial"]
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if rows:
        print(f"appended {rows} row(s) to {args.csv}")
    return 1 if len(finished) < len(results) else 0


def compare_with_eager(summary: dict, eager: dict | None):
    """A finished variant's speed-ups and accuracy difference against the eager variant's
    summary (None: eager has not finished, e.g. it comes later or failed)."""
    summary["speedup_total"] = eager["mean_total_seconds"] / summary["mean_total_seconds"] if eager else None
    summary["speedup_train"] = eager["mean_train_seconds"] / summary["mean_train_seconds"] if eager else None
    summary["ema_accuracy_minus_eager"] = summary["mean_ema_accuracy"] - eager["mean_ema_accuracy"] if eager else None


def row_line(recipe: str, name: str, entry: dict) -> str:
    """The line printed as a variant ends, after its JSON and CSV row are written
    (bench/device_check.sh builds its summary from these lines)."""
    if "summary" not in entry:
        return f"row {recipe}/{name}: FAILED: {entry['error']}"
    s = entry["summary"]
    return (f"row {recipe}/{name}: {entry['compile_mode']}, {s['runs']} runs, accuracy {100 * s['mean_ema_accuracy']:.2f}% "
            f"(std {100 * s['std_ema_accuracy']:.2f}%), {s['mean_train_seconds']:.3f} s training, "
            f"{s['mean_total_seconds']:.3f} s in all, speed-up {fmt_or_dash(s['speedup_total'], '.2f', 'x')}, "
            f"compile {fmt_or_dash(s['compile_seconds'], '.1f', ' s')}; {format_counts(entry['launches'])}")


def csv_row(payload: dict, name: str) -> list:
    """The CSV row (CSV_COLUMNS) of the finished variant `name` of the JSON `payload`."""
    entry = payload["variants"][name]
    s = entry["summary"]
    return [payload["device"], payload["date"], payload["git_commit"], payload["torch"], payload["triton"],
            payload["data_source"], payload["recipe"], name, entry["compile_mode"], s["runs"],
            s["mean_ema_accuracy"], s["std_ema_accuracy"], s["share_at_or_above_94"], s["mean_train_seconds"],
            s["mean_total_seconds"], s["speedup_total"], s["tflops"], s["peak_memory_gib"], s["compile_seconds"]]


def append_csv_row(path: str, row: list):
    """Append one row to the CSV at `path` (its header first when the file is new), flushed
    to the file at once."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as file:
        writer = csv.writer(file)
        if new:
            writer.writerow(CSV_COLUMNS)
        writer.writerow(row)


if __name__ == "__main__":
    sys.exit(main())
