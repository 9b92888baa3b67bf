"""Many runs in one process, and keeping their results safe (README "Failures").

`Outputs` names the files a session writes (--json, --save, --plot) and checks them
all before any work. A `Session` trains this process's runs one after another with an
already-built `Trainer` and loaders, then gathers every process's runs (torchrun) and
rank 0 prints the summary and writes the JSON and the plot:

* a run whose loss turns NaN is recorded as failed and the next run starts; any other
  error stops the runs and the finished ones are kept (an unknown error is raised again,
  as the bug report, once they are written);
* Ctrl-C, SIGTERM and SIGHUP (a closed terminal or ssh session) stop the runs the same
  way (exit status 130, 143 or 129). While results
  are being written (after each run, and from the summary on) further signals wait: they
  are noted and the write completes;
* right after each run, its checkpoint (--save) and this process's progress file are
  written: with one process the --json file itself, marked "complete": false until the
  end; under torchrun PATH.rankR.json beside it (R: the rank), deleted once rank 0 has
  written --json. "final" is true in the summary's write at the end, "complete" only
  when every asked run trained as well (none cut short by a signal or an error);
* a file already at --json (an earlier result) is never replaced by less: while this
  session's runs train, its progress goes to PATH.unfinished.json (numbered when taken)
  beside it; at the end the new result replaces the earlier one when it is complete or
  holds at least as many runs, else the earlier result stays and the new one is left in
  the unfinished file (the output names both). A complete result with fewer runs than the
  earlier one replaces it, the earlier one kept as PATH.previous.json;
* a file that cannot be written where asked is rescued into the current directory or
  the temporary directory (engine.outputs.write_or_rescue); a JSON that cannot be
  written anywhere is printed on standard output;
* a run that trained but learned nothing (accuracy at chance, or its loss still that of
  a uniform guess) keeps status "ok" with "learned_nothing": true, and the summary
  counts it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from engine.results.checkpoint import save_checkpoint
from engine.training.config import NUM_CLASSES
from engine.results.distributed import Peers, World, gather
from engine.errors import explain
from engine.outputs import OutputError, OutputLocks, atomic_write, check_output_paths, write_or_rescue
from engine.results.progress import Progress
from engine.results.report import device_name, format_summary, summarize, write_json
from engine.training.train import TrainingDiverged

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # 128 + the signal's number
CHANCE_SIGMAS = 3           # accuracy within 3 binomial standard deviations of chance: "at chance"
STUCK_LOSS_RATIO = 0.99     # final training loss >= 99% of ln(classes): "still a uniform guess"


class Stopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP: stop the runs, keep and write the finished ones."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_stop():
    """SIGTERM and SIGHUP raise Stopped, as Ctrl-C raises KeyboardInterrupt, for the block
    (main thread only): what a write was doing is cleaned up (no temporary file is left)
    and the caller reports the stop. A Session installs its own handlers inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def chance_accuracy_limit(test_images: int, num_classes: int = NUM_CLASSES) -> float:
    """The highest accuracy still "at chance" on `test_images` images: 1/classes plus
    CHANCE_SIGMAS standard deviations of a random guesser's accuracy."""
    chance = 1 / num_classes
    return chance + CHANCE_SIGMAS * math.sqrt(chance * (1 - chance) / max(test_images, 1))


def learned_nothing(run: dict, test_images: int, num_classes: int = NUM_CLASSES) -> str | None:
    """Why a finished run (a record of the JSON) learned nothing, or None when it learned."""
    limit = chance_accuracy_limit(test_images, num_classes)
    accuracies = [run.get(key) for key in ("ema_accuracy", "accuracy") if run.get(key) is not None]
    if accuracies and max(accuracies) <= limit:
        return (f"accuracy {100 * max(accuracies):.2f}% is at chance (at most {100 * limit:.2f}% on "
                f"{test_images} test images)")
    loss = (run.get("epochs") or [{}])[-1].get("train_loss")
    if loss is not None and loss >= STUCK_LOSS_RATIO * math.log(num_classes):
        return f"the training loss ended at {loss:.4f}, still that of a uniform guess (ln {num_classes} = " \
               f"{math.log(num_classes):.4f})"
    return None


def flag_learned_nothing(result, test_images: int) -> str | None:
    """Set a finished run's `learned_nothing` (a RunResult) and return why, or None."""
    reason = learned_nothing(result.to_dict(), test_images)
    result.learned_nothing = reason is not None
    return reason


def reported_as(config) -> str:
    """What reports call a run's result: the recipe's `reported_as`, or plain "accuracy" when
    the recipe reports an EMA network but this config trains none (e.g. --epochs 1)."""
    if config.has_ema or getattr(type(config), "has_ema", None) is False:   # EMA, or a recipe that never has one
        return config.reported_as
    return "accuracy"


FEW_STEPS = 100             # a run of fewer training steps may simply not have trained long enough


def learned_nothing_hint(config) -> str:
    """What the summary tells to check when runs learned nothing: a run too short to learn,
    a learning rate other than the recipe's (--lr where the recipe has it), the data. An
    option already given is named with its value, as the thing to change back or raise."""
    cls, hints = type(config), []
    if config.total_steps < FEW_STEPS:
        epochs = f"raise --epochs from {config.epochs}" if config.epochs != cls.epochs else "give more --epochs"
        hints.append(f"it trained only {config.total_steps} steps: {epochs} or train on more images")
    if "lr" not in cls.field_names():
        hints.append("check the learning rates (--set NAME=VALUE)")
    elif config.lr != cls.lr:
        hints.append(f"the --lr given ({config.lr:.4g}) is not the recipe's ({cls.lr:.4g}): try without it")
    else:
        hints.append("check --lr")
    return "; ".join(hints) + "; check the data"


def final_line(result, config, reason: str | None) -> str:
    """A finished run's closing line: what its recipe reports, the network's accuracy when
    that is an EMA copy's, the seconds, and why it learned nothing (reason) if it did not."""
    network = f", accuracy {100 * result.accuracy:.2f}%" if config.has_ema else ""
    return (f"final: {reported_as(config)} {100 * result.ema_accuracy:.2f}%{network}, "
            f"{result.train_seconds:.3f} s training, {result.total_seconds:.3f} s in all"
            + (f"; LEARNED NOTHING: {reason}" if reason else ""))


@dataclass(frozen=True)
class Outputs:
    """The files a session writes; None: not written."""
    json: str | None = None
    save: str | None = None
    plot: str | None = None

    def checkpoint(self, seed: int, runs: int, point: int | None = None) -> str:
        """--save PATH for one run; PATH with -seedS before its extension for several, and
        -pointK-seedS for the runs of point K (from 1) of a sweep."""
        if runs == 1 and point is None:
            return self.save
        root, extension = os.path.splitext(self.save)
        return f"{root}{'' if point is None else f'-point{point + 1}'}-seed{seed}{extension or '.pt'}"

    def points_plot(self) -> str:
        """A sweep's second figure beside --plot PATH: PATH with .points before its extension."""
        root, extension = os.path.splitext(self.plot)
        return f"{root}.points{extension or '.png'}"

    def progress(self, world: World, rank: int | None = None) -> str | None:
        """The file a process rewrites after each run: --json itself for one process,
        PATH.rankR.json (R: the rank) beside it under torchrun."""
        if not self.json or not world.distributed:
            return self.json
        root, extension = os.path.splitext(self.json)
        return f"{root}.rank{world.rank if rank is None else rank}{extension or '.json'}"

    def check(self, seeds: range, world: World = World(), inputs: list[tuple[str, str]] = (), points: int = 0):
        """OutputError naming the option unless every file can be written: see
        engine.outputs.check_output_paths; `inputs` (option, path) must not be overwritten;
        points: the number of points of a sweep (0: not a sweep)."""
        check_output_paths(self.named(seeds, world, points), inputs)

    def locked_by(self, seeds: range, world: World = World(), points: int = 0) -> list[tuple[str, str]]:
        """The (option, path) this process locks while it runs (engine.outputs.OutputLocks):
        every file on rank 0, its own progress file on the others."""
        own = self.progress(world)
        return [(option, path) for option, path in self.named(seeds, world, points)
                if world.main and "progress file" not in option or path == own]

    def named(self, seeds: range, world: World = World(), points: int = 0) -> list[tuple[str, str]]:
        """Every file of the session as (option, path)."""
        named = []
        if self.json:
            named.append(("--json", self.json))
            if world.distributed:
                named += [(f"--json (progress file of rank {rank})", self.progress(world, rank))
                          for rank in range(world.size)]
        if self.plot:
            from engine.results.plots import require_plot_format
            try:
                require_plot_format(self.plot)
            except ValueError as error:
                raise OutputError(str(error)) from None
            named.append(("--plot", self.plot))
            if points:
                named.append(("--plot (the points' figure)", self.points_plot()))
        if self.save and points:
            named += [(f"--save (point {point + 1}, seed {seed})", self.checkpoint(seed, len(seeds), point))
                      for point in range(points) for seed in seeds]
        elif self.save:
            if len(seeds) > 1:
                named.append(("--save", self.save))        # the name itself: not a folder
            named += [("--save" if len(seeds) == 1 else f"--save (seed {seed})", self.checkpoint(seed, len(seeds)))
                      for seed in seeds]
        return named


def held_runs(path: str, ours: bool = False) -> int | None:
    """What a file already at an output path holds: None when there is nothing (no file,
    or an empty one); the number of runs of a JSON of ours; 1 for any other file (kept
    from a result with no run), or None for one with `ours`."""
    try:
        if os.path.getsize(path) == 0:
            return None
        with open(path, encoding="utf-8") as file:
            payload = json.load(file)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except (OSError, ValueError):
        return None if ours else 1
    runs = payload.get("runs") if isinstance(payload, dict) else None
    return len(runs) if isinstance(runs, list) else None if ours else 1


def beside(path: str, word: str, locks: OutputLocks) -> str:
    """A free name beside `path` with `word` before its extension, runs.json -> runs.WORD.json
    (numbered when a file or another process has it), reserved in `locks` (OutputLocks.free)."""
    root, extension = os.path.splitext(path)
    return locks.free(f"{root}.{word}{extension or '.json'}", f"the {word} file of {path}")


def write_json_or_rescue(path: str, payload: dict, quiet: bool = False, what: str = "the JSON") -> str | None:
    """Write `payload` to `path`, else to a rescue file (stderr says where), else print it
    on standard output. Returns the path written, or None."""
    written, message = write_or_rescue(lambda target: write_json(target, payload), path, what)
    if written == path:
        if not quiet:
            print(message, flush=True)
        return written
    print(f"error: {message}", file=sys.stderr, flush=True)
    if written is None:
        print("error: the JSON follows on standard output", file=sys.stderr, flush=True)
        print(json.dumps(payload, indent=2, default=str), flush=True)
    return written


class Session:
    """This process's runs of one trainer: train, keep, gather, report (module docstring).

    trainer, train, test: an already-built Trainer and its loaders (warmed up if wanted).
    runs, first_seed: the global runs (run i has seed first_seed + i); this process trains
    world.my_runs(runs); peers: what the gathers wait on (engine.results.distributed.start).
    show: the progress display. data_source: how the summary names
    the data. context: the JSON's fields that describe the set-up (config, dtype, device,
    versions, ...). checkpoint_fields: what each --save file records besides the run's seed
    and accuracies. warmup_seconds: the warm-up's time, for the JSON."""

    def __init__(self, trainer, train, test, *, runs: int, first_seed: int = 0, world: World = World(),
                 outputs: Outputs = Outputs(), show: Progress | None = None, data_source: str = "",
                 context: dict | None = None, checkpoint_fields: dict | None = None,
                 evaluate_every_epoch: bool = True, warmup_seconds: float = 0.0, quiet: bool = False,
                 peers: Peers | None = None, locks: OutputLocks | None = None):
        self.trainer, self.train, self.test = trainer, train, test
        self.config = trainer.config
        self.runs, self.first_seed, self.world, self.outputs, self.peers = runs, first_seed, world, outputs, peers
        self.show = show or Progress("quiet")
        self.data_source, self.context = data_source, dict(context or {})
        self.checkpoint_fields = dict(checkpoint_fields or {})
        self.evaluate_every_epoch, self.warmup_seconds, self.quiet = evaluate_every_epoch, warmup_seconds, quiet
        self.finished = []                # (global run index, record) of this process, in order
        self.stopped_by = None            # the signal that stopped the runs
        self.failure = self.crash = None  # what stopped the runs early: a message; an unknown error
        self.write_errors = 0             # files not written where asked
        self.writing = self.finishing = False
        self.deferred = []                # signals that came while writing
        self.progress_warned = False
        # An earlier result at --json is never replaced by less (module docstring).
        self.previous = held_runs(outputs.json) if outputs.json and world.main else None
        # Every name derived from an output is reserved in `locks` (the caller's, holding the
        # outputs' own locks; else the session's, released when it ends) before it is written.
        self.own_locks = locks is None
        self.locks = OutputLocks() if locks is None else locks
        self.progress_path = outputs.progress(world)
        if self.previous is not None and not world.distributed:
            self.progress_path = beside(outputs.json, "unfinished", self.locks)

    # ---- signals ----
    def _on_signal(self, signum, frame):
        if self.writing or self.finishing:
            self.deferred.append(signum)
            os.write(2, f"\n{signal.Signals(signum).name}: writing the results first\n".encode())
            return
        self.finishing = True             # from here on, signals wait for the results to be written
        raise Stopped(signum)

    @contextlib.contextmanager
    def _signals_handled(self):
        """Ctrl-C and SIGTERM go to _on_signal while the session runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_signal) for signum in EXIT_STATUS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def _writing(self):
        """Signals during the block wait for its end; then the first one stops the runs."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.deferred and not self.finishing:
            self.finishing = True
            raise Stopped(self.deferred[0])

    # ---- the runs ----
    def run(self) -> int:
        """Train this process's runs, gather every process's and (rank 0) report them.
        Returns the exit status: 0; 1 when a run stopped the others with an error, when no
        run finished or learned anything, or when a file could not be written where asked;
        130 (Ctrl-C) or 143 (SIGTERM) when stopped. An unknown error is raised again after
        the results are written."""
        try:
            with self._signals_handled():
                self.train_all()
                return self.finish()
        finally:
            if self.own_locks:
                self.locks.release()

    def train_all(self):
        try:
            for index in self.world.my_runs(self.runs):
                self.train_one(index)
        except KeyboardInterrupt as stop:
            self.finishing = True
            self.stopped_by = getattr(stop, "signum", signal.SIGINT)
            print(f"\n{self.show.prefix}interrupted ({signal.Signals(self.stopped_by).name}): summarising the "
                  f"run(s) that finished", file=sys.stderr, flush=True)
        except Exception as error:        # stop here, but keep and report what finished
            self.finishing = True
            self.failure = explain(error, self.config, self.trainer.compile)
            if self.failure is None:
                self.crash, self.failure = error, f"{type(error).__name__}: {error}"
            print(f"{self.show.prefix}error: {self.failure}; the runs that finished are kept",
                  file=sys.stderr, flush=True)
        finally:
            self.finishing = True
            self.show.close()

    def seed_of(self, index: int) -> int:
        return self.first_seed + index

    def before_run(self, index: int):
        """Called before run `index` trains (a sweep sets up its point here)."""

    def train_one(self, index: int):
        self.before_run(index)
        seed, c = self.seed_of(index), self.config
        self.show.start_run(index, self.runs, seed, c.total_steps, c.epoch_count)
        try:
            result = self.trainer.run(self.train, self.test, seed, on_epoch=self.show.epoch,
                                      on_step=self.show.step, on_loss=self.show.loss,
                                      evaluate_every_epoch=self.evaluate_every_epoch)
        except TrainingDiverged as error:
            self.show.close()
            print(f"{self.show.prefix}run {index + 1} (seed {seed}) failed: {error}; going on with the next run",
                  file=sys.stderr, flush=True)
            with self._writing():
                self.keep(index, {"seed": seed, "status": "failed", "error": str(error), "step": error.step,
                                  "lr": error.lr, "epochs": error.epochs})
            return
        reason = flag_learned_nothing(result, len(self.test.labels))
        record = result.to_dict()
        with self._writing():
            if self.outputs.save:
                self.save(result, record)
            self.keep(index, record)
            self.show.end_run(final_line(result, self.config, reason))

    def save(self, result, record: dict):
        """Write the run's checkpoint, rescued elsewhere if need be; the record says where."""
        path = self.checkpoint_path(result.seed)
        write = lambda target: save_checkpoint(
            target, result.ema_model, self.config, accuracy=result.ema_accuracy, seed=result.seed,
            ema_accuracy=result.ema_accuracy, network_accuracy=result.accuracy, **self.checkpoint_fields)
        written, message = write_or_rescue(write, path, f"the checkpoint of seed {result.seed}")
        record["checkpoint"] = written
        if written == path and not self.quiet:
            self.show.print(f"saved {path}")
        if written != path:
            self.write_errors += 1
            record["checkpoint_error"] = message
            kept = "" if written else "; the run's figures are kept in the summary and the JSON"
            print(f"{self.show.prefix}error: {message}{kept}", file=sys.stderr, flush=True)

    def checkpoint_path(self, seed: int) -> str:
        return self.outputs.checkpoint(seed, self.runs)

    def keep(self, index: int, record: dict):
        """Add a run to the finished ones and rewrite this process's progress file."""
        if self.world.distributed:
            record["rank"] = self.world.rank
        self.finished.append((index, record))
        path = self.progress_path
        if path is None:
            return
        runs = [record for _, record in self.finished]
        try:
            write_json(path, {**self.payload(runs, complete=False), "final": False})
        except Exception as error:
            if not self.progress_warned:
                print(f"{self.show.prefix}warning: could not update {path} after a run ({type(error).__name__}: "
                      f"{error}); the finished runs are kept and written at the end", file=sys.stderr, flush=True)
            self.progress_warned = True

    def payload(self, runs: list, complete: bool, processes: list | None = None) -> dict:
        """The JSON: the runs, their summary, what stopped them, and the context."""
        processes = processes or [self.process()]
        names = sorted({p["device"] for p in processes})
        return {
            "runs": runs, "summary": summarize(runs), "complete": complete,
            "interrupted": any(p["stopped_by"] is not None for p in processes),
            "errors": [{"rank": p["rank"], "error": p["error"]} for p in processes if p["error"]],
            **self.context,
            "compile_seconds": processes[0]["compile_seconds"], "warmup_seconds": processes[0]["warmup_seconds"],
            "world_size": self.world.size,
            **({"rank": self.world.rank} if self.world.distributed and not complete else {}),
            "processes": [{k: p[k] for k in ("rank", "device", "warmup_seconds", "compile_seconds", "error")}
                          for p in processes],
            "device": names[0] if not self.world.distributed else f"{self.world.size} processes on {', '.join(names)}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def process(self) -> dict:
        """What this process sends to rank 0 at the end."""
        return {"rank": self.world.rank, "device": device_name(self.trainer.device), "runs": self.finished,
                "stopped_by": self.stopped_by, "error": self.failure, "write_errors": self.write_errors,
                "warmup_seconds": self.warmup_seconds, "compile_seconds": self.trainer.compile_seconds}

    # ---- the end ----
    def finish(self) -> int:
        """Gather, report (rank 0), tidy up the progress files; the exit status (see run)."""
        self.finishing = True
        try:
            processes = gather(self.world, self.process(), self.peers, "processes")
        except RuntimeError as error:     # another process died or is missing (PeersMissing): cannot gather
            kept = self.progress_path if self.finished else None
            print(f"{self.show.prefix}error: could not gather the other processes' runs "
                  f"({(str(error).strip().splitlines() or [''])[0]}); no summary is written. "
                  + (f"This process's finished runs are in {kept}." if kept else
                     "Pass --json to keep each process's finished runs on disk."), file=sys.stderr, flush=True)
            return 1
        json_written = self.report(processes) if self.world.main else True
        if self.world.distributed and self.outputs.json and gather(self.world, json_written, self.peers, "json")[0]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.progress_path)
        if self.crash is not None:
            raise self.crash              # after the results are safe: the traceback is the bug report
        stopped = [p["stopped_by"] for p in processes if p["stopped_by"] is not None]
        if stopped:
            return EXIT_STATUS.get(stopped[0], 130)
        runs = [record for p in processes for _, record in p["runs"]]
        learned = sum(r["status"] == "ok" and not r.get("learned_nothing") for r in runs)
        troubles = any(p["error"] or p["write_errors"] for p in processes) or self.write_errors
        return 1 if troubles or not learned else 0

    def json_target(self, complete: bool, runs: int) -> str:
        """Where the final JSON goes: --json, unless that would replace an earlier result by
        fewer runs of a session cut short (then this session's unfinished file). Before a
        complete result with fewer runs replaces it, the earlier file is copied to
        PATH.previous.json."""
        path = self.outputs.json
        if self.previous is None or runs >= self.previous:
            return path
        if not complete:
            return self.progress_path if not self.world.distributed else beside(path, "unfinished", self.locks)
        kept = os.path.splitext(path)[0] + ".previous.json"
        try:
            kept = beside(path, "previous", self.locks)
            with open(path, "rb") as file:
                earlier = file.read()
            atomic_write(kept, lambda file: file.write(earlier))
            print(f"the earlier result in {path} held {self.previous} run(s), more than this one: it is kept "
                  f"as {kept}", file=sys.stderr, flush=True)
        except (OSError, OutputError) as error:
            print(f"warning: could not keep the earlier result of {path} as {kept} ({error}); it is kept "
                  f"where it is and this result goes to {self.progress_path}", file=sys.stderr, flush=True)
            return self.progress_path if not self.world.distributed else beside(path, "unfinished", self.locks)
        return path

    def summary_text(self, payload: dict) -> str:
        return format_summary(payload["summary"], self.data_source, payload["device"], reported_as(self.config),
                              learned_nothing_hint(self.config), asked=self.runs)

    def report(self, processes: list) -> bool:
        """Print the summary, write the JSON and the plot, from every process's runs in run
        order. Returns whether the JSON is where --json asked (True without --json); counts
        each file not written where asked in write_errors."""
        runs = [record for _, record in sorted((item for p in processes for item in p["runs"]), key=lambda i: i[0])]
        cut_short = any(p["stopped_by"] is not None or p["error"] for p in processes)
        complete = not cut_short and len(runs) == self.runs
        payload = {**self.payload(runs, complete=complete, processes=processes), "final": True}
        print(("" if self.quiet else "\n") + self.summary_text(payload), flush=True)
        saved = [record["checkpoint"] for record in runs if record.get("checkpoint")]
        if self.quiet and saved:           # the per-run "saved" lines were not shown
            print("saved " + ", ".join(saved), flush=True)
        json_written, aside = True, False
        if self.outputs.json:
            target = self.json_target(complete, len(runs))
            aside = target != self.outputs.json
            json_written = write_json_or_rescue(target, payload, self.quiet or aside) == target
            self.write_errors += not json_written
            if json_written and not aside and self.progress_path not in (None, target) and not self.world.distributed:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.progress_path)
            if json_written and aside:
                held = f"{self.previous} run(s)" if held_runs(self.outputs.json, ours=True) else "not a result of ours"
                print(f"kept the earlier result in {self.outputs.json} ({held}); this session "
                      f"was cut short and its {len(runs)} finished run(s) are in {target}"
                      + (f"; the plot {self.outputs.plot} is left as it was too"
                         if self.outputs.plot and os.path.exists(self.outputs.plot) else ""),
                      file=sys.stderr, flush=True)
        if self.outputs.plot and not (aside and os.path.exists(self.outputs.plot)):   # else: the earlier one's
            from engine.results.plots import plot_runs
            asked = f" of {self.runs}" if len(runs) != self.runs else ""
            recipes = (payload.get("sweep") or {}).get("recipes") or [payload.get("recipe") or self.config.recipe]
            title = f"recipe {', '.join(recipes)} | {self.data_source} | {payload['device']} | {len(runs)}{asked} run(s)"
            path, message = write_or_rescue(lambda target: plot_runs(runs, target, title=title), self.outputs.plot,
                                            "the plot")
            if path == self.outputs.plot:
                if not self.quiet:
                    print(message, flush=True)
            else:
                self.write_errors += 1
                print(f"error: {message}" + ("" if path else "; the JSON holds every figure it draws"),
                      file=sys.stderr, flush=True)
        return json_written
