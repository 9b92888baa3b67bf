"""The training loop every recipe shares: one run, and the pieces it is made of.

A `Trainer` holds what every run of a process shares (the recipe's config,
device, dtype, the operation table, and the compiled functions when --compile
is on, so that they are compiled once and reused by every run);
`Trainer.run(seed)` trains one network from scratch and returns its
`RunResult`. What differs between recipes (network, whitening, optimizer
groups and schedules, loss, augmentation, EMA, evaluation views) the loop asks
of the config (engine/recipes/).
"""
from __future__ import annotations

import copy
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from engine.checks import as_device, as_dtype, require_type
from engine.training.config import RecipeConfig
from engine.training.data import CifarLoader
from engine.training.evaluation import evaluate
from engine.training.layers import count_batches
from engine.training.ops import Ops
from engine.options import COMPILE_MODES
from engine.training.optim import Optimizers, update_groups_



class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: `step` (steps done when it was seen), `lr` (the
    first optimizer group's rate there) and the finished epochs' rows say where."""

    def __init__(self, message: str, step: int | None = None, lr: float | None = None, epochs=()):
        super().__init__(message)
        self.step, self.lr, self.epochs = step, lr, list(epochs)


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the setting to lower."""


@dataclass
class RunResult:
    seed: int
    accuracy: float | None = None          # the network's final accuracy (the recipe's final views)
    ema_accuracy: float | None = None      # the reported result: the EMA network's final accuracy, or
                                           # the network's when the recipe has no EMA
    train_seconds: float = 0.0             # hlb convention: training loops only
    total_seconds: float = 0.0             # airbench convention: whitening + training + final TTA eval
    epochs: list = field(default_factory=list)
    status: str = "ok"                     # "ok" or "failed"
    learned_nothing: bool = False          # accuracy at chance or loss stuck (engine.results.session.learned_nothing)
    error: str | None = None
    model: nn.Module | None = field(default=None, repr=False)      # the trained network
    ema_model: nn.Module | None = field(default=None, repr=False)  # the reported network (EMA copy)

    def to_dict(self) -> dict:
        """The figures, for JSON (the networks left out)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("model", "ema_model")}


class Timer:
    """Accumulates the time of start()/stop() intervals: CUDA events on a GPU, a
    monotonic clock otherwise. Reading `seconds` synchronises."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.intervals, self.host_seconds, self._start = [], 0.0, None

    def start(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.intervals.append((self._start, end))
        else:
            self.host_seconds += time.perf_counter() - self._start

    @property
    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(start.elapsed_time(end) for start, end in self.intervals) / 1000
        return self.host_seconds


class FiniteLossCheck:
    """Stops a run within a few steps of its loss turning NaN or infinite, without a host
    sync, and keeps the epoch's running mean loss for the progress bar: on CUDA, every
    `every` steps the on-device loss sum is copied to pinned host memory (non_blocking)
    behind a recorded event, and read only once the event has completed, so the check lags
    a few steps but never waits. On the CPU it reads the sum directly. The loss sum covers
    every step of the epoch, so no bad step is missed."""

    def __init__(self, device: torch.device, config, optimizers: Optimizers, every: int = 4, slots: int = 8):
        self.cuda, self.config, self.optimizers = device.type == "cuda", config, optimizers
        self.every = every if self.cuda else 1
        self.last_good = 0                          # steps done at the last check that passed
        self.epoch_loss = None                      # mean loss per sample of the epoch so far, as last read
        if self.cuda:
            self.sums = torch.zeros(slots, dtype=torch.float32, pin_memory=True)
            self.free, self.pending = list(range(slots)), deque()

    def start_epoch(self):
        self.epoch_loss = None

    def __call__(self, loss_sum: torch.Tensor, steps_done: int, epochs=(), samples: int = 0):
        """`samples`: the training images the epoch's `loss_sum` covers so far."""
        if self.cuda:
            self.poll(epochs)
        if steps_done % self.every:
            return
        if not self.cuda:
            self.read(float(loss_sum), steps_done, samples, epochs)
        elif self.free:                             # every slot still in flight: skip, never block
            slot = self.free.pop()
            self.sums[slot:slot + 1].copy_(loss_sum.detach().float().view(1), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append((event, slot, steps_done, samples))

    def poll(self, epochs=()):
        """Read the sums whose copies have landed (all of them after a synchronisation)."""
        while self.cuda and self.pending and self.pending[0][0].query():
            _, slot, steps_done, samples = self.pending.popleft()
            self.free.append(slot)
            self.read(float(self.sums[slot]), steps_done, samples, epochs)

    def read(self, loss_sum: float, steps_done: int, samples: int, epochs=()):
        if samples and math.isfinite(loss_sum):
            self.epoch_loss = loss_sum / samples
        self.verdict(math.isfinite(loss_sum), steps_done, epochs)

    def verdict(self, finite: bool, steps_done: int, epochs=()):
        """Raise TrainingDiverged, naming the step and the learning rate, unless `finite`."""
        if finite:
            self.last_good = max(self.last_good, steps_done)
            return
        c = self.config
        rates = self.optimizers.lrs_at(steps_done - 1)
        lower = "--lr" if "lr" in c.field_names() else "the learning rates"
        self.pending = deque()                      # the run is over: drop later flags
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at step {steps_done} of {c.total_steps} "
            f"(epoch {(steps_done - 1) // c.steps_per_epoch + 1}; finite up to step {self.last_good}), "
            f"learning rate {', '.join(f'{name} group {lr:.4g}' for name, lr in rates.items())}; "
            f"lower {lower} or check the data",
            step=steps_done, lr=next(iter(rates.values()), None), epochs=epochs)


class EMA:
    """Exponential moving average of the whole state (parameters and BatchNorm
    statistics). The first update copies the network; later ones blend with `decay`."""

    def __init__(self, model: nn.Module):
        self.model = model            # a second network of the same architecture
        self.started = False

    @torch.no_grad()
    def update(self, network: nn.Module, decay: float):
        ema_state, state = self.model.state_dict(), network.state_dict()
        if not self.started:
            for name, value in state.items():
                ema_state[name].copy_(value)
            self.started = True
            return
        floating = [name for name, value in state.items() if value.is_floating_point()]
        torch._foreach_lerp_([ema_state[n] for n in floating], [state[n] for n in floating], 1 - decay)
        counters = [name for name, value in state.items() if not value.is_floating_point()]
        if counters:          # BatchNorm's num_batches_tracked: one launch for all, not one each
            torch._foreach_copy_([ema_state[n] for n in counters], [state[n] for n in counters])


def _same_tensors(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks' states have the same names, shapes and dtypes."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)


class Trainer:
    """Trains runs of one recipe on one device. What runs share is built once here:
    with `compile`, the forward + loss (its backward compiled with it), the optimizer
    update of every group and the evaluation forward are compiled on first use, in
    `warm_up`, and reused by every later run without recompiling."""

    def __init__(self, config, ops: Ops, device, dtype, compile: bool = False,
                 compile_mode: str = "default"):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        require_type("config", config, RecipeConfig, "a recipe's Config (engine.Config, engine.make_config(...))")
        require_type("ops", ops, Ops, "an operation table from engine.training.ops.make_ops")
        self.config, self.ops = config, ops
        self.device, self.dtype = as_device(device), as_dtype(dtype)
        self.compile, self.compile_mode = compile, compile_mode
        self.compile_seconds = None
        self.kept = None        # (network, EMA network or None, optimizers), reused by every run: see networks()
        self.forward_loss, self.update, self.logits = self._forward_loss, update_groups_, self._logits
        if compile:
            options = dict(mode=compile_mode, fullgraph=True)
            self.forward_loss = torch.compile(self._forward_loss, **options)
            self.update = torch.compile(update_groups_, **options)
            # One graph per evaluation batch shape (a recipe's views may use two), never a dynamic one.
            self.logits = torch.compile(self._logits, dynamic=False, **options)

    def use_config(self, config):
        """Train `config` (the same recipe, e.g. another point of a sweep) from the next run on.
        The compiled functions are kept: a setting they see as a tensor (the learning rates)
        changes nothing in them, while new shapes or a setting compiled in as a constant
        (weight decay, momentum, label smoothing) compile another graph on first use."""
        require_type("config", config, type(self.config), f"a Config of recipe {self.config.recipe}")
        self.config = config

    def _forward_loss(self, model: nn.Module, images, labels):
        logits = model(images)
        count_batches(model)
        loss = self.config.loss(logits, labels)
        return loss, (logits.argmax(1) == labels).sum()

    @staticmethod
    def _logits(model: nn.Module, images):
        return model(images)

    def networks(self, config):
        """The run's network, EMA network (None when the recipe has none) and optimizers.
        Built by the first run and kept: every later run loads a freshly seeded network's
        values into the same tensors (and zeroes the momentum), so compiled code, and with
        --compile-mode reduce-overhead its CUDA graphs, always see the same parameters and
        buffers at the same addresses. The values are exactly those of a network built for
        this run alone."""
        fresh = config.build_network(self.ops, self.device, self.dtype)
        if self.kept is None or not _same_tensors(self.kept[0], fresh) or (self.kept[1] is None) == config.has_ema:
            optimizers = Optimizers(config.optimizer_groups(fresh))
            if self.compile:      # CUDA graphs may then update these in place
                for tensor in optimizers.state_tensors():
                    torch._dynamo.mark_static_address(tensor)
            ema_model = config.build_network(self.ops, self.device, self.dtype) if config.has_ema else None
            self.kept = (fresh, ema_model, optimizers)
            return self.kept
        model, ema_model, optimizers = self.kept
        model.load_state_dict(fresh.state_dict())       # copies into the kept tensors, in place
        model.config = config
        optimizers.reset(config.optimizer_groups(model))
        return self.kept

    def seconds_per_step(self, train: CifarLoader, steps: int = 2) -> float:
        """Seconds of one training step of this config here, timed over `steps` steps (after
        one untimed) of the kept network, which every run sets afresh anyway (so compiled
        code sees the tensors it was compiled for): for an estimate before the runs."""
        model, _, optimizers = self.networks(self.config)
        images, labels = next(iter(train.epoch(torch.Generator(device=self.device).manual_seed(0), 0)))
        self.train_step(model, optimizers, images, labels)
        timer = Timer(self.device)
        timer.start()
        for _ in range(steps):
            self.train_step(model, optimizers, images, labels)
        timer.stop()
        return timer.seconds / steps

    def train_step(self, model: nn.Module, optimizers: Optimizers, images, labels):
        loss, correct = self.forward_loss(model, images, labels)
        loss.backward()
        optimizers.step(self.update)
        return loss.detach(), correct

    def evaluate(self, model: nn.Module, test: CifarLoader, views: Callable) -> float:
        return evaluate(model, test, views, forward=lambda x: self.logits(model, x))

    def warm_up(self, train: CifarLoader, test: CifarLoader) -> float:
        """A short run on synthetic data shaped like the real batches: compiles every
        function (train and eval modes) and lets cuDNN pick its algorithms. Returns its
        seconds; with `compile` they are also kept as `compile_seconds`."""
        from engine.training.data import make_synthetic

        warm_config = self.config.warm_up_config()
        fake = make_synthetic(warm_config.train_images, seed=12345, test_size=len(test.labels))
        warm_train = CifarLoader(fake.train_images, fake.train_labels, warm_config, True, self.device, self.dtype)
        warm_test = CifarLoader(fake.test_images, fake.test_labels, warm_config, False, self.device, self.dtype)
        start = time.perf_counter()
        self.run(warm_train, warm_test, seed=0, config=warm_config)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        if self.compile:
            self.compile_seconds = seconds
        return seconds

    def run(self, train: CifarLoader, test: CifarLoader, seed: int, on_epoch: Callable | None = None,
            config=None, evaluate_every_epoch: bool = True, on_step: Callable | None = None,
            on_loss: Callable | None = None) -> RunResult:
        """Train one network from scratch; `on_epoch(row)` sees each epoch's table row and
        `on_step(steps_done)` a plain int after every step (progress bars: no sync), and
        `on_loss(mean)` the epoch's running mean loss whenever a newer one has been read
        (each step on the CPU; on CUDA as the finite check's copies land, never waiting).
        With `evaluate_every_epoch` False, only the last epoch is evaluated (benchmarks).
        `config` overrides the schedule-related fields for the warm-up only.
        Raises TrainingDiverged within a few steps of a NaN or infinite loss."""
        c = config or self.config
        if len(train) != c.steps_per_epoch:
            raise ValueError(f"the loader gives {len(train)} steps per epoch but the config expects "
                             f"{c.steps_per_epoch}; build the config with train_images={len(train.labels)}")
        result = RunResult(seed=seed)
        torch.manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        train_timer, total_timer = Timer(self.device), Timer(self.device)
        diagnostic_views, final_views = c.evaluation_views(final=False), c.evaluation_views(final=True)

        total_timer.start()
        model, ema_model, optimizers = self.networks(c)
        try:
            c.set_whitening(model, train.images, self.ops)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(f"the whitening statistics ran out of device memory; lower --whiten-chunk "
                              f"(now {c.whiten_chunk} images per chunk)") from None
        ema = EMA(ema_model) if ema_model is not None else None
        total_timer.stop()

        step, finite_check = 0, FiniteLossCheck(self.device, c, optimizers)
        for epoch in range(c.epoch_count):
            epoch_timer = Timer(self.device)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
            correct = torch.zeros((), device=self.device, dtype=torch.int64)
            finite_check.start_epoch()
            for timer in (total_timer, train_timer, epoch_timer):
                timer.start()
            for epoch_step, (images, labels) in enumerate(train.epoch(generator, epoch), 1):
                optimizers.set_step(step)
                loss, batch_correct = self.train_step(model, optimizers, images, labels)
                loss_sum += loss.float()
                correct += batch_correct
                if ema is not None and c.ema_updates_after(step):
                    ema.update(model, c.ema_step_decay)
                step += 1
                shown_loss = finite_check.epoch_loss
                finite_check(loss_sum, step, result.epochs, samples=epoch_step * c.batch_size)
                if on_step:
                    on_step(step)
                if on_loss and finite_check.epoch_loss is not shown_loss:
                    on_loss(finite_check.epoch_loss)
                if step == c.total_steps:           # a fractional last epoch ends here
                    break
            for timer in (total_timer, train_timer, epoch_timer):
                timer.stop()

            samples = epoch_step * c.batch_size
            train_loss = loss_sum.item() / samples
            finite_check.poll(result.epochs)            # every copy has landed after .item()
            finite_check.verdict(math.isfinite(train_loss), step, result.epochs)   # steps it skipped

            last = epoch == c.epoch_count - 1
            ema_started = ema is not None and ema.started
            if last:          # the reported result: timed under the total convention
                total_timer.start()
                result.ema_accuracy = self.evaluate(ema.model if ema_started else model, test, final_views)
                total_timer.stop()
            val_accuracy = None
            if last or evaluate_every_epoch:
                val_accuracy = (result.ema_accuracy if last and not ema_started and diagnostic_views is final_views
                                else self.evaluate(model, test, diagnostic_views))
            ema_val_accuracy = None
            if last and ema_started:
                ema_val_accuracy = result.ema_accuracy
            elif ema_started and evaluate_every_epoch:
                ema_val_accuracy = self.evaluate(ema.model, test, diagnostic_views)
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": correct.item() / samples,
                "val_accuracy": val_accuracy,
                "ema_val_accuracy": ema_val_accuracy,
                "seconds": epoch_timer.seconds,
            }
            result.epochs.append(row)
            if on_epoch:
                on_epoch(row)

        if not ema_started:
            result.accuracy = result.ema_accuracy       # the network is the reported one
        elif diagnostic_views is final_views:
            result.accuracy = result.epochs[-1]["val_accuracy"]
        else:
            result.accuracy = self.evaluate(model, test, final_views)
        optimizers.train_all()                          # a group stopped early trains in the next run
        result.train_seconds = train_timer.seconds
        result.total_seconds = total_timer.seconds
        # Copies: the kept networks are overwritten by the next run.
        result.model = copy.deepcopy(model)
        result.ema_model = copy.deepcopy(ema.model) if ema_started else result.model
        return result
