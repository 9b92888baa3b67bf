"""Where the time of a training step goes: a torch.profiler window over one run.

Used by bench/train.py --profile-steps K: after a variant's timed runs, the same
(already warmed-up and compiled) Trainer trains once more with `StepProfiler.on_step`
as its `on_step` hook. The run stops right after the window (`StopProfiling`), so it
costs a fraction of a run; it never counts in the statistics.

The window, placed just inside epoch 2 when the run is long enough (the epoch
boundary's host synchronisation stays out of it):

    steps  1 .. p0              nothing recorded
    steps  p0+1 .. p0+K         "unprofiled" window: host and wall clock only
    steps  p0+K+1 .. p0+K+3     profiler warm-up (recorded, discarded)
    steps  p0+K+4 .. p0+2K+3    profiled window: K steps recorded

Both windows start from an idle GPU (torch.cuda.synchronize on CUDA) and report:
host ms/step (the CPU's time to issue the steps: perf_counter, no sync at the end)
and wall ms/step (synchronised at the end too). The profiled window adds GPU kernel
time, kernels and host launch calls per step, the top kernels by GPU time and the
top host operations by self CPU time. A short run keeps only the profiled window,
starting as late as fits. On a CPU the GPU figures are None.
"""
from __future__ import annotations

import os
import re
import time

import torch

LAUNCH_CALL = re.compile(r"^(cuda|cu)(LaunchKernel\w*|LaunchCooperativeKernel\w*|GraphLaunch\w*)$")
GRAPH_LAUNCH = re.compile(r"^(cuda|cu)GraphLaunch")
STEP_EVENT = re.compile(r"^ProfilerStep(#\d+|\*)$")   # key_averages names it ProfilerStep*
NAME_WIDTH = 60


class StopProfiling(Exception):
    """Raised by on_step once the window is recorded: ends the profiling run early."""


def plan_window(steps_per_epoch: int, total_steps: int, active: int, warmup: int = 3) -> dict:
    """Where the windows go (see the module docstring); raises ValueError if no step fits."""
    if active < 1:
        raise ValueError(f"--profile-steps must be at least 1, got {active}")
    if total_steps < 2:
        raise ValueError(f"a run of {total_steps} step(s) is too short to profile")
    active = min(active, total_steps - 1)              # at least one step before the window
    warmup = max(0, min(warmup, total_steps - 1 - active))
    plain_start = steps_per_epoch + 1                  # on_step(spe + 1): first step of epoch 2 done
    if plain_start + 2 * active + warmup > total_steps:
        plain_start = total_steps - 2 * active - warmup
    if plain_start >= 1:
        wait = plain_start + active
    else:                                              # short run: the profiled window alone, late as fits
        plain_start = None
        wait = max(1, min(steps_per_epoch + 1, total_steps - warmup - active))
    first = wait + warmup + 1
    return {"wait": wait, "warmup": warmup, "active": active, "plain_start": plain_start,
            "first_step": first, "last_step": first + active - 1,
            "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}


def _device_time_us(event) -> float:
    for field in ("device_time_total", "cuda_time_total"):   # torch >= 2.4 / older name
        value = getattr(event, field, None)
        if value is not None:
            return float(value)
    return 0.0


def _is_device_event(event) -> bool:
    device_type = getattr(event, "device_type", None)
    return device_type is not None and str(device_type).split(".")[-1] not in ("CPU", "Meta")


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[:NAME_WIDTH - 3] + "..."


def summarize_events(averages, steps: int, cuda: bool, top: int = 8) -> dict:
    """Per-step figures from `profiler.key_averages()` over a window of `steps` steps."""
    kernels, memory_us, launch_calls, graph_launches = [], 0.0, 0, 0
    cpu_ops, self_cpu_us, step_self_us = [], 0.0, 0.0
    for event in averages:
        name, count = event.key, event.count
        if _is_device_event(event):
            if name.startswith(("Memcpy", "Memset")):
                memory_us += _device_time_us(event)
            elif "Sync" not in name:
                kernels.append((name, _device_time_us(event), count))
            continue
        self_us = float(getattr(event, "self_cpu_time_total", 0.0) or 0.0)
        if STEP_EVENT.match(name):
            step_self_us += self_us
            continue
        self_cpu_us += self_us
        if LAUNCH_CALL.match(name):
            launch_calls += count
            graph_launches += count if GRAPH_LAUNCH.match(name) else 0
        cpu_ops.append((name, self_us, float(getattr(event, "cpu_time_total", 0.0) or 0.0), count))
    kernels.sort(key=lambda k: -k[1])
    cpu_ops.sort(key=lambda op: -op[1])
    per = lambda us: us / steps / 1000          # microseconds over the window -> ms per step
    return {
        "gpu_kernel_ms_per_step": per(sum(k[1] for k in kernels)) if cuda else None,
        "gpu_memcpy_memset_ms_per_step": per(memory_us) if cuda else None,
        "kernels_per_step": sum(k[2] for k in kernels) / steps if cuda else None,
        "launch_calls_per_step": launch_calls / steps if cuda else None,
        "graph_launches_per_step": graph_launches / steps if cuda else None,
        "cpu_ops_self_ms_per_step": per(self_cpu_us),
        "outside_ops_ms_per_step": per(step_self_us),
        "top_kernels": [{"name": _short(n), "ms_per_step": per(us), "calls_per_step": c / steps}
                        for n, us, c in kernels[:top]],
        "top_cpu_ops": [{"name": _short(n), "self_ms_per_step": per(s), "total_ms_per_step": per(t),
                         "calls_per_step": c / steps} for n, s, t, c in cpu_ops[:top]],
    }


class StepProfiler:
    """The `on_step` hook of one profiling run; `report` holds the figures once `done`."""

    def __init__(self, device, steps_per_epoch: int, total_steps: int, active: int,
                 trace_path: str | None = None, trace_max_mb: float = 15.0, top: int = 8):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.plan = plan_window(steps_per_epoch, total_steps, active)
        self.trace_path, self.trace_max_mb, self.top = trace_path, trace_max_mb, top
        self.marks, self.report, self.done = {}, None, False
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        p = self.plan
        self.profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=p["wait"], warmup=p["warmup"], active=p["active"], repeat=1),
            on_trace_ready=self._trace_ready)

    def __enter__(self):
        self.profiler.__enter__()
        return self

    def __exit__(self, *exc):
        self.profiler.__exit__(*exc)
        return isinstance(exc[1], StopProfiling) if exc[0] else False

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def on_step(self, step: int):
        p, k, marks = self.plan, self.plan["active"], self.marks
        if p["plain_start"] is not None:
            if step == p["plain_start"]:
                self._sync()
                marks["plain_start"] = time.perf_counter()
            elif step == p["plain_start"] + k:
                marks["plain_host"] = time.perf_counter()
                self._sync()
                marks["plain_wall"] = time.perf_counter()
        begin, end = p["first_step"] - 1, p["last_step"]
        if step == begin:
            self._sync()
        elif step == end:
            marks["host"] = time.perf_counter()
            self._sync()
            marks["wall"] = time.perf_counter()
        self.profiler.step()           # at `end`: stops recording and calls _trace_ready
        if step == begin:
            marks["start"] = time.perf_counter()
        elif step == end:
            self.done = True
            raise StopProfiling

    def _trace_ready(self, profiler):
        p, k, m = self.plan, self.plan["active"], self.marks
        ms = lambda a, b: 1000 * (m[b] - m[a]) / k if a in m and b in m else None
        report = {"steps": k, "first_step": p["first_step"], "last_step": p["last_step"],
                  "steps_per_epoch": p["steps_per_epoch"], "total_steps": p["total_steps"],
                  "host_ms_per_step": ms("start", "host"), "wall_ms_per_step": ms("start", "wall"),
                  "unprofiled_host_ms_per_step": ms("plain_start", "plain_host"),
                  "unprofiled_wall_ms_per_step": ms("plain_start", "plain_wall")}
        report.update(summarize_events(profiler.key_averages(), k, self.cuda, self.top))
        gpu = report["gpu_kernel_ms_per_step"]
        wall = report["unprofiled_wall_ms_per_step"] or report["wall_ms_per_step"]
        report["gpu_busy_share"] = gpu / wall if gpu is not None and wall else None
        report["trace"] = self._export(profiler)
        self.report = report

    def _export(self, profiler):
        if not self.trace_path:
            return None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.trace_path)), exist_ok=True)
            profiler.export_chrome_trace(self.trace_path)      # gzip'd when the name ends in .gz
            size_mb = os.path.getsize(self.trace_path) / 1e6
            if size_mb > self.trace_max_mb:
                os.remove(self.trace_path)
                return f"skipped: {size_mb:.1f} MB > {self.trace_max_mb:g} MB"
            return self.trace_path
        except Exception as error:    # a trace is a bonus: never lose the figures for it
            return f"failed: {type(error).__name__}: {error}"


def profile_run(trainer, train, test, seed: int, active: int, trace_path: str | None = None,
                trace_max_mb: float = 15.0, top: int = 8) -> dict:
    """One extra run of `trainer` with a StepProfiler; returns its report (and the seconds it took)."""
    c = trainer.config
    start = time.perf_counter()
    profiler = StepProfiler(trainer.device, c.steps_per_epoch, c.total_steps, active,
                            trace_path, trace_max_mb, top)
    with profiler:
        trainer.run(train, test, seed, evaluate_every_epoch=False, on_step=profiler.on_step)
    if not profiler.done or profiler.report is None:
        raise RuntimeError(f"the profiling run ended before its window (steps {profiler.plan['first_step']}"
                           f"-{profiler.plan['last_step']} of {c.total_steps})")
    profiler.report["seconds"] = time.perf_counter() - start
    return profiler.report


def fmt_or_dash(value, spec: str, suffix: str = "") -> str:
    """`value` formatted by `spec` (+ suffix), or '-' for None."""
    return "-" if value is None else format(value, spec) + suffix


def format_line(name: str, r: dict) -> str:
    """The one-line verdict per variant (device_check's summary greps lines starting 'profile ')."""
    if "error" in r:
        return f"profile {name}: FAILED: {r['error']}"
    busy = r.get("gpu_busy_share")
    return (f"profile {name}: {r['steps']} steps ({r['first_step']}-{r['last_step']}), "
            f"host {fmt_or_dash(r['host_ms_per_step'], '.2f')} ms/step, wall {fmt_or_dash(r['wall_ms_per_step'], '.2f')} "
            f"(unprofiled host {fmt_or_dash(r['unprofiled_host_ms_per_step'], '.2f')}, "
            f"wall {fmt_or_dash(r['unprofiled_wall_ms_per_step'], '.2f')}), "
            f"GPU kernels {fmt_or_dash(r['gpu_kernel_ms_per_step'], '.2f')} ms/step "
            f"({fmt_or_dash(None if busy is None else 100 * busy, '.0f', '% busy')}), "
            f"{fmt_or_dash(r['kernels_per_step'], '.0f')} kernels/step, "
            f"{fmt_or_dash(r['launch_calls_per_step'], '.0f')} launch calls/step "
            f"({fmt_or_dash(r['graph_launches_per_step'], '.1f')} graph launches)")


def format_detail(name: str, r: dict) -> str:
    """The top kernels and host operations of one variant."""
    if "error" in r:
        return ""
    lines = [f"top kernels of {name} by GPU time (ms/step, calls/step):"]
    lines += [f"  {k['ms_per_step']:8.3f} {k['calls_per_step']:7.1f}  {k['name']}" for k in r["top_kernels"]]
    if not r["top_kernels"]:
        lines.append("  - (no CUDA activity recorded)")
    lines.append(f"top host ops of {name} by self CPU time (self ms/step, total ms/step, calls/step); "
                 f"all ops {r['cpu_ops_self_ms_per_step']:.2f} ms/step self, outside any op "
                 f"(Python, waits) {r['outside_ops_ms_per_step']:.2f}:")
    lines += [f"  {o['self_ms_per_step']:8.3f} {o['total_ms_per_step']:8.3f} {o['calls_per_step']:7.1f}  {o['name']}"
              for o in r["top_cpu_ops"]]
    if r.get("trace"):
        lines.append(f"  trace: {r['trace']}")
    return "\n".join(lines)
