"""Training and evaluation (SPEC "Training"): one run, and the pieces it is made of.

A `Trainer` holds what every run of a process shares (device, dtype, the
operation table, and the compiled functions when --compile is on, so that
they are compiled once and reused by every run); `Trainer.run(seed)` trains
one network from scratch and returns its `RunResult`.
"""
from __future__ import annotations

import copy
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from engine.checks import as_device, as_dtype, require_type
from engine.config import Config, lr_factor
from engine.data import CifarLoader
from engine.model import Network, build_network, parameter_groups
from engine.ops import Ops
from engine.whitening import whitening_weight

COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: `step` (steps done when it was seen), `lr` (the
    non-bias group's rate there) and the finished epochs' rows say where."""

    def __init__(self, message: str, step: int | None = None, lr: float | None = None, epochs=()):
        super().__init__(message)
        self.step, self.lr, self.epochs = step, lr, list(epochs)


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names the setting to lower."""


@dataclass
class RunResult:
    seed: int
    accuracy: float | None = None          # the network's final accuracy (flip TTA)
    ema_accuracy: float | None = None      # the EMA network's final accuracy: the reported result
    train_seconds: float = 0.0             # hlb convention: training loops only
    total_seconds: float = 0.0             # airbench convention: whitening + training + final TTA eval
    epochs: list = field(default_factory=list)
    status: str = "ok"                     # "ok" or "failed"
    error: str | None = None
    model: Network | None = field(default=None, repr=False)      # the trained network
    ema_model: Network | None = field(default=None, repr=False)  # its EMA copy: the reported network

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
    sync: on CUDA, every `every` steps an on-device "loss sum is finite" flag is copied to
    pinned host memory (non_blocking) behind a recorded event, and read only once the event
    has completed, so the check lags a few steps but never waits. On the CPU it reads the
    flag directly. The loss sum covers every step of the epoch, so no bad step is missed."""

    def __init__(self, device: torch.device, config: Config, every: int = 4, slots: int = 8):
        self.cuda, self.config = device.type == "cuda", config
        self.every = every if self.cuda else 1
        self.last_good = 0                          # steps done at the last check that passed
        if self.cuda:
            self.flags = torch.ones(slots, dtype=torch.bool, pin_memory=True)
            self.free, self.pending = list(range(slots)), deque()

    def __call__(self, loss_sum: torch.Tensor, steps_done: int, epochs=()):
        if self.cuda:
            self.poll(epochs)
        if steps_done % self.every:
            return
        if not self.cuda:
            self.verdict(bool(torch.isfinite(loss_sum)), steps_done, epochs)
        elif self.free:                             # every slot still in flight: skip, never block
            slot = self.free.pop()
            self.flags[slot:slot + 1].copy_(torch.isfinite(loss_sum).view(1), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append((event, slot, steps_done))

    def poll(self, epochs=()):
        """Read the flags whose copies have landed (all of them after a synchronisation)."""
        while self.cuda and self.pending and self.pending[0][0].query():
            _, slot, steps_done = self.pending.popleft()
            self.free.append(slot)
            self.verdict(bool(self.flags[slot]), steps_done, epochs)

    def verdict(self, finite: bool, steps_done: int, epochs=()):
        """Raise TrainingDiverged, naming the step and the learning rate, unless `finite`."""
        if finite:
            self.last_good = max(self.last_good, steps_done)
            return
        c = self.config
        lr = c.lr * lr_factor(steps_done - 1, c)
        self.pending = deque()                      # the run is over: drop later flags
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at step {steps_done} of {c.total_steps} "
            f"(epoch {(steps_done - 1) // c.steps_per_epoch + 1}; finite up to step {self.last_good}), "
            f"learning rate {lr:.4g} (bias group {lr * c.bias_scale:.4g}); lower --lr or check the data",
            step=steps_done, lr=lr, epochs=epochs)


def loss_function(logits: torch.Tensor, labels: torch.Tensor, config: Config) -> torch.Tensor:
    """Label-smoothed cross-entropy per sample, scaled by 1/16, summed in the logits'
    dtype, then unscaled: the sum, not the mean, is back-propagated."""
    losses = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing, reduction="none")
    return (losses * config.loss_scale).sum() / config.loss_scale


def nesterov_sgd_(params, grads, buffers, lr, weight_decay: float, momentum: float):
    """One SGD step with Nesterov momentum over lists of tensors, the same arithmetic
    as torch.optim.SGD(nesterov=True) (tests compare the two). `lr` is a 0-dim tensor so
    that a compiled version of this function serves every step and every run."""
    grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    torch._foreach_add_(grads, buffers, alpha=momentum)
    torch._foreach_mul_(grads, lr)
    torch._foreach_sub_(params, grads)


def nesterov_sgd_groups_(groups):
    """nesterov_sgd_ for every (params, grads, buffers, lr, weight_decay, momentum) group:
    compiled, the whole update of a step is one graph and one call."""
    for params, grads, buffers, lr, weight_decay, momentum in groups:
        nesterov_sgd_(params, grads, buffers, lr, weight_decay, momentum)


class NesterovSGD:
    """One parameter group: its parameters, momentum buffers, peak lr and weight decay."""

    def __init__(self, params: list, peak_lr: float, weight_decay: float, momentum: float):
        self.params, self.peak_lr = list(params), peak_lr
        self.weight_decay, self.momentum = weight_decay, momentum
        self.buffers = [torch.zeros_like(p) for p in self.params]
        device = self.params[0].device if self.params else "cpu"
        self.lr = torch.tensor(peak_lr, dtype=torch.float32, device=device)

    def group(self) -> tuple:
        """What nesterov_sgd_ takes: (params, grads, buffers, lr, weight_decay, momentum)."""
        return (self.params, [p.grad for p in self.params], self.buffers, self.lr,
                self.weight_decay, self.momentum)

    def reset(self, peak_lr: float, weight_decay: float, momentum: float):
        """For a new run on the same parameters: zero momentum, the given settings."""
        self.peak_lr, self.weight_decay, self.momentum = peak_lr, weight_decay, momentum
        for buffer in self.buffers:
            buffer.zero_()
        self.lr.fill_(peak_lr)
        self.zero_grad()

    def step(self, update=nesterov_sgd_):
        """Apply `update` (nesterov_sgd_ or its compiled version), then drop the gradients."""
        with torch.no_grad():
            update(*self.group())
        self.zero_grad()

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def step_optimizers(optimizers, update=nesterov_sgd_groups_):
    """One update of every group in a single `update` call (nesterov_sgd_groups_ or its
    compiled version), then drop the gradients."""
    with torch.no_grad():
        update([optimizer.group() for optimizer in optimizers])
    for optimizer in optimizers:
        optimizer.zero_grad()


def optimizer_settings(config: Config) -> list[tuple[float, float, float]]:
    """(peak lr, weight decay, momentum) of the two groups: non-bias, then 'bias'."""
    return [(config.lr, config.weight_decay, config.momentum),
            (config.bias_lr, config.bias_weight_decay, config.momentum)]


def make_optimizers(model: Network, config: Config) -> list[NesterovSGD]:
    """Two Nesterov SGD groups: all non-bias trainable parameters, and the 'bias' ones."""
    bias, other = parameter_groups(model)
    return [NesterovSGD(params, *settings) for params, settings in zip((other, bias), optimizer_settings(config))]


def set_learning_rates(optimizers, step: int, config: Config):
    factor = lr_factor(step, config)
    for optimizer in optimizers:
        optimizer.lr.fill_(optimizer.peak_lr * factor)


class EMA:
    """Exponential moving average of the whole state (parameters and BatchNorm
    statistics). The first update copies the network; later ones blend with `decay`."""

    def __init__(self, model: Network):
        self.model = model            # a second network of the same architecture
        self.started = False

    @torch.no_grad()
    def update(self, network: Network, decay: float):
        ema_state, state = self.model.state_dict(), network.state_dict()
        if not self.started:
            for name, value in state.items():
                ema_state[name].copy_(value)
            self.started = True
            return
        floating = [name for name, value in state.items() if value.is_floating_point()]
        torch._foreach_lerp_([ema_state[n] for n in floating], [state[n] for n in floating], 1 - decay)
        for name, value in state.items():
            if not value.is_floating_point():
                ema_state[name].copy_(value)


@torch.no_grad()
def evaluate(model: Network, loader: CifarLoader, tta_flip: bool = True,
             forward: Callable | None = None) -> float:
    """Top-1 accuracy over every test image; with `tta_flip`, each batch and its
    mirror go through the network together and their logits are averaged."""
    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=loader.labels.device, dtype=torch.int64)
    for images, labels in loader.epoch():
        if tta_flip:
            logits = forward(torch.cat([images, images.flip(-1)]))
            logits = 0.5 * (logits[:len(images)] + logits[len(images):])
        else:
            logits = forward(images)
        correct += (logits.argmax(1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(loader.labels)


def _same_tensors(a: Network, b: Network) -> bool:
    """Whether two networks' states have the same names, shapes and dtypes."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)


class Trainer:
    """Trains runs of the recipe on one device. What runs share is built once here:
    with `compile`, the forward + loss (its backward compiled with it), the optimizer
    update and the evaluation forward are compiled on first use, in `warm_up`, and
    reused by every later run without recompiling."""

    def __init__(self, config: Config, ops: Ops, device, dtype, compile: bool = False,
                 compile_mode: str = "default"):
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {compile_mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        require_type("config", config, Config, "an engine.Config")
        require_type("ops", ops, Ops, "an operation table from engine.ops.make_ops")
        self.config, self.ops = config, ops
        self.device, self.dtype = as_device(device), as_dtype(dtype)
        self.compile, self.compile_mode = compile, compile_mode
        self.compile_seconds = None
        self.kept = None        # (network, EMA network, optimizers), reused by every run: see networks()
        self.forward_loss, self.update, self.logits = self._forward_loss, nesterov_sgd_groups_, self._logits
        if compile:
            options = dict(mode=compile_mode, fullgraph=True)
            self.forward_loss = torch.compile(self._forward_loss, **options)
            self.update = torch.compile(nesterov_sgd_groups_, **options)
            self.logits = torch.compile(self._logits, **options)

    def _forward_loss(self, model: Network, images, labels):
        logits = model(images)
        loss = loss_function(logits, labels, self.config)
        return loss, (logits.argmax(1) == labels).sum()

    @staticmethod
    def _logits(model: Network, images):
        return model(images)

    def networks(self, config: Config, whitening: torch.Tensor):
        """The run's network, EMA network and optimizers. Built by the first run and kept:
        every later run loads a freshly seeded network's values into the same tensors (and
        zeroes the momentum), so compiled code, and with --compile-mode reduce-overhead its
        CUDA graphs, always see the same parameters and buffers at the same addresses.
        The values are exactly those of a network built for this run alone."""
        fresh = build_network(config, self.ops, self.device, self.dtype, whitening)
        if self.kept is None or not _same_tensors(self.kept[0], fresh):
            optimizers = make_optimizers(fresh, config)
            if self.compile:      # CUDA graphs may then update these in place
                for optimizer in optimizers:
                    for tensor in optimizer.buffers + [optimizer.lr]:
                        torch._dynamo.mark_static_address(tensor)
            self.kept = (fresh, build_network(config, self.ops, self.device, self.dtype), optimizers)
            return self.kept
        model, ema_model, optimizers = self.kept
        model.load_state_dict(fresh.state_dict())       # copies into the kept tensors, in place
        for optimizer, settings in zip(optimizers, optimizer_settings(config)):
            optimizer.reset(*settings)
        return self.kept

    def whitening(self, train: CifarLoader) -> torch.Tensor:
        c = self.config
        return whitening_weight(train.images, c.whiten_kernel, c.whiten_eps, c.whiten_chunk,
                                self.ops.patch_covariance)

    def train_step(self, model: Network, optimizers, images, labels):
        loss, correct = self.forward_loss(model, images, labels)
        loss.backward()
        step_optimizers(optimizers, self.update)
        return loss.detach(), correct

    def evaluate(self, model: Network, test: CifarLoader) -> float:
        return evaluate(model, test, self.config.tta_flip, forward=lambda x: self.logits(model, x))

    def warm_up(self, train: CifarLoader, test: CifarLoader) -> float:
        """A short run on synthetic data shaped like the real batches: compiles every
        function (train and eval modes) and lets cuDNN pick its algorithms. Returns its
        seconds; with `compile` they are also kept as `compile_seconds`."""
        from engine.data import make_synthetic

        c = self.config
        fake = make_synthetic(2 * c.batch_size, seed=12345, test_size=len(test.labels))
        warm_config = c.replace(train_images=2 * c.batch_size, epochs=2, ema_epochs=1)
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
            config: Config | None = None, evaluate_every_epoch: bool = True,
            on_step: Callable | None = None) -> RunResult:
        """Train one network from scratch; `on_epoch(row)` sees each epoch's table row and
        `on_step(steps_done)` a plain int after every step (progress bars: no sync).
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

        total_timer.start()
        try:
            whitening = self.whitening(train)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(f"the whitening covariance ran out of device memory; lower --whiten-chunk "
                              f"(now {c.whiten_chunk} images per chunk)") from None
        model, ema_model, optimizers = self.networks(c, whitening)
        ema = EMA(ema_model)
        total_timer.stop()

        step, finite_check = 0, FiniteLossCheck(self.device, c)
        for epoch in range(c.epochs):
            epoch_timer = Timer(self.device)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
            correct = torch.zeros((), device=self.device, dtype=torch.int64)
            for timer in (total_timer, train_timer, epoch_timer):
                timer.start()
            for images, labels in train.epoch(generator):
                set_learning_rates(optimizers, step, c)
                loss, batch_correct = self.train_step(model, optimizers, images, labels)
                loss_sum += loss.float()
                correct += batch_correct
                if c.ema_updates_after(step):
                    ema.update(model, c.ema_step_decay)
                step += 1
                finite_check(loss_sum, step, result.epochs)
                if on_step:
                    on_step(step)
            for timer in (total_timer, train_timer, epoch_timer):
                timer.stop()

            samples = c.steps_per_epoch * c.batch_size
            train_loss = loss_sum.item() / samples
            finite_check.poll(result.epochs)            # every copy has landed after .item()
            finite_check.verdict(math.isfinite(train_loss), step, result.epochs)   # steps it skipped

            last = epoch == c.epochs - 1
            if last and ema.started:      # the reported result: timed under the total convention
                total_timer.start()
                result.ema_accuracy = self.evaluate(ema.model, test)
                total_timer.stop()
            diagnose = last or evaluate_every_epoch
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_accuracy": correct.item() / samples,
                "val_accuracy": self.evaluate(model, test) if diagnose else None,
                "ema_val_accuracy": (result.ema_accuracy if last else
                                     self.evaluate(ema.model, test) if ema.started and diagnose else None),
                "seconds": epoch_timer.seconds,
            }
            result.epochs.append(row)
            if on_epoch:
                on_epoch(row)

        result.accuracy = result.epochs[-1]["val_accuracy"]
        if result.ema_accuracy is None:   # no EMA epochs configured: the network itself
            result.ema_accuracy = result.accuracy
        result.train_seconds = train_timer.seconds
        result.total_seconds = total_timer.seconds
        # Copies: the kept networks are overwritten by the next run.
        result.model = copy.deepcopy(model)
        result.ema_model = copy.deepcopy(ema.model) if ema.started else result.model
        return result
