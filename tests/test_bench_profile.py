"""bench/train.py's profiled window and failure isolation (bench/profile_steps.py), on the CPU."""
import gzip
import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from engine.recipes.seed import Config
from engine.training.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--device", "cpu", "--base-width", "8", "--epochs", "2", "--synthetic-size", "1024", "--runs", "1",
        "--csv", ""]


def load(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


profile_steps = load("bench_profile_steps", "profile_steps.py")
plan_window, summarize_events = profile_steps.plan_window, profile_steps.summarize_events


@pytest.fixture(scope="module")
def bench_train():
    return load("bench_train", "train.py")


def test_profile_window_goes_just_inside_epoch_two_on_the_recipe():
    c = Config()
    plan = plan_window(c.steps_per_epoch, c.total_steps, 20)
    assert plan["plain_start"] == c.steps_per_epoch + 1
    assert plan["wait"] == plan["plain_start"] + 20
    assert plan["last_step"] - plan["first_step"] + 1 == 20
    assert c.steps_per_epoch < plan["plain_start"] and plan["last_step"] <= 2 * c.steps_per_epoch


@pytest.mark.parametrize("steps_per_epoch,total,active", [(2, 4, 2), (4, 8, 3), (1, 2, 5), (4, 8, 2)])
def test_profile_window_fits_short_runs(steps_per_epoch, total, active):
    plan = plan_window(steps_per_epoch, total, active)
    assert plan["wait"] >= 1 and plan["last_step"] <= total
    assert plan["wait"] + plan["warmup"] + plan["active"] == plan["last_step"]
    if plan["plain_start"] is not None:
        assert plan["plain_start"] >= 1 and plan["plain_start"] + plan["active"] == plan["wait"]


def test_event_summary_counts_kernels_launches_and_graphs():
    def event(key, count, device=DeviceType.CPU, device_us=0.0, self_us=0.0, total_us=0.0):
        return SimpleNamespace(key=key, count=count, device_type=device, device_time_total=device_us,
                               self_cpu_time_total=self_us, cpu_time_total=total_us)

    events = [
        event("ProfilerStep*", 2, self_us=400.0, total_us=9000.0),
        event("aten::mm", 8, self_us=1000.0, total_us=3000.0, device_us=2000.0),   # CPU op: not a kernel
        event("cudaLaunchKernel", 10, self_us=200.0, total_us=200.0),
        event("cuLaunchKernel", 6, self_us=100.0, total_us=100.0),
        event("cudaGraphLaunch", 2, self_us=50.0, total_us=50.0),
        event("sm90_xmma_gemm_f16f16_f16f32_" + "x" * 80, 8, DeviceType.CUDA, device_us=2000.0),
        event("triton_poi_fused_gelu_0", 20, DeviceType.CUDA, device_us=600.0),
        event("Memcpy HtoD (Pageable -> Device)", 2, DeviceType.CUDA, device_us=40.0),
    ]
    s = summarize_events(events, steps=2, cuda=True, top=8)
    assert s["gpu_kernel_ms_per_step"] == pytest.approx(1.3)
    assert s["gpu_memcpy_memset_ms_per_step"] == pytest.approx(0.02)
    assert s["kernels_per_step"] == 14
    assert s["launch_calls_per_step"] == 9 and s["graph_launches_per_step"] == 1
    assert s["outside_ops_ms_per_step"] == pytest.approx(0.2)
    assert [k["name"][:6] for k in s["top_kernels"]] == ["sm90_x", "triton"]
    assert len(s["top_kernels"][0]["name"]) == 60
    assert s["top_cpu_ops"][0] == {"name": "aten::mm", "self_ms_per_step": 0.5, "total_ms_per_step": 1.5,
                                   "calls_per_step": 4}
    assert all(op["name"] != "ProfilerStep*" for op in s["top_cpu_ops"])
    cpu = summarize_events(events, steps=2, cuda=False)
    assert cpu["gpu_kernel_ms_per_step"] is None and cpu["launch_calls_per_step"] is None


@pytest.mark.slow
def test_profile_steps_writes_a_profile_and_a_trace(bench_train, tmp_path, capsys):
    path, traces = tmp_path / "train.json", tmp_path / "traces"
    code = bench_train.main(TINY + ["--variants", "eager", "--profile-steps", "2", "--json", str(path),
                                    "--trace-dir", str(traces)])
    assert code == 0
    entry = json.loads(path.read_text())["variants"]["eager"]
    assert entry["compile_mode"] == "off" and entry["summary"]["runs"] == 1
    profile = entry["profile"]
    assert profile["steps"] == 2
    assert profile["host_ms_per_step"] > 0 and profile["wall_ms_per_step"] >= profile["host_ms_per_step"]
    assert profile["top_cpu_ops"] and profile["top_cpu_ops"][0]["self_ms_per_step"] > 0
    assert profile["gpu_kernel_ms_per_step"] is None          # CPU: no GPU figures
    with gzip.open(profile["trace"], "rt") as file:
        assert "traceEvents" in json.load(file)
    out = capsys.readouterr().out
    assert "profile seed/eager: 2 steps" in out and "GPU kernels - ms/step" in out


def test_unknown_variant_is_rejected(bench_train, capsys):
    with pytest.raises(SystemExit) as stop:
        bench_train.main(TINY + ["--variants", "eager,warp-drive"])
    assert stop.value.code == 2
    assert "warp-drive" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_variant_does_not_stop_the_others(bench_train, tmp_path, monkeypatch, capsys):
    original = Trainer.warm_up

    def warm_up(self, train, test):
        if self.compile:
            raise RuntimeError("inductor exploded\nsecond line")
        return original(self, train, test)

    monkeypatch.setattr(Trainer, "warm_up", warm_up)
    csv_path, path = tmp_path / "train.csv", tmp_path / "train.json"
    code = bench_train.main(TINY[:-2] + ["--variants", "compile+cudagraphs,eager", "--json", str(path),
                                         "--csv", str(csv_path)])
    assert code == 1
    variants = json.loads(path.read_text())["variants"]
    assert variants["compile+cudagraphs"]["error"] == "RuntimeError: inductor exploded"
    assert variants["compile+cudagraphs"]["compile_mode"] == "reduce-overhead"
    assert variants["eager"]["summary"]["runs"] == 1
    out = capsys.readouterr().out
    assert "[compile+cudagraphs] FAILED: RuntimeError: inductor exploded" in out and "Traceback" in out
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 2 and ",eager,off," in rows[1]


@pytest.mark.slow
def test_a_failing_profile_keeps_the_timed_figures(bench_train, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no profiler today")

    monkeypatch.setattr(bench_train, "profile_run", broken)
    path = tmp_path / "train.json"
    assert bench_train.main(TINY + ["--variants", "eager", "--profile-steps", "2", "--json", str(path)]) == 0
    entry = json.loads(path.read_text())["variants"]["eager"]
    assert entry["summary"]["runs"] == 1 and entry["profile"]["error"] == "RuntimeError: no profiler today"
    assert "profile seed/eager: FAILED: RuntimeError: no profiler today" in capsys.readouterr().out
