"""What a bench/train.py variant really ran: its kernel launches over one training step.

A variant's name says what it runs, and `check` holds it to that (from the name
alone, never from the table that maps names to settings, which is what a slip
would change):

    eager           none of the engine's Triton kernels, no compiled code
    compile         compiled code, none of our kernels (on a GPU: Inductor's own kernels)
    ...+triton      compiled code that launches our kernels

`count_launches` trains step 2 of one more run (after the warm-up, so everything
is compiled already; the run stops right after it) and counts, in that step:

* `ours`: launches of the kernels in kernels/*.py. Each of our @triton.jit
  kernels gets a pre-run hook, which Triton calls before every launch it makes of
  that kernel (in the CPU interpreter, and on a GPU outside torch.compile). On a
  GPU, a compiled graph launches Inductor's copies of our kernels instead (named
  `<kernel>_<k>`), which no hook sees: there `ours` counts the GPU kernels of
  those names in a torch.profiler window over the step.
* `inductor_kernels` (GPU only, else None): Inductor's own kernels (`triton_...`).
* `compiled_regions`: torch.compile'd functions entered ("Torch-Compiled Region").
* `graph_launches`: CUDA graph replays (the cudagraphs variants).

A CUDA-graph variant whose window shows graph replays but no GPU kernel at all
cannot be judged (the profiler saw nothing inside the graphs): `check` then
returns a note instead of failing.
"""
from __future__ import annotations

import re
from collections import Counter

import torch

import kernels

COMPILED_REGION = "Torch-Compiled Region"
GRAPH_LAUNCH = re.compile(r"^(cuda|cu)GraphLaunch")


class VariantMismatch(RuntimeError):
    """A variant ran something else than its name says; `launches` holds the counts."""

    def __init__(self, message: str, launches: dict):
        super().__init__(message)
        self.launches = launches


class _Counted(Exception):
    """Raised by the window once its step is counted: ends the counting run."""


def _is_cuda_event(event) -> bool:
    return str(getattr(event, "device_type", "")).split(".")[-1] == "CUDA"


class _Window:
    """The on_step hook of the counting run: counts step `start + 1`."""

    def __init__(self, device: torch.device, start: int):
        self.cuda, self.start, self.done = device.type == "cuda", start, False
        self.hooked, self.kernels = Counter(), kernels.triton_kernels()
        self.hooks = {name: self._hook(name) for name in self.kernels}
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.recording = False

    def _hook(self, name):
        def hook(*args, **kwargs):
            if self.recording:
                self.hooked[name] += 1
        return hook

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def begin(self):
        self._sync()
        for name, kernel in self.kernels.items():
            kernel.add_pre_run_hook(self.hooks[name])
        self.profiler.__enter__()
        self.recording = True

    def end(self):
        if not self.recording:
            return
        self._sync()
        self.recording = False
        self.profiler.__exit__(None, None, None)
        for name, kernel in self.kernels.items():
            if self.hooks[name] in kernel.pre_run_hooks:
                kernel.pre_run_hooks.remove(self.hooks[name])

    def __call__(self, steps_done: int):
        if steps_done == self.start:
            self.begin()
        elif steps_done == self.start + 1:
            self.end()
            self.done = True
            raise _Counted

    def counts(self) -> dict:
        names = "|".join(re.escape(name.split(".", 1)[1].lstrip("_")) for name in self.kernels)
        ours_on_gpu = re.compile(rf"^_*({names})(_\d+)?$")
        device, compiled, graphs = Counter(), 0, 0
        for event in self.profiler.key_averages():
            if _is_cuda_event(event):
                device[event.key] += event.count
            elif event.key.startswith(COMPILED_REGION):
                compiled += event.count
            elif GRAPH_LAUNCH.match(event.key):
                graphs += event.count
        on_gpu = {name: n for name, n in device.items() if ours_on_gpu.match(name)}
        return {
            "steps": 1,
            "ours": sum(on_gpu.values()) if self.cuda else sum(self.hooked.values()),
            "by_kernel": dict(sorted((on_gpu if self.cuda else self.hooked).items())),
            "inductor_kernels": sum(n for name, n in device.items() if name.startswith("triton_")) if self.cuda else None,
            "device_kernels": sum(device.values()) if self.cuda else None,
            "compiled_regions": compiled,
            "graph_launches": graphs,
        }


def count_launches(trainer, train, test, seed: int) -> dict:
    """The counts of the module docstring for one training step of `trainer` (a run's
    step 2, or step 1 of a one-step run)."""
    start = 1 if trainer.config.total_steps >= 2 else 0
    window = _Window(trainer.device, start)
    if start == 0:
        window.begin()
    try:
        trainer.run(train, test, seed, evaluate_every_epoch=False, on_step=window)
    except _Counted:
        pass
    finally:
        window.end()
    return window.counts()


def check(name: str, launches: dict) -> str | None:
    """Raise VariantMismatch unless `launches` fit what the variant `name` says it runs;
    returns a note when they cannot be judged (see the module docstring), else None."""
    parts = name.split("+")
    compiled, triton = parts[0] == "compile", "triton" in parts
    if launches["device_kernels"] == 0 and launches["graph_launches"]:
        return "the profiler saw no kernel inside the CUDA graphs: launches not checked"
    problems = []
    if triton and not launches["ours"]:
        problems.append("launched none of the engine's Triton kernels")
    if not triton and launches["ours"]:
        problems.append(f"launched the engine's Triton kernels {launches['ours']} time(s)")
    if compiled and not launches["compiled_regions"]:
        problems.append("ran no compiled code")
    if not compiled and launches["compiled_regions"]:
        problems.append("ran compiled code")
    if compiled and not triton and launches["inductor_kernels"] == 0:
        problems.append("launched none of Inductor's kernels")
    if problems:
        raise VariantMismatch(f"variant {name} {' and '.join(problems)} in a training step "
                              f"({format_counts(launches)})", launches)
    return None


def format_counts(launches: dict) -> str:
    inductor = launches["inductor_kernels"]
    return (f"our kernels {launches['ours']}, compiled regions {launches['compiled_regions']}"
            + ("" if inductor is None else f", Inductor kernels {inductor}")
            + (f", graph launches {launches['graph_launches']}" if launches["graph_launches"] else "")
            + " per step")
