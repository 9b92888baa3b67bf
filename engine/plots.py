"""`--plot PATH.png`: the training curves of every run and the spread of their results.

Left to right: train loss, val accuracy and EMA val accuracy per epoch (each run a
thin line, their mean a thick one), then the final EMA accuracies of the runs as a
histogram with the 94% target and the mean marked. matplotlib is an optional extra
(`pip install -e ".[plot]"`); `require_matplotlib` says so before any training.
"""
from __future__ import annotations

import math
import os

from engine.outputs import atomic_write
from engine.report import TARGET_ACCURACY

INSTALL_HINT = 'install matplotlib (python3 -m pip install -e ".[plot]" or pip install matplotlib)'


def require_matplotlib():
    """Raise ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}, "
                          f"or leave out --plot") from None


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


def plot_runs(runs: list[dict], path, title: str = "") -> str:
    """Draw the figure for `runs` (the JSON's run dicts; failed runs show their finished
    epochs, dashed) and write it to `path` (str or pathlib.Path) atomically; the format
    follows the extension (none: png)."""
    require_matplotlib()
    from matplotlib.figure import Figure     # no pyplot: no display, no global state
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(16, 4.2), layout="constrained")
    axes = figure.subplots(1, 4)
    panels = (("train_loss", "train loss", 1.0), ("val_accuracy", "val accuracy (%)", 100.0),
              ("ema_val_accuracy", "EMA val accuracy (%)", 100.0))
    for ax, (key, label, scale) in zip(axes, panels):
        curves = []
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
            ax.plot(range(1, len(mean) + 1), mean, lw=2.5, marker="o", color="black", label=f"mean of {len(curves)}")
            ax.legend(loc="best", fontsize=8)
        if scale == 100.0:
            ax.axhline(100 * TARGET_ACCURACY, color="tab:red", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, max([len(run.get("epochs") or []) for run in runs] + [1]) + 0.5)
        ax.set_title(label)
        ax.grid(alpha=0.3)

    finals = [100 * run["ema_accuracy"] for run in runs
              if run.get("status", "ok") == "ok" and run.get("ema_accuracy") is not None]
    ax = axes[3]
    if finals:
        ax.hist(finals, bins=min(max(len(finals) // 2, 5), 30), color="tab:blue", alpha=0.7)
        mean = sum(finals) / len(finals)
        ax.axvline(mean, color="black", lw=2, label=f"mean {mean:.2f}%")
    ax.axvline(100 * TARGET_ACCURACY, color="tab:red", ls=":", lw=1.5, label="94%")
    ax.legend(loc="best", fontsize=8)
    failed = sum(run.get("status", "ok") != "ok" for run in runs)
    ax.set_title(f"final EMA accuracy, {len(finals)} run(s)" + (f", {failed} failed" if failed else ""))
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)

    extension = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    return atomic_write(path, lambda file: figure.savefig(file, dpi=110, format=extension))
