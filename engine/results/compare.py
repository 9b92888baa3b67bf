"""`run.py compare A.json B.json [...]`: did a change help? Result files side by side.

For each result file (the `--json` of a training command; a folder stands for the
.json files in it; a sweep's file for each of its points): the recipe, data,
device, runs, and mean and spread of the reported accuracy and of both timings.
Between each entry and the first (the baseline): the difference of the means with
its 95% interval and the two-sided p-value of Welch's t-test, for the accuracy (in
percentage points) and for the seconds per run. A warning for every set-up field in
which the entries differ, and when an entry is incomplete or has failed runs.

The set-up of an entry is every field of its file but the outcome (OUTCOME: runs,
summary, timings of compilation, dates, notes, ...), nested objects flattened with
dots ("config.epochs", "data.train_subset"); a sweep's point adds its own recipe and
config over the file's. So a field that later versions of the engine record is
compared without changes here. A field one file lacks counts as null.

Files are data, checked before use: every field compare uses must have the right type
and a finite value in range (a boolean is not a number; accuracies are fractions in
0..1, seconds in 0..MAX_SECONDS; runs a list of objects; a sweep's runs name a point it
has), and every set-up number must be finite (nested at most MAX_DEPTH); a file over MAX_BYTES, not UTF-8 JSON,
not an object, or not a regular file is refused. A bad file stops the comparison with
one line naming the file and the field. The same file named twice (or reached twice,
through a folder or a link) is compared once, with a note; in a folder, hidden files,
compare's own --json output and other comparisons it wrote are passed over with a note
(named on their own, a comparison is refused), and --json never replaces a result
file. Text from files (and paths) is printed with control characters escaped.

Welch's test does not assume equal variances. With means m, sample variances
s^2 and run counts n of the baseline (1) and the other (2):
    difference d = m2 - m1,   standard error se = sqrt(s1^2/n1 + s2^2/n2),
    degrees of freedom (Welch-Satterthwaite)
        df = se^4 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1)),
    t = d / se,  p = 2 P(T_df > |t|),  95% interval d -/+ t_0.975,df * se.
Student's t comes from engine.results.student_t. This module imports no torch: it only
reads JSON (engine.command sends `compare` here before anything imports torch).
"""
from __future__ import annotations

import json
import math
import os
import stat
import statistics
import sys

from engine.results.student_t import t_cdf, t_quantile

MAX_BYTES = 100 * 2 ** 20          # a larger file is refused before it is read
MAX_SECONDS = 1e9                  # about 31 years: no run's time
MAX_DEPTH = 32                     # lists and objects in a set-up field nest at most this deep
# (key in a run record, what the text calls it, scale for printing, unit of a value, unit of a difference)
MEASURES = (("ema_accuracy", "accuracy", 100.0, "%", " points"),
            ("train_seconds", "training s", 1.0, " s", " s"),
            ("total_seconds", "total s", 1.0, " s", " s"))
# Set-up fields with a name of their own in warnings: (dotted key, what they are); the others go by their key.
SETUP = (("recipe", "recipes"), ("data_source", "data"), ("device", "devices"), ("dtype", "dtypes"),
         ("kernels", "kernels"), ("config.epochs", "epochs"), ("torch", "torch versions"),
         ("triton", "triton versions"), ("python", "python versions"), ("git_commit", "engine versions (git commit)"))
TEXT_FIELDS = ("recipe", "data_source", "device", "dtype", "kernels", "torch", "triton", "python", "git_commit")
# The fields of a result file that are its outcome, not its set-up.
OUTCOME = frozenset({"runs", "summary", "complete", "final", "interrupted", "errors", "compile_seconds",
                     "warmup_seconds", "processes", "date", "note", "rank", "points", "comparisons", "sweep"})
# A sweep's point: its settings are in its config, what it reports follows from its recipe.
POINT_OUTCOME = frozenset({"index", "label", "settings", "summary", "reported_as"})


class CompareError(ValueError):
    """A result file cannot be compared; the message says why and what to do."""


def shown(text) -> str:
    """`text` safe to print: control and format characters (ANSI escapes, newlines, \\r,
    bidirectional overrides) and undecodable bytes of file names as backslash escapes."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                   for char in str(text))


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


# --- reading: every field used is checked -------------------------------------------------

def _brief(value) -> str:
    """A value as JSON, cut to 60 characters, safe to print."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return shown(text if len(text) <= 60 else text[:57] + "...")


def _kind(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number") + f" ({_brief(value)})"


def _bad(path: str, field: str, problem: str):
    raise CompareError(f"{shown(path)}: {field} {problem}; give result files written by `run.py --json`")


def _number(path: str, field: str, value, high: float, what: str) -> float | None:
    """`value` as a float when it is a finite number (not a boolean) in 0..high; None stays None;
    CompareError naming the file and the field otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _bad(path, field, f"must be {what}, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:          # an integer beyond any float
        number = math.inf
    if not (math.isfinite(number) and 0 <= number <= high):
        _bad(path, field, f"must be {what}, got {_brief(value)}")
    return number


def _require_finite(path: str, field: str, value, depth: int = 0):
    """Every number in a set-up value (lists and objects included) finite; nested at most MAX_DEPTH."""
    if depth > MAX_DEPTH:
        _bad(path, field, f"is nested more than {MAX_DEPTH} deep")
    if isinstance(value, float) and not math.isfinite(value):
        _bad(path, field, f"must be a finite number, got {_brief(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1023:
        _bad(path, field, f"must be a number a float can hold, got {_brief(value)}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _require_finite(path, f"{field}[{index}]", item, depth + 1)
    if isinstance(value, dict):
        for key, item in value.items():
            _require_finite(path, f"{field}.{shown(key)}", item, depth + 1)


def _flatten(path: str, fields: dict, where: str = "", prefix: str = "", depth: int = 0) -> dict:
    """{dotted key: value} of `fields`, objects flattened; `where` prefixes field names in errors."""
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict) and depth < MAX_DEPTH:
            flat.update(_flatten(path, value, f"{where}{key}.", f"{prefix}{key}.", depth + 1))
        else:
            _require_finite(path, shown(where + key), value, depth)
            flat[prefix + key] = value
    return flat


def setup_of(path: str, fields: dict, where: str = "") -> dict:
    """The set-up of a file (its fields but OUTCOME) or of a sweep's point, flattened;
    CompareError for a named text field that is not a string, or a number not finite."""
    for key in TEXT_FIELDS:
        if fields.get(key) is not None and not isinstance(fields[key], str):
            _bad(path, where + key, f"must be a string, got {_kind(fields[key])}")
    return _flatten(path, fields, where)


def _runs(path: str, payload: dict, points: int) -> list[dict]:
    """The file's run records, each checked; a sweep's (`points` > 0) each name a point."""
    if "runs" not in payload:
        raise CompareError(f"{shown(path)}: no list of runs: not a result file of `run.py --json`")
    runs = payload["runs"]
    if not isinstance(runs, list):
        _bad(path, "runs", f"must be a list of run records (objects), got {_kind(runs)}")
    for index, run in enumerate(runs):
        field = f"runs[{index}]"
        if not isinstance(run, dict):
            _bad(path, field, f"must be a run record (an object), got {_kind(run)}")
        if not isinstance(run.get("status", "ok"), str):
            _bad(path, f"{field}.status", f"must be a string, got {_kind(run['status'])}")
        _number(path, f"{field}.ema_accuracy", run.get("ema_accuracy"), 1.0,
                "a fraction from 0 to 1 (accuracies are stored as fractions)")
        for key in ("train_seconds", "total_seconds"):
            _number(path, f"{field}.{key}", run.get(key), MAX_SECONDS, f"seconds from 0 to {MAX_SECONDS:.0e}")
        if points:
            point = run.get("point")
            if isinstance(point, bool) or not isinstance(point, int) or not 0 <= point < points:
                _bad(path, f"{field}.point", f"must be the index of one of the file's {points} points, got "
                                             f"{_kind(point) if 'point' in run else 'none'}")
    return runs


def describe(label: str, complete: bool, setup: dict, runs: list) -> dict:
    """One entry: its set-up, and each measure's statistics over its finished runs."""
    finished = [run for run in runs if run.get("status", "ok") == "ok" and run.get("ema_accuracy") is not None]
    entry = {"label": label, "recipe": setup.get("recipe"), "runs": len(finished),
             "failed_runs": len(runs) - len(finished), "complete": complete,
             **{key: setup.get(key) for key in TEXT_FIELDS if key != "recipe"}, "setup": setup,
             "values": {key: [float(run[key]) for run in finished if run.get(key) is not None]
                        for key, *_ in MEASURES}}
    for key, *_ in MEASURES:
        entry[key] = _stats(entry["values"][key])
    return entry


def point_label(point: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in point.items())


def is_comparison(payload) -> bool:
    """Whether a file's JSON is what `compare --json` writes (not a result)."""
    return isinstance(payload, dict) and "runs" not in payload and {"entries", "differences"} <= payload.keys()


def entries_of(path: str, payload) -> list[dict]:
    """A result file's entries, each field used checked: one, or one per point of a sweep's
    file. CompareError naming the file and the field otherwise."""
    if not isinstance(payload, dict):
        raise CompareError(f"{shown(path)}: not a JSON object (it holds {_kind(payload)}): not a result file "
                           f"of `run.py --json`")
    if is_comparison(payload):
        raise CompareError(f"{shown(path)} is a comparison written by compare --json, not a result; "
                           f"give the result files it compared")
    complete = payload.get("complete", True)          # files of earlier versions have no "complete"
    if not isinstance(complete, bool):
        _bad(path, "complete", f"must be true or false, got {_kind(complete)}")
    points = [] if payload.get("points") is None else payload["points"]       # [] or none: not a sweep
    if not isinstance(points, list):
        _bad(path, "points", f"must be a list of the sweep's points (objects), got {_kind(points)}")
    for index, point in enumerate(points):
        if not isinstance(point, dict):
            _bad(path, f"points[{index}]", f"must be a point of the sweep (an object), got {_kind(point)}")
        if not isinstance(point.get("settings", {}), dict):
            _bad(path, f"points[{index}].settings", f"must be an object, got {_kind(point['settings'])}")
    runs = _runs(path, payload, len(points))
    common = {key: value for key, value in payload.items() if key not in OUTCOME}
    if not points:
        return [describe(path, complete, setup_of(path, common), runs)]
    entries = []
    for index, point in enumerate(points):
        own = {key: value for key, value in point.items() if key not in POINT_OUTCOME}
        setup_of(path, own, f"points[{index}].")                         # its fields named as they are
        setup = setup_of(path, {**common, **own})
        mine = [run for run in runs if run["point"] == index]
        entries.append(describe(f"{path} [{point_label(point.get('settings', {}))}]", complete, setup, mine))
    return entries


def _identity(stat_result) -> tuple:
    return stat_result.st_dev, stat_result.st_ino


def result_files(paths: list[str], output: str | None = None) -> tuple[list[tuple[str, bool]], list[str]]:
    """([(file, found in a folder)], notes): the files named, a folder standing for its .json
    files (sorted; hidden ones passed over), each file once (the module docstring), never
    `output` (compare's --json). CompareError when a path is missing, not a regular file or
    folder, or a folder holds no .json file."""
    try:
        output_identity = _identity(os.stat(output)) if output else None
    except OSError:
        output_identity = None
    files, notes, seen = [], [], {}
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise CompareError(f"no such file or folder: {shown(path)}") from None
        except OSError as error:
            raise CompareError(f"cannot read {shown(path)} ({error.strerror or error})") from None
        if stat.S_ISDIR(mode):
            try:
                names = sorted(os.listdir(path))
            except OSError as error:
                raise CompareError(f"cannot list the folder {shown(path)} ({error.strerror or error})") from None
            found = [(os.path.join(path, name), True) for name in names
                     if name.lower().endswith(".json") and not name.startswith(".")
                     and os.path.isfile(os.path.join(path, name))]
            if not found:
                raise CompareError(f"{shown(path)} is a folder with no .json files; give result files of "
                                   f"`run.py --json`")
        elif stat.S_ISREG(mode):
            found = [(path, False)]
        else:
            raise CompareError(f"{shown(path)} is not a regular file (a FIFO, device or socket); give result files "
                               f"of `run.py --json`")
        for file, in_folder in found:
            try:
                identity = _identity(os.stat(file))
            except OSError as error:
                raise CompareError(f"cannot read {shown(file)} ({error.strerror or error})") from None
            if identity == output_identity:
                if not in_folder:
                    raise CompareError(f"--json {shown(output)} is the same file as the result {shown(file)}; "
                                       f"give the comparison a path of its own")
                notes.append(f"{shown(file)} is the --json output; not read")
            elif identity in seen:
                first = seen[identity]
                notes.append(f"{shown(file)} is given twice; compared once" if first == file else
                             f"{shown(file)} is the same file as {shown(first)}; compared once")
            else:
                seen[identity] = file
                files.append((file, in_folder))
    return files, notes


def _integer(text: str):
    """A JSON integer; one of more digits than a float's range (which Python's int() would
    refuse past 4300) as an infinite float, refused as not finite where it is used."""
    if len(text.lstrip("-")) > 309:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def read_json(path: str):
    """The JSON in the file at `path` (at most MAX_BYTES of UTF-8); CompareError naming the file."""
    try:
        size = os.stat(path).st_size
        data = b""
        if size <= MAX_BYTES:
            with open(path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
    except OSError as error:
        raise CompareError(f"cannot read {shown(path)} ({error.strerror or error})") from None
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        raise CompareError(f"{shown(path)} is larger than {MAX_BYTES // 2 ** 20} MiB ({max(size, len(data))} "
                           f"bytes): not a result file of `run.py --json`")
    try:
        return json.loads(data.decode("utf-8-sig"), parse_int=_integer)
    except UnicodeDecodeError as error:
        raise CompareError(f"{shown(path)} is not JSON (not UTF-8 text: byte {error.start}); give result files "
                           f"of `run.py --json`") from None
    except json.JSONDecodeError as error:
        raise CompareError(f"{shown(path)} is not JSON ({error}); give result files of `run.py --json`") from None
    except RecursionError:
        raise CompareError(f"{shown(path)} is nested too deeply to be a result file of `run.py --json`") from None


def load_entries(paths: list[str], output: str | None = None) -> tuple[list[dict], list[str]]:
    """(entries, notes) of the result files and folders in `paths` (result_files)."""
    files, notes = result_files(paths, output)
    entries = []
    for path, in_folder in files:
        payload = read_json(path)
        if in_folder and is_comparison(payload):
            notes.append(f"{shown(path)} is a comparison written by compare --json, not a result; not read")
            continue
        try:
            entries += entries_of(path, payload)
        except RecursionError:
            raise CompareError(f"{shown(path)} is nested too deeply to be a result file of `run.py --json`") from None
    return entries, notes


# --- comparing ---------------------------------------------------------------------------

def _canonical(value):
    """A value to compare set-ups by: numbers by value (10 == 10.0), a boolean never a number."""
    if value is NOT_RECORDED:
        return "NoneType", None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__, value
    if isinstance(value, (int, float)):
        return "number", value
    if isinstance(value, list):
        return "list", tuple(_canonical(item) for item in value)
    return "object", tuple(sorted((key, _canonical(item)) for key, item in value.items()))


NOT_RECORDED = object()          # a set-up field a file lacks: compared as null, shown as such


def _value_text(value) -> str:
    if value is NOT_RECORDED:
        return "not recorded"
    return "none" if value is None else shown(value) if isinstance(value, str) else _brief(value)


def setup_warnings(entries: list[dict]) -> list[str]:
    """One warning per set-up field in which the entries differ (a field one lacks counts as
    null, shown "not recorded"): the named fields (SETUP) first, then the others in the order they first appear."""
    named = dict(SETUP)
    keys = list(named) + [key for entry in entries for key in entry["setup"] if key not in named]
    warnings = []
    for key in dict.fromkeys(keys):
        values = [entry["setup"].get(key, NOT_RECORDED) for entry in entries]
        if len({_canonical(value) for value in values}) > 1:
            listed = "; ".join(f"[{index}] {_value_text(value)}" for index, value in enumerate(values))
            what = named.get(key) or ("settings: " if key.startswith("config.") else "") + shown(key)
            warnings.append(f"measured {'on' if key in named else 'with'} different {what} ({listed})")
    return warnings


def warnings_for(entries: list[dict]) -> list[str]:
    """What makes the comparison less fair: different set-ups, unfinished or failed runs."""
    warnings = setup_warnings(entries)
    for index, entry in enumerate(entries):
        label = shown(entry["label"])
        if not entry["complete"]:
            warnings.append(f"[{index}] {label} is not complete (its runs were still training or were stopped)")
        if entry["failed_runs"]:
            warnings.append(f"[{index}] {label}: {entry['failed_runs']} failed run(s) left out")
        if entry["runs"] < 2:
            warnings.append(f"[{index}] {label} has {entry['runs']} finished run(s): no spread, so no interval or "
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


# --- printing ----------------------------------------------------------------------------

def _figure(value, scale: float, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def format_difference(test: dict, scale: float, unit: str) -> str:
    """'+0.31 points (95% CI -0.05 points .. +0.67 points, p 0.086)'; the interval left out
    below two runs each."""
    if test["difference"] is None:
        return "-"
    text = f"{scale * test['difference']:+.2f}{unit}"
    if test["interval"] is None:
        return text + " (no interval: below 2 runs)"
    low, high = test["interval"]
    return text + f" (95% CI {scale * low:+.2f}{unit} .. {scale * high:+.2f}{unit}, p {test['p_value']:.3g})"


def format_comparison(result: dict, notes: list[str] = ()) -> str:
    """The text compare prints; everything that came from a file escaped (shown)."""
    lines = [f"note: {note}" for note in notes] + ["results:"]
    for index, entry in enumerate(result["entries"]):
        recipe = "recipe not recorded" if entry["recipe"] is None else shown(entry["recipe"])
        lines.append(f"  [{index}] {shown(entry['label'])}: {recipe} on {_value_text(entry['data_source'])}, "
                     f"{_value_text(entry['device'])}, {_value_text(entry['dtype'])}, {entry['runs']} run(s)")
        for key, name, scale, unit, _ in MEASURES:
            s = entry[key]
            lines.append(f"        {name:<11} mean {_figure(s['mean'], scale)}{unit}  std {_figure(s['std'], scale)}"
                         f"{unit}  min {_figure(s['min'], scale)}{unit}  max {_figure(s['max'], scale)}{unit}")
    lines.append("differences from [0] (Welch's t-test, two-sided p; small p: the means differ; accuracy in "
                 "percentage points):")
    for index, difference in enumerate(result["differences"], start=1):
        lines.append(f"  [{index}] - [0]")
        for key, name, scale, _, unit in MEASURES:
            lines.append(f"        {name:<11} {format_difference(difference[key], scale, unit)}")
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    return "\n".join(lines)


def build_compare_parser(prog: str = "run.py"):
    import argparse
    p = argparse.ArgumentParser(
        prog=f"{prog} compare",
        description="Compare result files of --json (or folders of them; a sweep's file counts once per point): "
                    "per file the recipe, data, device, runs, mean and spread of the accuracy and both timings; "
                    "the difference of each from the first with its 95% interval and Welch's t-test p-value "
                    "(accuracy in percentage points); a warning for every difference in set-up (recipe, settings, "
                    "epochs, data, device, versions). Reads JSON only.")
    p.add_argument("results", nargs="+", metavar="RESULT", help="a JSON file written by --json, or a folder of them")
    p.add_argument("--json", metavar="PATH", help="also write the comparison to this JSON file (never over a RESULT)")
    return p


def refuse_result_as_output(path: str):
    """CompareError when the file at `path` (compare's --json) is a result file of `run.py --json`."""
    if not os.path.isfile(path):
        return
    try:
        payload = read_json(path)
    except CompareError:            # not JSON, too large to be ours: an ordinary file to write over
        return
    if isinstance(payload, dict) and "runs" in payload:
        raise CompareError(f"--json {shown(path)} is a result file of `run.py --json`; compare never writes over a "
                           f"result: give the comparison another path")


def _print(text: str):
    """Print to stdout; a reader that went away (`compare ... | head -1`) ends the printing,
    not the command (--json is still written)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())       # later prints and the flush at exit go nowhere, quietly
        os.close(devnull)


def compare_main(argv, prog: str = "run.py") -> int:
    """`run.py compare ...`: 0 when the comparison is printed (and written), 2 for bad input
    (one line), 1 when --json could not be written."""
    parser = build_compare_parser(prog)
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.strip():
        parser.error("--json: an empty or blank path; give the file to write the comparison to, or leave --json out")
    try:
        if args.json is not None:          # before any work, never over a result file
            from engine.outputs import check_output_paths
            try:
                check_output_paths([("--json", args.json)], [("RESULT", path) for path in args.results])
            except ValueError as error:    # engine.outputs.OutputError
                parser.error(shown(error))
            refuse_result_as_output(args.json)
        entries, notes = load_entries(args.results, args.json)
        if len(entries) < 2 and any("compared once" in note for note in notes):
            raise CompareError(f"compare needs two or more results to compare; got {len(entries)} (the same file "
                               f"was given more than once)")
        result = compare(entries)
        _print(format_comparison(result, notes))
        if args.json is not None:
            def dump(file):
                json.dump(result, file, indent=2, allow_nan=False)
                file.write("\n")
            from engine.outputs import atomic_write
            try:
                atomic_write(args.json, dump, binary=False)
            except OSError as error:
                print(f"{parser.prog}: error: could not write {shown(args.json)} ({error}); the comparison is printed "
                      f"above", file=sys.stderr)
                return 1
            _print(f"wrote {shown(args.json)}")
    except CompareError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0
