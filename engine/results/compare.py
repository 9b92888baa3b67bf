"""`run.py compare A.json B.json [...]`: did a change help? Result files side by side.

For each result file (the `--json` of a training command; a folder stands for the
.json files in it; a sweep's file for each of its points): the recipe, data,
device, runs, and mean and spread of the reported accuracy and of both timings.
Between each entry and the first (the baseline): the difference of the means with
its 95% interval and the two-sided p-value of Welch's t-test, for the accuracy
and for the seconds per run. A warning when two entries were measured on
different devices, data, versions, dtypes or kernels, or when an entry is
incomplete.

Welch's test does not assume equal variances. With means m, sample variances
s^2 and run counts n of the baseline (1) and the other (2):
    difference d = m2 - m1,   standard error se = sqrt(s1^2/n1 + s2^2/n2),
    degrees of freedom (Welch-Satterthwaite)
        df = se^4 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1)),
    t = d / se,  p = 2 P(T_df > |t|),  95% interval d -/+ t_0.975,df * se.
Student's t comes from engine.results.student_t. This module imports no torch: it only
reads JSON.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys

from engine.results.student_t import t_cdf, t_quantile

# (key in a run record, what the text calls it, scale for printing, unit)
MEASURES = (("ema_accuracy", "accuracy", 100.0, "%"),
            ("train_seconds", "training s", 1.0, " s"),
            ("total_seconds", "total s", 1.0, " s"))
# Set-up fields two entries should share to be compared fairly: (key, what it is).
SETUP = (("device", "devices"), ("data_source", "data"), ("dtype", "dtypes"), ("kernels", "kernels"),
         ("torch", "torch versions"), ("triton", "triton versions"), ("git_commit", "engine versions (git commit)"))


class CompareError(ValueError):
    """A result file cannot be compared; the message says why and what to do."""


def welch(baseline: list, other: list, level: float = 0.95) -> dict:
    """Welch's t-test of mean(other) - mean(baseline) (module docstring): {"difference",
    "interval" [low, high] at `level`, "p_value" (two-sided), "df", "t"}. Interval, p,
    df and t are None below two values on either side (no spread to estimate); with no
    spread on both sides the interval is the difference itself and p is 0 (different
    means) or 1 (equal means)."""
    difference = statistics.fmean(other) - statistics.fmean(baseline) if baseline and other else None
    result = {"difference": difference, "interval": None, "p_value": None, "df": None, "t": None}
    if len(baseline) < 2 or len(other) < 2:
        return result
    v1, v2 = statistics.variance(baseline) / len(baseline), statistics.variance(other) / len(other)
    se = math.sqrt(v1 + v2)
    if se == 0:
        result.update(interval=[difference, difference], p_value=0.0 if difference else 1.0)
        return result
    df = (v1 + v2) ** 2 / (v1 ** 2 / (len(baseline) - 1) + v2 ** 2 / (len(other) - 1))
    t = difference / se
    half_width = t_quantile(0.5 + level / 2, df) * se
    result.update(interval=[difference - half_width, difference + half_width],
                  p_value=min(1.0, 2 * t_cdf(-abs(t), df)), df=df, t=t)
    return result


def _stats(values: list) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "min": min(values, default=None), "max": max(values, default=None)}


def describe(label: str, payload: dict, runs: list) -> dict:
    """One entry: what it was measured on, and each measure's statistics over its finished runs."""
    finished = [run for run in runs if run.get("status", "ok") == "ok" and run.get("ema_accuracy") is not None]
    entry = {"label": label, "recipe": payload.get("recipe"), "runs": len(finished),
             "failed_runs": len(runs) - len(finished), "complete": payload.get("complete", True),
             **{key: payload.get(key) for key, _ in SETUP},
             "values": {key: [run[key] for run in finished if run.get(key) is not None] for key, *_ in MEASURES}}
    for key, *_ in MEASURES:
        entry[key] = _stats(entry["values"][key])
    return entry


def point_label(point: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in point.items())


def entries_of(path: str, payload: dict) -> list[dict]:
    """A result file's entries: one, or one per point of a sweep's file."""
    if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
        raise CompareError(f"{path} is not a result file of `run.py --json` (it has no list of runs)")
    runs = [run for run in payload["runs"] if isinstance(run, dict)]
    points = payload.get("points")
    if not points:
        return [describe(path, payload, runs)]
    entries = []
    for index, point in enumerate(points):
        settings = point.get("settings", {})
        mine = [run for run in runs if run.get("point") == index]
        entry_payload = {**payload, "recipe": point.get("recipe", payload.get("recipe"))}
        entries.append(describe(f"{path} [{point_label(settings)}]", entry_payload, mine))
    return entries


def result_files(paths: list[str]) -> list[str]:
    """The files named, a folder standing for its .json files (sorted). CompareError when a
    path is missing or a folder holds none."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(".json") and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise CompareError(f"{path} is a folder with no .json files; give result files of `run.py --json`")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CompareError(f"no such file or folder: {path}")
    return files


def load_entries(paths: list[str]) -> list[dict]:
    entries = []
    for path in result_files(paths):
        try:
            with open(path) as file:
                payload = json.load(file)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CompareError(f"cannot read {path} as JSON ({type(error).__name__}: {error})") from None
        entries += entries_of(path, payload)
    return entries


def warnings_for(entries: list[dict]) -> list[str]:
    """What makes the comparison less fair: different set-ups, unfinished or failed runs."""
    warnings = []
    for key, what in SETUP:
        values = {entry[key] for entry in entries if entry.get(key) is not None}
        if len(values) > 1:
            shown = "; ".join(f"{entry['label']}: {entry[key]}" for entry in entries)
            warnings.append(f"measured on different {what} ({shown})")
    for entry in entries:
        if not entry["complete"]:
            warnings.append(f"{entry['label']} is not complete (its runs were still training or were stopped)")
        if entry["failed_runs"]:
            warnings.append(f"{entry['label']}: {entry['failed_runs']} failed run(s) left out")
        if entry["runs"] < 2:
            warnings.append(f"{entry['label']} has {entry['runs']} finished run(s): no spread, so no interval or "
                            f"p-value against it; use --runs 2 or more")
    return warnings


def compare(entries: list[dict]) -> dict:
    """The comparison of every entry with the first: {"entries", "differences", "warnings"}."""
    if len(entries) < 2:
        raise CompareError(f"compare needs two or more results to compare; got {len(entries)}")
    baseline = entries[0]
    differences = [{"label": entry["label"], "baseline": baseline["label"],
                    **{key: welch(baseline["values"][key], entry["values"][key]) for key, *_ in MEASURES}}
                   for entry in entries[1:]]
    public = [{k: v for k, v in entry.items() if k != "values"} for entry in entries]
    return {"entries": public, "differences": differences, "warnings": warnings_for(entries)}


def _number(value, scale: float, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def format_difference(test: dict, scale: float, unit: str) -> str:
    """'+0.31% (95% CI -0.05% .. +0.67%, p 0.086)'; the interval left out below two runs each."""
    if test["difference"] is None:
        return "-"
    text = f"{scale * test['difference']:+.2f}{unit}"
    if test["interval"] is None:
        return text + " (no interval: below 2 runs)"
    low, high = test["interval"]
    return text + f" (95% CI {scale * low:+.2f}{unit} .. {scale * high:+.2f}{unit}, p {test['p_value']:.3g})"


def format_comparison(result: dict) -> str:
    lines = ["results:"]
    for index, entry in enumerate(result["entries"]):
        lines.append(f"  [{index}] {entry['label']}: {entry['recipe']} on {entry['data_source']}, "
                     f"{entry['device']}, {entry['dtype']}, {entry['runs']} run(s)")
        for key, name, scale, unit in MEASURES:
            s = entry[key]
            lines.append(f"        {name:<11} mean {_number(s['mean'], scale)}{unit}  std {_number(s['std'], scale)}"
                         f"{unit}  min {_number(s['min'], scale)}{unit}  max {_number(s['max'], scale)}{unit}")
    lines.append("differences from [0] (Welch's t-test, two-sided p; small p: the means differ):")
    for index, difference in enumerate(result["differences"], start=1):
        lines.append(f"  [{index}] - [0]")
        for key, name, scale, unit in MEASURES:
            lines.append(f"        {name:<11} {format_difference(difference[key], scale, unit)}")
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    return "\n".join(lines)


def build_compare_parser(prog: str = "run.py"):
    import argparse
    p = argparse.ArgumentParser(
        prog=f"{prog} compare",
        description="Compare result files of --json (or folders of them; a sweep's file counts once per point): "
                    "per file the recipe, data, device, runs, mean and spread of the accuracy and both timings; "
                    "the difference of each from the first with its 95%% interval and Welch's t-test p-value.")
    p.add_argument("results", nargs="+", metavar="RESULT", help="a JSON file written by --json, or a folder of them")
    p.add_argument("--json", metavar="PATH", help="also write the comparison to this JSON file")
    return p


def compare_main(argv, prog: str = "run.py") -> int:
    parser = build_compare_parser(prog)
    args = parser.parse_args(argv)
    try:
        if args.json:        # before any work, never over a result file (engine.outputs imports torch)
            from engine.outputs import check_output_paths
            check_output_paths([("--json", args.json)], [("RESULT", path) for path in args.results])
        result = compare(load_entries(args.results))
    except ValueError as error:       # CompareError, engine.outputs.OutputError
        parser.error(str(error))
    print(format_comparison(result), flush=True)
    if args.json:
        def dump(file):
            json.dump(result, file, indent=2)
            file.write("\n")
        from engine.outputs import atomic_write
        try:
            atomic_write(args.json, dump, binary=False)
        except OSError as error:
            print(f"{parser.prog}: error: could not write {args.json} ({error}); the comparison is printed above",
                  file=sys.stderr)
            return 1
        print(f"wrote {args.json}")
    return 0
