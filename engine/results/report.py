"""Reporting: the per-epoch table, the summary over runs, and the JSON file."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess

import torch

from engine.outputs import atomic_write
from engine.results.student_t import t_cdf, t_quantile

TARGET_ACCURACY = 0.94
EPOCH_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "ema_val_accuracy", "seconds")
EPOCH_HEADER = f"{'epoch':>5} {'train loss':>10} {'train acc':>9} {'val acc':>8} {'ema val acc':>11} {'seconds':>8}"


def format_epoch_row(row: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}%"
    return (f"{row['epoch']:>5} {row['train_loss']:>10.4f} {pct(row['train_accuracy']):>9} "
            f"{pct(row['val_accuracy']):>8} {pct(row['ema_val_accuracy']):>11} {row['seconds']:>8.2f}")


def _stats(values: list) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def mean_above_target(values: list, target: float = TARGET_ACCURACY) -> tuple:
    """(95% confidence interval of the mean [low, high], one-sided t-test p-value for
    "the mean is above `target`"), the way 94% claims are stated; (None, None) below two
    values, which have no spread to estimate. With zero spread the interval is the mean
    itself and p is 0 (mean above target) or 1. Accuracies lie in [0, 1], so the interval
    is cut to [0, 1] (still a 95% interval: the true mean cannot lie outside)."""
    if len(values) < 2:
        return None, None
    mean, error = statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5
    half_width = t_quantile(0.975, len(values) - 1) * error
    if error == 0:
        p_value = 0.0 if mean > target else 1.0
    else:
        p_value = t_cdf(-(mean - target) / error, len(values) - 1)    # P(T >= t)
    return [max(mean - half_width, 0.0), min(mean + half_width, 1.0)], p_value


def summarize(runs: list[dict]) -> dict:
    """Mean, std, min and max of the final EMA accuracy over the finished runs, the mean's
    95% confidence interval and the p-value of "mean > 94%", the share at or above 94%,
    and seconds per run under both timing conventions."""
    finished = [run for run in runs if run.get("status", "ok") == "ok"]
    accuracies = [run["ema_accuracy"] for run in finished]
    ema, train, total = (_stats(accuracies), _stats([r["train_seconds"] for r in finished]),
                         _stats([r["total_seconds"] for r in finished]))
    interval, p_value = mean_above_target(accuracies)
    return {
        "runs": len(finished),
        "failed_runs": len(runs) - len(finished),
        "learned_nothing_runs": sum(bool(run.get("learned_nothing")) for run in finished),
        "mean_ema_accuracy": ema["mean"], "std_ema_accuracy": ema["std"],
        "min_ema_accuracy": ema["min"], "max_ema_accuracy": ema["max"],
        "ema_accuracy_ci95": interval, "p_value_mean_above_94": p_value,
        "share_at_or_above_94": (sum(a >= TARGET_ACCURACY for a in accuracies) / len(accuracies)
                                 if accuracies else None),
        "mean_train_seconds": train["mean"], "std_train_seconds": train["std"],
        "mean_total_seconds": total["mean"], "std_total_seconds": total["std"],
    }


def format_summary(summary: dict, data_source: str, device_name: str, reported: str = "EMA accuracy",
                   hint: str = "check --lr and the data", asked: int | None = None) -> str:
    """The summary's lines; `reported` names the result (a recipe's `reported_as`), `hint`
    says what to check when runs learned nothing, `asked` the runs the command asked for
    (the summary then says "1 of 4" when fewer finished)."""
    tried = summary["runs"] + summary["failed_runs"]
    of_asked = f" of {asked}" if asked is not None and asked != summary["runs"] else ""
    not_run = f"{asked - tried} not run" if asked is not None and asked > tried else ""
    notes = ", ".join(note for note in (f"{summary['failed_runs']} failed" if summary["failed_runs"] else "",
                                        not_run) if note)
    if not summary["runs"]:
        return f"no run{of_asked} finished ({notes or '0 failed'})"
    pct = lambda value: f"{100 * value:.2f}%"
    if summary["runs"] == 1:
        spread = [f"  {reported:<14} {pct(summary['mean_ema_accuracy'])} (one run has no spread: no std, "
                  f"confidence interval or p-value; --runs 2 or more give them)"]
    else:
        spread = [f"  {reported:<14} mean {pct(summary['mean_ema_accuracy'])}  std {pct(summary['std_ema_accuracy'])}"
                  f"  min {pct(summary['min_ema_accuracy'])}  max {pct(summary['max_ema_accuracy'])}",
                  _interval_line(summary)]
    lines = [
        f"summary over {summary['runs']}{of_asked} run(s) on {device_name}, data: {data_source}"
        + (f" ({notes})" if notes else ""),
        *spread,
        f"  runs >= 94%    {pct(summary['share_at_or_above_94'])}",
        *([f"  LEARNED NOTHING in {summary['learned_nothing_runs']} run(s): accuracy at chance or loss stuck "
           f"at its start (\"learned_nothing\" in the JSON); {hint}"]
          if summary.get("learned_nothing_runs") else []),
        f"  seconds/run    {summary['mean_train_seconds']:.3f} (training loops only, hlb convention)"
        f"  {summary['mean_total_seconds']:.3f} (whitening + training + final TTA eval, airbench convention)",
    ]
    return "\n".join(lines)


def _interval_line(summary: dict) -> str:
    if summary["ema_accuracy_ci95"] is None:
        return ("  mean's 95% CI  and p-value for mean > 94%: none, they need 2 or more finished runs "
                "(one run has no spread)")
    low, high = summary["ema_accuracy_ci95"]
    return (f"  mean's 95% CI  {100 * low:.2f}% .. {100 * high:.2f}% (t, {summary['runs'] - 1} df)"
            f"  p-value {summary['p_value_mean_above_94']:.3g} for mean > 94% (one-sided t-test: small supports it)")


def git_commit(directory: str | None = None) -> str | None:
    directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version(), "git_commit": git_commit()}


def write_json(path, payload: dict) -> str:
    """Write atomically (engine.outputs.atomic_write), with the user's usual permissions."""
    def dump(file):
        json.dump(payload, file, indent=2, default=str)
        file.write("\n")
    return atomic_write(path, dump, binary=False)
