"""What a run shows while it trains.

Modes:
  * "bar":   a live tqdm bar over the run's steps (run, epoch, step, steps/s; the
             current epoch's running loss, the last epoch's accuracies; "evaluating"
             while an epoch's end is measured), the per-epoch table printed above it; what "auto" chooses in a terminal
             (tqdm is a dependency; should it be missing, the table instead);
  * "table": the per-epoch table (logs, pipes, no tqdm);
  * "runs":  one line per finished run (the other processes under torchrun);
  * "quiet": nothing per run (`--quiet`); the summary is still printed by the caller.

No host syncs are added: per step the bar sees a Python int, and the running loss
as the trainer's finite-loss check reads it (on CUDA from non-blocking copies that
have landed); accuracies appear at the end of an epoch, where they are read anyway.
"""
from __future__ import annotations

import sys
import threading
import time

from engine.results.report import EPOCH_HEADER, format_epoch_row

MODES = ("auto", "bar", "table", "runs", "quiet")


def tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class Repeat:
    """Call `action()` every `every` seconds from a daemon thread until stop() (which waits
    for the thread): what keeps a display moving while the main thread is busy."""

    def __init__(self, every: float, action):
        self.every, self.action, self.stopped = every, action, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="cifar-speedrun display")
        self.thread.start()

    def _loop(self):
        while not self.stopped.wait(self.every):
            self.action()

    def stop(self):
        self.stopped.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


class Ticker:
    """`with Ticker("compiling"):` shows that a long step is under way, with its seconds so
    far: on a terminal one line rewritten in place every second ("compiling... 12 s"); in a
    log a line at the start, one every `log_every` seconds and one at the end, so that a
    step still at work never looks like a hang. Nothing when `quiet`."""

    def __init__(self, what: str, file=None, quiet: bool = False, every: float = 1.0, log_every: float = 30.0):
        self.what, self.file, self.quiet = what, file or sys.stdout, quiet
        self.every, self.log_every = every, log_every
        self.tty = self.file.isatty()
        self.start, self.repeat, self.logged = 0.0, None, 0

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def _write(self, text: str):
        self.file.write(text)
        self.file.flush()

    def _tick(self):
        if self.tty:
            self._write(f"\r{self.what}... {self.seconds():.0f} s")
        elif self.seconds() >= (self.logged + 1) * self.log_every:
            self.logged += 1
            self._write(f"still {self.what}: {self.seconds():.0f} s so far\n")

    def __enter__(self):
        self.start = time.perf_counter()
        if not self.quiet:
            self._write(f"{self.what}..." + (" 0 s" if self.tty else "\n"))
            self.repeat = Repeat(self.every, self._tick)
        return self

    def __exit__(self, kind, error, traceback):
        if self.repeat is None:
            return
        self.repeat.stop()
        ended = "done" if kind is None else "stopped"
        self._write(("\r\033[K" if self.tty else "") + f"{self.what}: {ended} after {self.seconds():.1f} s\n")


class Progress:
    def __init__(self, mode: str = "auto", file=None, prefix: str = ""):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; choose one of {', '.join(MODES)}")
        self.file = file or sys.stdout
        if mode == "auto":
            mode = "bar" if tqdm_available() and self.file.isatty() else "table"
        if mode == "bar" and not tqdm_available():
            mode = "table"
        self.mode, self.prefix = mode, prefix
        self.bar, self.run_name, self.epochs, self.steps = None, "", 0, 0
        self.refresh = None                     # keeps the bar's clock moving before and between steps
        self.shown = {}                         # the bar's postfix: loss, then the last epoch's accuracies

    def print(self, text: str):
        """A line for the reader, above the bar when one is live; nothing when quiet."""
        if self.mode == "quiet":
            return
        text = "\n".join(self.prefix + line if line else line for line in text.split("\n"))
        if self.bar is not None:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def start_run(self, index: int, runs: int, seed: int, steps: int, epochs: int):
        self.run_name, self.epochs, self.steps = f"run {index + 1}/{runs} (seed {seed})", epochs, steps
        if self.mode in ("table", "bar"):
            self.print(f"\n{self.run_name}\n{EPOCH_HEADER}")
        if self.mode == "bar":
            from tqdm import tqdm
            self.shown = {}
            self.bar = tqdm(total=steps, file=self.file, unit="step", dynamic_ncols=True, leave=False,
                            desc=f"{self.prefix}run {index + 1}/{runs} preparing (network, whitening, "
                                 f"first augmentation)")
            self.bar.refresh()                  # shown at once, before the first step
            bar = self.bar
            self.refresh = Repeat(1.0, lambda: bar.refresh())

    def step(self, steps_done: int):
        if self.bar is not None:
            if self.bar.n == 0:                 # the first step: preparing is over
                self.bar.set_description_str(f"{self.prefix}{self.run_name.split(' (')[0]} epoch 1/{self.epochs}",
                                             refresh=False)
            self.bar.update(steps_done - self.bar.n)
            per_epoch = self.steps // max(self.epochs, 1)
            if per_epoch and steps_done % per_epoch == 0:     # the epoch's last step: its end-of-epoch work
                epoch = steps_done // per_epoch
                self.bar.set_description_str(f"{self.prefix}{self.run_name.split(' (')[0]} epoch {epoch}/"
                                             f"{self.epochs} evaluating")

    def loss(self, mean: float):
        """The current epoch's running mean loss, shown on the bar."""
        if self.bar is not None:
            self.shown["loss"] = f"{mean:.4f}"
            self.bar.set_postfix(self.shown, refresh=False)

    def epoch(self, row: dict):
        if self.mode in ("table", "bar"):
            self.print(format_epoch_row(row))
        if self.bar is not None:
            self.bar.set_description_str(f"{self.prefix}{self.run_name.split(' (')[0]} "
                                         f"epoch {min(row['epoch'] + 1, self.epochs)}/{self.epochs}")
            self.shown = {"loss": f"{row['train_loss']:.4f}", "acc": f"{100 * row['train_accuracy']:.1f}%"}
            if row.get("val_accuracy") is not None:
                self.shown["val"] = f"{100 * row['val_accuracy']:.2f}%"
            self.bar.set_postfix(self.shown, refresh=False)

    def end_run(self, text: str):
        """Close the bar and print the run's final line ('runs' mode names the run in it)."""
        self.close()
        if self.mode == "runs":
            text = f"{self.run_name}: {text}"
        self.print(text)

    def close(self):
        if self.refresh is not None:
            self.refresh.stop()
            self.refresh = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
