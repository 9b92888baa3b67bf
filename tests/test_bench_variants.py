"""bench/train.py on the CPU at tiny sizes: each variant proves it ran what its name says
(the kernel launches of one training step, bench/kernel_launches.py), and every CSV
column says what the JSON it comes from says.

torch.compile runs with Dynamo's "eager" backend here (the graphs traced and run as
traced, no Inductor: a cold Inductor compile of the network takes minutes on two
CPU cores); Triton kernels run in the interpreter (tests/conftest.py). A variant's
compiled code still shows as "Torch-Compiled Region"s and its Triton kernels as
launches, which is what the checks look at.
"""
import csv
import importlib.util
import json
import os
import statistics
from types import SimpleNamespace

import pytest
import torch

from engine.training.data import CifarLoader, make_synthetic
from engine.recipes import make_config
from engine.training.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--device", "cpu", "--base-width", "8", "--epochs", "2", "--batch-size", "10", "--synthetic-size", "20"]
# One training step of the seed network with --kernels triton: 8 BatchNorm + GELU (the first
# of each group with the max-pool folded in: its statistics in the pool's kernel, its dx pass
# writing the pool's input gradient; the last of each full group with the gate) and 2
# squeeze-and-excitation gates, forward and backward.
STEP_LAUNCHES = {"affine_gelu._fwd_kernel": 8, "affine_gelu._bwd_cl_kernel": 8, "affine_gelu._bn_finish_kernel": 8,
                 "affine_gelu._bn_dx_kernel": 3, "affine_gelu._bn_gate_dx_kernel": 2,
                 "pool_batch_norm_gelu._pool_stats_kernel": 3, "pool_batch_norm_gelu._bn_dx_unpool_kernel": 3,
                 "squeeze_excite._fwd_kernel": 2, "squeeze_excite._bwd_kernel": 2,
                 "squeeze_excite._wgrad_kernel": 2}


def load(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train():
    return load("bench_train_variants", "train.py")


@pytest.fixture
def dynamo_eager(monkeypatch):
    """torch.compile with Dynamo's eager backend (module docstring)."""
    real = torch.compile

    def compile(fn, **options):
        return real(fn, backend="eager", fullgraph=options.get("fullgraph", False), dynamic=options.get("dynamic"))
    monkeypatch.setattr(torch, "compile", compile)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_setup():
    config = make_config("seed", base_width=8, epochs=2, batch_size=10, train_images=20)
    data = make_synthetic(20, seed=0, test_size=4)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    return config, train, test


@pytest.mark.parametrize("name", ["eager", pytest.param("compile", marks=pytest.mark.slow),
                                  pytest.param("compile+triton", marks=pytest.mark.slow)])
def test_each_variant_launches_what_its_name_says(bench_train, dynamo_eager, monkeypatch, name):
    """The variant as bench/train.py builds it (its table entry, its Trainer): eager runs
    no compiled code and none of our kernels; compile runs compiled code and none of our
    kernels; compile+triton runs compiled code that launches every one of the network's
    kernels, forward and backward. (The warm-up is skipped: the count's run compiles.)"""
    monkeypatch.setattr(Trainer, "warm_up", lambda self, train, test: 0.0)
    config, train, test = tiny_setup()
    args = SimpleNamespace(compile_mode="default", seed=0)
    trainer, _, launches = bench_train.prepare_variant(name, args, config, train, test, torch.device("cpu"),
                                                       torch.float32)
    assert trainer.compile == name.startswith("compile")
    assert launches["steps"] == 1 and launches["note"] is None
    if name == "compile+triton":
        assert launches["by_kernel"] == STEP_LAUNCHES and launches["ours"] == sum(STEP_LAUNCHES.values())
    else:
        assert launches["ours"] == 0 and launches["by_kernel"] == {}
    assert (launches["compiled_regions"] > 0) == name.startswith("compile")


@pytest.mark.slow
def test_a_variant_running_something_else_fails_loudly(bench_train, dynamo_eager, monkeypatch, tmp_path, capsys):
    """compile+triton silently running the eager twins (a slip in the variant table) fails
    before its timed runs, and says so in the JSON and on the screen."""
    monkeypatch.setattr(Trainer, "warm_up", lambda self, train, test: 0.0)
    monkeypatch.setitem(bench_train.VARIANTS, "compile+triton", (True, "eager", None))
    path = tmp_path / "train.json"
    code = bench_train.main(TINY + ["--runs", "1", "--variants", "compile+triton", "--json", str(path),
                                    "--csv", ""])
    assert code == 1
    entry = json.loads(path.read_text())["variants"]["compile+triton"]
    assert entry["error"].startswith("VariantMismatch: variant compile+triton launched none of the engine's "
                                     "Triton kernels")
    assert entry["runs"] == [] and entry["launches"]["ours"] == 0
    assert "[compile+triton] FAILED: VariantMismatch" in capsys.readouterr().out


@pytest.mark.parametrize("name,counts,problem", [
    ("eager", dict(ours=3), "launched the engine's Triton kernels 3 time(s)"),
    ("eager", dict(compiled_regions=1), "ran compiled code"),
    ("compile", dict(compiled_regions=0), "ran no compiled code"),
    ("compile", dict(ours=5), "launched the engine's Triton kernels 5 time(s)"),
    ("compile", dict(inductor_kernels=0, device_kernels=40), "launched none of Inductor's kernels"),
    ("compile+triton", dict(ours=0), "launched none of the engine's Triton kernels"),
    ("compile+triton", dict(compiled_regions=0), "ran no compiled code"),
    ("compile+triton+cudagraphs", dict(ours=0, device_kernels=40, graph_launches=2),
     "launched none of the engine's Triton kernels"),
])
def test_launch_check_names_what_does_not_fit(bench_train, name, counts, problem):
    kernel_launches = load("bench_kernel_launches", "kernel_launches.py")
    fitting = {"eager": dict(ours=0, compiled_regions=0), "compile": dict(ours=0, compiled_regions=2),
               "compile+triton": dict(ours=34, compiled_regions=2),
               "compile+triton+cudagraphs": dict(ours=34, compiled_regions=2)}[name]
    launches = dict(steps=1, by_kernel={}, inductor_kernels=None, device_kernels=None, graph_launches=0, **fitting)
    assert kernel_launches.check(name, launches) is None
    with pytest.raises(kernel_launches.VariantMismatch, match=problem.replace("(", r"\(").replace(")", r"\)")):
        kernel_launches.check(name, {**launches, **counts})


def test_launch_check_cannot_judge_graphs_it_cannot_see_into(bench_train):
    kernel_launches = load("bench_kernel_launches", "kernel_launches.py")
    launches = dict(steps=1, ours=0, by_kernel={}, inductor_kernels=0, device_kernels=0, compiled_regions=2,
                    graph_launches=2)
    assert "no kernel inside the CUDA graphs" in kernel_launches.check("compile+triton+cudagraphs", launches)


def from_json(payload: dict, name: str) -> dict:
    """What each CSV column must hold, read from the JSON."""
    entry = payload["variants"][name]
    s = entry["summary"]
    own = {"gpu": payload["device"], "date": payload["date"], "commit": payload["git_commit"],
           "torch": payload["torch"], "triton": payload["triton"], "data": payload["data_source"],
           "recipe": payload["recipe"], "variant": name, "compile_mode": entry["compile_mode"]}
    summary_columns = ("runs", "mean_ema_accuracy", "std_ema_accuracy", "share_at_or_above_94", "mean_train_seconds",
                       "mean_total_seconds", "speedup_total", "tflops", "peak_memory_gib", "compile_seconds")
    return {**own, **{column: s[column] for column in summary_columns}}


@pytest.mark.slow
def test_every_csv_column_says_what_the_json_says(bench_train, monkeypatch, tmp_path):
    """Two variants (the second an eager copy under another name: a compiled one costs
    minutes here), two runs each, so that speed-ups and spreads are not trivial."""
    monkeypatch.setitem(bench_train.VARIANTS, "eager-again", bench_train.VARIANTS["eager"])
    path, csv_path = tmp_path / "train.json", tmp_path / "train.csv"
    code = bench_train.main(TINY + ["--runs", "2", "--variants", "eager,eager-again", "--data-label", "tiny data",
                                    "--json", str(path), "--csv", str(csv_path)])
    assert code == 0
    payload = json.loads(path.read_text())
    with open(csv_path, newline="") as file:
        rows = list(csv.reader(file))
    assert tuple(rows[0]) == bench_train.CSV_COLUMNS
    assert [row[bench_train.CSV_COLUMNS.index("variant")] for row in rows[1:]] == ["eager", "eager-again"]
    for row in rows[1:]:
        name = row[bench_train.CSV_COLUMNS.index("variant")]
        expected = from_json(payload, name)
        assert set(expected) == set(bench_train.CSV_COLUMNS), "a CSV column this test does not check"
        for column, value in zip(bench_train.CSV_COLUMNS, row):
            assert value == ("" if expected[column] is None else str(expected[column])), f"{name} {column}"
    # ... and what the JSON says is what its runs say.
    eager = payload["variants"]["eager"]["summary"]
    for name, entry in payload["variants"].items():
        s, runs = entry["summary"], entry["runs"]
        assert s["runs"] == len(runs) == 2
        assert s["mean_train_seconds"] == pytest.approx(statistics.fmean(r["train_seconds"] for r in runs))
        assert s["mean_total_seconds"] == pytest.approx(statistics.fmean(r["total_seconds"] for r in runs))
        assert s["mean_ema_accuracy"] == pytest.approx(statistics.fmean(r["ema_accuracy"] for r in runs))
        assert s["std_ema_accuracy"] == pytest.approx(statistics.stdev(r["ema_accuracy"] for r in runs))
        assert s["share_at_or_above_94"] == sum(r["ema_accuracy"] >= 0.94 for r in runs) / 2
        assert s["speedup_total"] == pytest.approx(eager["mean_total_seconds"] / s["mean_total_seconds"])
        assert s["tflops"] == pytest.approx(payload["flops_per_run"] / s["mean_total_seconds"] / 1e12)
        assert s["peak_memory_gib"] is None                                # CPU
        assert s["compile_seconds"] is None and s["warmup_seconds"] > 0          # not compiled
    assert payload["data_source"].startswith("tiny data") and "partial" not in payload
