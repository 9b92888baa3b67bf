"""`--plot PATH.png`: the training curves of every run and the spread of their results.

Left to right: train loss, val accuracy and EMA val accuracy per epoch (each run a
thin line, their mean a thick one), then the final accuracies of the runs as a
histogram with the mean marked (one run has no spread: its value is written instead),
then each run's seconds (training loops, and in all, from 0). Every accuracy axis is
fitted to the data, so close runs stay apart; the 94% target is drawn (and in the
legend) only where it falls inside that range, else a note says on which side it lies.
The title (the caller's) names the recipe, data, device and runs. matplotlib is an optional extra
(`pip install -e ".[plot]"`); `require_matplotlib` says so before any training.
"""
from __future__ import annotations

import math
import os

from engine.outputs import atomic_write
from engine.results.report import TARGET_ACCURACY

INSTALL_HINT = 'install matplotlib (python3 -m pip install -e ".[plot]" or pip install matplotlib)'


def require_matplotlib():
    """Raise ImportError with the install command when matplotlib is missing, or saying
    what to change when it cannot start (MPLBACKEND naming no backend it knows)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}, "
                          f"or leave out --plot") from None
    except ValueError as error:           # raised while importing, from the environment's settings
        raise ImportError(f"--plot: matplotlib cannot start with MPLBACKEND={os.environ.get('MPLBACKEND')!r} "
                          f"({str(error).split(';')[0]}); unset MPLBACKEND or set it to agg") from None


def plot_formats() -> list[str]:
    """The file extensions matplotlib can write (png, pdf, svg, ...)."""
    require_matplotlib()
    from matplotlib.figure import Figure
    return sorted(Figure().canvas.get_supported_filetypes())


def require_plot_format(path: str):
    """ValueError unless matplotlib writes the format `path`'s extension names (none: png)."""
    extension = os.path.splitext(path)[1][1:].lower()
    if extension and extension not in plot_formats():
        raise ValueError(f"--plot {path}: matplotlib cannot write .{extension} files; use one of "
                         f".{', .'.join(plot_formats())}")


def _curve(run: dict, key: str) -> list[float]:
    return [math.nan if row.get(key) is None else row[key] for row in run.get("epochs") or []]


def _mean_curve(curves: list[list[float]]) -> list[float]:
    length = max((len(c) for c in curves), default=0)
    means = []
    for i in range(length):
        values = [c[i] for c in curves if i < len(c) and not math.isnan(c[i])]
        means.append(sum(values) / len(values) if values else math.nan)
    return means


def fitted_range(values: list[float], margin: float = 0.1) -> tuple[float, float]:
    """An axis range around `values` (NaNs left out) with `margin` of their span on each
    side, at least 0.05 units wide each side, so that equal values still get a range."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    pad = max(margin * (high - low), 0.05)
    return low - pad, high + pad


def plot_runs(runs: list[dict], path, title: str = "") -> str:
    """Draw the figure for `runs` (the JSON's run dicts; failed runs show their finished
    epochs, dashed) and write it to `path` (str or pathlib.Path) atomically; the format
    follows the extension (none: png)."""
    figure = draw_runs(runs, title)
    return save_figure(figure, path)


def save_figure(figure, path) -> str:
    """Write `figure` to `path` atomically, in the format its extension names (none: png)."""
    extension = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    return atomic_write(path, lambda file: figure.savefig(file, dpi=110, format=extension))


def target_line(ax, vertical: bool) -> str:
    """The 94% target on `ax`, labelled for the legend, when it lies inside the axis's range
    (returns ""); otherwise no line and no legend entry, and the note for the panel's title
    that says on which side it lies."""
    target = 100 * TARGET_ACCURACY
    low, high = ax.get_xlim() if vertical else ax.get_ylim()
    if low <= target <= high:
        (ax.axvline if vertical else ax.axhline)(target, color="tab:red", ls=":", lw=1.5, label="94% target")
        return ""
    side = ("right of" if vertical else "above") if target > high else ("left of" if vertical else "below")
    return f"\n(the 94% target is {side} this axis)"


def draw_runs(runs: list[dict], title: str = ""):
    """The figure of plot_runs (a matplotlib Figure, not yet written)."""
    require_matplotlib()
    from matplotlib.figure import Figure     # no pyplot: no display, no global state
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(20, 4.2), layout="constrained")
    axes = figure.subplots(1, 5)
    panels = (("train_loss", "train loss", 1.0), ("val_accuracy", "val accuracy (%)", 100.0),
              ("ema_val_accuracy", "EMA val accuracy (%)", 100.0))
    for ax, (key, label, scale) in zip(axes, panels):
        curves, note = [], ""
        for run in runs:
            curve = [scale * v for v in _curve(run, key)]
            if not curve:
                continue
            failed = run.get("status", "ok") != "ok"
            ax.plot(range(1, len(curve) + 1), curve, lw=0.8, alpha=0.45, marker=".", ls="--" if failed else "-")
            if not failed:
                curves.append(curve)
        if curves:
            mean = _mean_curve(curves)
            ax.plot(range(1, len(mean) + 1), mean, lw=2.5, marker="o", color="black",
                    label=f"mean of {len(curves)}" if len(curves) > 1 else "the run")
        if scale == 100.0 and curves and any(not math.isnan(v) for curve in curves for v in curve):
            ax.set_ylim(*fitted_range([v for curve in curves for v in curve]))
            note = target_line(ax, vertical=False)
        elif scale == 100.0:
            ax.text(0.5, 0.5, "not measured per epoch", transform=ax.transAxes, ha="center", va="center")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max([len(run.get("epochs") or []) for run in runs] + [1]) + 0.5)
        ax.set_title(label + note)
        ax.grid(alpha=0.3)

    finals = [100 * run["ema_accuracy"] for run in runs
              if run.get("status", "ok") == "ok" and run.get("ema_accuracy") is not None]
    ax = axes[3]
    failed = sum(run.get("status", "ok") != "ok" for run in runs)
    ax.set_title(f"final accuracy, {len(finals)} run(s)" + (f", {failed} failed" if failed else ""))
    if len(finals) >= 2:
        low, high = fitted_range(finals)
        ax.hist(finals, bins=min(max(len(finals) // 2, 5), 30), range=(low, high), color="tab:blue", alpha=0.7,
                edgecolor="black", linewidth=0.5)
        ax.set_xlim(low, high)
        mean = sum(finals) / len(finals)
        ax.axvline(mean, color="black", lw=2, label=f"mean {mean:.2f}%")
        ax.set_title(ax.get_title() + target_line(ax, vertical=True))
        ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("test accuracy (%)")
        ax.set_ylabel("runs")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:                                  # one value (or none) has no spread to draw
        ax.text(0.5, 0.5, f"{finals[0]:.2f}%\none run: no spread to draw" if finals else "no run finished",
                transform=ax.transAxes, ha="center", va="center", fontsize=12)
        ax.set_axis_off()
    ax = axes[4]
    timed = [run for run in runs if run.get("status", "ok") == "ok" and run.get("train_seconds") is not None]
    for key, label in (("train_seconds", "training loops"), ("total_seconds", "in all")):
        values = [run[key] for run in timed if run.get(key) is not None]
        if values:
            mean = sum(values) / len(values)
            ax.plot(range(1, len(values) + 1), values, marker="o", lw=1, label=f"{label}, mean {mean:.3g} s")
    ax.set_title("seconds per run")
    ax.set_xlabel("run")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(0.5, max(len(timed), 1) + 0.5)
    ax.grid(alpha=0.3)
    if timed:
        ax.legend(loc="lower right", fontsize=8)
        seconds = [run[key] for run in timed for key in ("train_seconds", "total_seconds") if run.get(key) is not None]
        ax.set_ylim(0, 1.15 * max(seconds) if seconds and max(seconds) > 0 else 1)   # from 0: never a flat axis
    if title:
        figure.suptitle(title)
    return figure


def plot_points(points: list[dict], path, title: str = "") -> str:
    """A sweep's points (the JSON's "points": label, summary, train_pflop): each point's mean
    result with its standard deviation against the PFLOP of one run's training (left; log
    scale when the points span more than ten times) and against its mean training seconds
    (right), each marker labelled. Written to `path` atomically (format from the extension)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = ((axes[0], lambda point: point.get("train_pflop"), "training PFLOP per run"),
              (axes[1], lambda point: point["summary"].get("mean_train_seconds"), "training seconds per run"))
    results = []
    for ax, x_of, label in panels:
        xs = []
        for point in points:
            summary, x = point["summary"], x_of(point)
            if x is None or summary.get("mean_ema_accuracy") is None:
                continue
            y, spread = 100 * summary["mean_ema_accuracy"], 100 * (summary.get("std_ema_accuracy") or 0.0)
            ax.errorbar([x], [y], yerr=[spread], marker="o", capsize=3)
            ax.annotate(point["label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            xs.append(x)
            results += [y - spread, y + spread]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        if not xs:
            ax.text(0.5, 0.5, "not counted" if "PFLOP" in label else "no finished run", ha="center",
                    transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("result (%), mean and std of the runs")
        ax.grid(alpha=0.3)
    if results:
        for ax in axes:
            ax.set_ylim(*fitted_range(results))
    axes[0].set_title("result against training arithmetic (flop_counter)")
    axes[1].set_title("result against training time")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
