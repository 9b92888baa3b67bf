"""bench/gpu_plan.py: the GPU plan of one compiled training step, read on a CPU.

One plan of the seed recipe at tiny widths and batch (both kernel variants, one
process without TRITON_INTERPRET, as on a GPU) is read by most tests here: each
variant launches what its name says, the counts add up, and the CSV row holds
the JSON's figures. The records' released scripts (`--kernels release`) are
planned compiled where those scripts compile, in plain PyTorch modules. A torch
internal the plan leans on, taken away, stops it with one line naming that
internal; a plan that read nothing is an error, never a row of zeros; rows are
never appended under another version's columns.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow          # Inductor compiles: whole-suite only, not the quick subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "bench", "gpu_plan.py")
TINY = ["--set", "base_width=8", "--set", "batch_size=16", "--set", "train_images=64"]


def plan_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    done = subprocess.run([sys.executable, TOOL, "--recipe", "seed", *TINY, "--json", str(out / "plan.json"),
                           "--results", str(out / "results"), "--top", "5"],
                          env=plan_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "plan.json") as f:
        document = json.load(f)
    with open(out / "results" / "plan.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "results" / "plans.jsonl") as f:
        kept = [json.loads(line) for line in f]
    assert [(p["kernels"], p["step"]) for p in kept] == [(p["kernels"], p["step"]) for p in document["plans"]]
    return {plan["kernels"]: plan for plan in document["plans"]}, rows, done.stdout


def test_each_variant_launches_what_its_name_says(plans):
    by_variant, _, _ = plans
    assert set(by_variant) == {"eager", "triton"}
    eager, triton = by_variant["eager"], by_variant["triton"]
    assert eager["step"]["launches_ours"] == 0
    assert all(not graph["our_kernels"] for graph in eager["graphs"])
    assert triton["step"]["launches_ours"] > 0
    launched = {name for graph in triton["graphs"] if graph["calls_per_step"] for name in graph["our_kernels"]}
    # Every kernel the seed network calls, forward and backward, as Inductor's copies.
    assert {"affine_gelu._fwd_kernel", "affine_gelu._bwd_cl_kernel", "affine_gelu._bn_finish_kernel",
            "affine_gelu._bn_dx_kernel", "affine_gelu._bn_gate_dx_kernel", "pool_batch_norm_gelu._pool_stats_kernel",
            "pool_batch_norm_gelu._bn_dx_unpool_kernel", "squeeze_excite._fwd_kernel",
            "squeeze_excite._bwd_kernel", "squeeze_excite._wgrad_kernel"} <= launched, launched
    for plan in (eager, triton):
        assert plan["batch_size"] == 16 and plan["dtype"] == "float16"
        assert plan["step"]["launches_inductor"] > 0 and plan["step"]["extern_calls"] > 0


def test_counts_add_up(plans):
    by_variant, _, _ = plans
    for plan in by_variant.values():
        step, graphs = plan["step"], plan["graphs"]
        # Every compiled function of the step is there: forward + loss, its backward, the update.
        assert {g["kind"] for g in graphs if g["calls_per_step"]} == {"forward", "backward", "update"}
        for name in ("launches", "launches_ours", "launches_inductor", "extern_calls", "bytes",
                     "extern_bytes", "flops"):
            assert step[name] == sum(g["calls_per_step"] * g[name] for g in graphs), name
            assert step[name] == sum(kind.get(name, 0) for kind in plan["by_graph_kind"].values()), name
            assert step[name] > 0 or name == "launches_ours", name
        assert step["launches"] == step["launches_ours"] + step["launches_inductor"]
        assert step["extern_calls"] == sum(plan["extern_by_op"].values())
        for graph in graphs:
            assert graph["extern_calls"] == sum(graph["extern"].values())
            assert graph["launches_ours"] == sum(graph["our_kernels"].values())
        assert 0 < step["extern_bytes"] < step["bytes"]
        heaviest = [item["bytes"] for item in plan["heaviest"]]
        assert len(heaviest) == 5 and heaviest == sorted(heaviest, reverse=True) and heaviest[0] <= step["bytes"]
        assert all(item["module"] for item in plan["heaviest"]), plan["heaviest"]
        for card in plan["predicted"].values():
            assert card["ms_per_step"] == pytest.approx(card["traffic_ms"] + card["matrix_ms"] + card["launch_ms"])
            assert card["s_per_run"] == pytest.approx(card["ms_per_step"] / 1e3 * plan["steps_per_run"])
        # The EMA's steady update and the learning-rate fills run outside compiled code.
        assert plan["outside"]["per_step"].get("_foreach_lerp_", 0) >= 1
        assert plan["outside"]["per_step"].get("fill_", 0) >= 2


def test_csv_row_per_variant_holds_the_json_figures(plans):
    by_variant, rows, stdout = plans
    assert [row["kernels"] for row in rows] == ["eager", "triton"]
    for row in rows:
        plan = by_variant[row["kernels"]]
        assert row["recipe"] == "seed" and row["commit"]
        assert int(row["launches"]) == plan["step"]["launches"]
        assert int(row["extern_calls"]) == plan["step"]["extern_calls"]
        assert float(row["bytes_gb"]) == pytest.approx(plan["step"]["bytes"] / 1e9, abs=1e-4)
        assert f"Triton launches/step   {plan['step']['launches']}" in stdout


def released_plans(tmp_path):
    """The release plans of airbench94-muon and hiverge at tiny widths, in one phase (the
    whitening bias trains throughout: half the graphs to compile), with their code."""
    one_phase = ["--set", "epochs=2", "--set", "whiten_bias_epochs=2"]
    done = subprocess.run([sys.executable, TOOL, "--recipe", "airbench94-muon", "--recipe", "hiverge",
                           "--kernels", "release", *TINY, *one_phase, "--json", str(tmp_path / "plan.json"),
                           "--dump", str(tmp_path / "code")],
                          env=plan_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "plan.json") as f:
        plans = {p["recipe"]: p for p in json.load(f)["plans"]}
    code = {}
    for name in sorted(os.listdir(tmp_path / "code")):
        with open(tmp_path / "code" / name) as f:
            code[name.split("-release-")[0]] = code.get(name.split("-release-")[0], "") + f.read()
    return plans, code, done.stdout


def test_a_release_is_planned_compiled_where_its_script_compiles_in_plain_modules(tmp_path):
    plans, code, stdout = released_plans(tmp_path)
    assert set(plans) == set(code) == {"airbench94-muon", "hiverge"}
    for recipe, plan in plans.items():
        step = plan["step"]
        assert plan["kernels"] == "release" and len(plan["phases"]) == 1
        assert step["launches_ours"] == 0 and step["launches_inductor"] > 0
        # The network's graphs (forward and backward) replay as CUDA graphs; the update does not.
        called = [g for g in plan["graphs"] if g["calls_per_step"]]
        assert {(g["kind"], g["graphed"]) for g in called} == {("forward", True), ("backward", True),
                                                                ("update", False)}
        assert step["launches_graphed"] == sum(g["calls_per_step"] * (g["launches"] + g["extern_calls"])
                                               for g in called if g["graphed"]) > 0
        for card in plan["predicted"].values():
            launched = step["launches"] + step["extern_calls"] - step["launches_graphed"] + plan["outside"]["ops_per_step"]
            assert card["launch_ms"] == pytest.approx(launched * 5e-3)
            assert card["traffic_ms"] > 0 and card["matrix_ms"] > 0
        assert plan["outside"]["bytes_per_step"] > 0
        run, steps = plan["per_run"], plan["steps_per_run"]
        assert run["bytes"] == pytest.approx(steps * (step["bytes"] + plan["outside"]["bytes_per_step"]))
        assert run["launches"] - run["launches_not_graphed"] == pytest.approx(steps * step["launches_graphed"])
        # Plain nn.MaxPool2d: Inductor's max_pool2d kernels (our MaxPool2x2 compiles to none).
        assert "max_pool2d_with_indices" in code[recipe], recipe
        assert f"== {recipe} --kernels release" in stdout
    assert stdout.count("as released") == 2
    # airbench94_muon.py compiles the network only: the loss and its backward run eagerly.
    airbench = plans["airbench94-muon"]["outside"]["per_step"]
    assert airbench.get("_log_softmax", 0) == 1 and airbench.get("_log_softmax_backward_data", 0) == 1
    hiverge = plans["hiverge"]["outside"]["per_step"]
    assert "_log_softmax" not in hiverge and "_log_softmax_backward_data" not in hiverge
    # Their loops set learning rates on the host and keep no per-step sums.
    assert "fill_" not in airbench and "fill_" not in hiverge and "add_" not in hiverge


def test_a_recipe_without_a_known_release_and_an_older_csv_are_one_line_errors(tmp_path):
    done = subprocess.run([sys.executable, TOOL, "--recipe", "seed", "--kernels", "release", *TINY],
                          env=plan_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert "no released script is known for recipe seed" in done.stderr
    (tmp_path / "plan.csv").write_text("date,commit,recipe\n2026-12-01,abc,seed\n")
    done = subprocess.run([sys.executable, TOOL, "--recipe", "seed", "--kernels", "eager", *TINY,
                           "--results", str(tmp_path)], env=plan_env(), capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert "another gpu_plan version" in done.stderr
    assert (tmp_path / "plan.csv").read_text() == "date,commit,recipe\n2026-12-01,abc,seed\n"


def run_with_internal_removed(module: str, owner: str, attr: str):
    """The tool, in a process where `module.owner.attr` (a torch internal) was deleted first."""
    code = (f"import importlib, runpy, sys\n"
            f"delattr(getattr(importlib.import_module({module!r}), {owner!r}), {attr!r})\n"
            f"sys.argv = [{TOOL!r}, '--recipe', 'seed', '--kernels', 'eager'] + {TINY!r}\n"
            f"runpy.run_path({TOOL!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], env=plan_env(), capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("module, owner, attr", [
    ("torch._inductor.scheduler", "BaseSchedulerNode", "get_read_write_buffers_sizes"),
    ("torch._inductor.graph", "GraphLowering", "save_output_code"),
])
def test_a_missing_torch_internal_stops_it_with_one_line_naming_it(module, owner, attr):
    done = run_with_internal_removed(module, owner, attr)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    assert done.stderr.startswith("gpu_plan: torch internal ") and f"{module}.{owner}.{attr}" in done.stderr
    assert "launches" not in done.stdout


def test_a_plan_that_read_nothing_is_an_error_not_zeros():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_plan
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    from engine.recipe_files import find_recipe
    import torch

    recipe = find_recipe("seed")
    config = recipe.make_config(base_width=8, batch_size=16, train_images=64)
    empty = gpu_plan.Recorder()
    with pytest.raises(gpu_plan.PlanError, match="no graph was compiled"):
        gpu_plan.summarise(recipe, config, "eager", torch.float16, empty, {}, {})
    # A graph whose wrapper launches nothing and whose scheduler moved no bytes.
    empty.graphs.append({"index": 0, "function": "forward_loss", "kind": "forward", "flops": 0, "graphed": False,
                         "code": "def call(args):\n    return ()\n", "nodes": []})
    with pytest.raises(gpu_plan.PlanError, match="measured no step"):
        gpu_plan.summarise(recipe, config, "eager", torch.float16, empty, [], {})
    phase = {"first_step": 0, "steps": config.total_steps, "calls": {0: 1}, "outside": {}}
    with pytest.raises(gpu_plan.PlanError, match="came out empty"):
        gpu_plan.summarise(recipe, config, "eager", torch.float16, empty, [phase], {})
    with pytest.raises(gpu_plan.PlanError, match="called no compiled graph"):
        gpu_plan.summarise(recipe, config, "eager", torch.float16, empty, [{**phase, "calls": {0: 0}}], {})
    with pytest.raises(gpu_plan.PlanError, match="def call"):
        gpu_plan.parse_wrapper("class Runner:\n    pass\n", {})


def test_device_check_prints_the_plan_s_prediction_under_each_compiled_variant(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_plan
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    for date, h200 in (("2026-12-01", "9.9"), ("2026-12-03", "2.5")):     # the newest folder counts
        folder = tmp_path / f"gpu_plan-{date}"
        folder.mkdir()
        with open(folder / "plan.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=gpu_plan.CSV_FIELDS)
            writer.writeheader()
            for kernels, graphs in (("eager", "1.1"), ("triton", "1.2")):
                writer.writerow({"recipe": "seed", "kernels": kernels, "commit": "abc1234",
                                 "predicted_s_run_h200": h200, "predicted_s_run_h100": "3.5",
                                 "predicted_s_run_cuda_graphs_h200": graphs, "predicted_s_run_cuda_graphs_h100": "2"})
    log = tmp_path / "train.log"
    log.write_text("noise\nrow seed/eager: off, 2 runs, 6.000 s training\n"
                   "row seed/compile+triton: default, 2 runs, 2.700 s training\n"
                   "row seed/compile+cudagraphs: reduce-overhead, 2 runs, 2.000 s training\n"
                   "row airbench94-muon/compile+triton: default, 2 runs, 1.500 s training\n")
    lines = gpu_plan.beside(str(log), str(tmp_path)).splitlines()
    assert lines[0] == "row seed/eager: off, 2 runs, 6.000 s training"       # eager: not compiled, no plan
    assert lines[1].startswith("row seed/compile+triton") and "2.5 s training per run on an H200" in lines[2]
    assert "abc1234" in lines[2] and "3.5 s on an H100" in lines[2]
    assert lines[3].startswith("row seed/compile+cudagraphs") and "1.1 s training per run on an H200" in lines[4]
    assert "no GPU plan row for airbench94-muon --kernels triton" in lines[6]
