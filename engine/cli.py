"""The command line: `python run.py [options]`. See README.md for every option."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from engine.config import Config
from engine.data import CifarLoader, DataError, load_cifar10
from engine.ops import KERNEL_CHOICES, make_ops
from engine.report import (EPOCH_HEADER, device_name, environment, format_epoch_row, format_summary,
                           summarize, write_json)
from engine.train import COMPILE_MODES, Trainer, TrainingDiverged

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULTS = Config()


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="Train the hlb-CIFAR10 speed-run recipe.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="data",
                   help="a torchvision CIFAR-10 root directory, an .npz file (train_images, train_labels, "
                        "test_images, test_labels) or 'synthetic' (default: data)")
    g.add_argument("--data-label", metavar="TEXT",
                   help="how reports name the data, e.g. 'CIFAR-10 (JPEG copy)' (default: from --data)")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data")
    g.add_argument("--synthetic-size", type=positive_int, default=50_000,
                   help="training images of --data synthetic; test images are a fifth (default 50000)")
    g = p.add_argument_group("device and speed")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:N or cpu (default: cuda when present, else cpu)")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="network dtype (default: float16 on CUDA, float32 on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                   help="torch.compile mode (default: default)")
    g.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                   help="elementwise kernels: triton or eager twins (default: triton on CUDA, eager on CPU)")
    g = p.add_argument_group("runs and output")
    g.add_argument("--runs", type=positive_int, default=1, help="independent runs (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first run; run i uses seed+i (default 0)")
    g.add_argument("--json", metavar="PATH", help="write every run and the summary to this JSON file")
    g = p.add_argument_group("recipe overrides (defaults: SPEC.md)")
    g.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs)
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size)
    g.add_argument("--base-width", type=positive_int, default=DEFAULTS.base_width,
                   help="64 in the recipe; smaller widths scale every layer (quick CPU runs)")
    g.add_argument("--lr", type=float, default=DEFAULTS.lr, help="peak lr of the non-bias group")
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    g.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    g.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing)
    g.add_argument("--ema-epochs", type=non_negative_int, default=None,
                   help=f"last epochs run with EMA and at the final lr (default {DEFAULTS.ema_epochs}, "
                        f"at most --epochs - 1)")
    g.add_argument("--ema-decay", type=float, default=DEFAULTS.ema_decay)
    g.add_argument("--cutout", type=non_negative_int, default=DEFAULTS.cutout)
    g.add_argument("--whiten-chunk", type=positive_int, default=DEFAULTS.whiten_chunk,
                   help="images per whitening covariance chunk (lower it if whitening runs out of memory)")
    return p


def resolve_device(parser, name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name}: not a device; use cuda, cuda:N or cpu")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {name}: only cuda and cpu are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    kernels = args.kernels or ("triton" if device.type == "cuda" else "eager")

    try:
        data = load_cifar10(args.data, args.download, args.synthetic_size, seed=args.seed)
    except DataError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    if args.data_label:
        data.source = args.data_label + (" (synthetic)" if data.synthetic else "")
    ema_epochs = args.ema_epochs if args.ema_epochs is not None else min(DEFAULTS.ema_epochs, args.epochs - 1)
    try:
        config = Config(train_images=len(data.train_labels), epochs=args.epochs, batch_size=args.batch_size,
                        base_width=args.base_width, lr=args.lr, weight_decay=args.weight_decay,
                        momentum=args.momentum, label_smoothing=args.label_smoothing,
                        ema_epochs=ema_epochs, ema_decay=args.ema_decay, cutout=args.cutout,
                        whiten_chunk=args.whiten_chunk)
    except ValueError as error:
        parser.error(str(error))

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    trainer = Trainer(config, make_ops(kernels), device, dtype,
                      compile=args.compile, compile_mode=args.compile_mode)
    train = CifarLoader(data.train_images, data.train_labels, config, True, device, dtype)
    test = CifarLoader(data.test_images, data.test_labels, config, False, device, dtype)

    name = device_name(device)
    print(f"data: {data.source} | device: {name} | dtype: {str(dtype).removeprefix('torch.')} | "
          f"kernels: {kernels} | compile: {args.compile_mode if args.compile else 'off'} | "
          f"{config.total_steps} steps of {config.batch_size}")
    warmup_seconds = trainer.warm_up(train, test) if (device.type == "cuda" or args.compile) else 0.0
    if warmup_seconds:
        print(f"warm-up{' and compilation' if args.compile else ''}: {warmup_seconds:.1f} s (not counted in run times)")

    runs, interrupted = [], False
    try:
        for index in range(args.runs):
            seed = args.seed + index
            print(f"\nrun {index + 1}/{args.runs} (seed {seed})\n{EPOCH_HEADER}")
            try:
                result = trainer.run(train, test, seed, on_epoch=lambda row: print(format_epoch_row(row), flush=True))
            except TrainingDiverged as error:
                print(f"run {index + 1} failed: {error}; going on with the next run", file=sys.stderr)
                runs.append({"seed": seed, "status": "failed", "error": str(error)})
                continue
            runs.append(result.to_dict())
            print(f"final: EMA accuracy {100 * result.ema_accuracy:.2f}%, accuracy {100 * result.accuracy:.2f}%, "
                  f"{result.train_seconds:.3f} s training, {result.total_seconds:.3f} s in all")
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: summarising the {len(runs)} run(s) that finished", file=sys.stderr)

    summary = summarize(runs)
    print("\n" + format_summary(summary, data.source, name))
    if args.json:
        payload = {
            "runs": runs, "summary": summary, "interrupted": interrupted,
            "data_source": data.source, "synthetic": data.synthetic,
            "dtype": str(dtype).removeprefix("torch."), "kernels": kernels,
            "compile": args.compile, "compile_mode": args.compile_mode if args.compile else None,
            "compile_seconds": trainer.compile_seconds, "warmup_seconds": warmup_seconds,
            "config": config.to_dict(), **environment(device),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    return 130 if interrupted else 0
