"""`run.py compare`: Welch's t-test against closed forms and printed tables, and the
command on hand-made result files (no training): without torch, a warning for every
difference in set-up, differences in points. Hostile files: test_compare_hostile.py."""
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from engine.command import main
from engine.results.compare import compare, entries_of, welch
from engine.results.student_t import t_quantile

ROOT = Path(__file__).resolve().parents[1]


def test_welch_with_two_degrees_of_freedom_matches_the_closed_form():
    # n = 2 each with equal variances: df = 2(n - 1) = 2 exactly, and for 2 df
    # P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)), t_q = (2q - 1) / sqrt(2 q (1 - q)).
    baseline, other = [0.0, 2.0], [1.0, 3.0]
    test = welch(baseline, other)
    t = 1.0 / math.sqrt(2.0)                                   # difference 1, se sqrt(1 + 1)
    assert test["difference"] == pytest.approx(1.0)
    assert test["df"] == pytest.approx(2.0)
    assert test["t"] == pytest.approx(t)
    assert test["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    quantile = 0.95 / math.sqrt(2 * 0.975 * 0.025)             # 4.3027, the printed table's 4.303
    assert quantile == pytest.approx(4.303, abs=5e-4)
    assert test["interval"] == pytest.approx([1 - quantile * math.sqrt(2), 1 + quantile * math.sqrt(2)], rel=1e-9)


def test_welch_satterthwaite_degrees_of_freedom_for_unequal_variances():
    baseline, other = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    v1, v2 = statistics.variance(baseline) / 4, statistics.variance(other) / 5     # 5/12 and 2
    test = welch(baseline, other)
    assert test["df"] == pytest.approx((v1 + v2) ** 2 / (v1 ** 2 / 3 + v2 ** 2 / 4))
    assert test["df"] == pytest.approx(5.5208, abs=1e-4)
    assert test["t"] == pytest.approx(3.5 / math.sqrt(v1 + v2))
    half = test["interval"][1] - test["difference"]
    assert half == pytest.approx(t_quantile(0.975, test["df"]) * math.sqrt(v1 + v2))


def test_welch_interval_uses_the_printed_t_table():
    # n = 3 each, equal variances: df = 4, and t_0.975,4 = 2.776 in every printed table.
    test = welch([0.0, 1.0, 2.0], [5.0, 6.0, 7.0])
    assert test["df"] == pytest.approx(4.0)
    se = math.sqrt(2 / 3)
    assert (test["interval"][1] - 5.0) / se == pytest.approx(2.776, abs=5e-4)
    assert test["p_value"] < 0.01                                # 5 standard errors apart


def test_welch_without_spread_or_with_one_run():
    assert welch([0.9, 0.9], [0.9, 0.9])["p_value"] == 1.0
    same_spread_free = welch([0.9, 0.9], [0.91, 0.91])
    assert same_spread_free["p_value"] == 0.0
    assert same_spread_free["interval"] == pytest.approx([0.01, 0.01])
    one = welch([0.9], [0.91, 0.92])
    assert one["difference"] == pytest.approx(0.015) and one["interval"] is None and one["p_value"] is None


def result_file(path, accuracies, seconds, **fields):
    runs = [{"seed": i, "status": "ok", "ema_accuracy": a, "accuracy": a, "train_seconds": s, "total_seconds": s + 1}
            for i, (a, s) in enumerate(zip(accuracies, seconds))]
    payload = {"runs": runs, "complete": True, "recipe": "seed", "data_source": "CIFAR-10 (JPEG copy)",
               "device": "NVIDIA H200", "dtype": "float16", "kernels": "triton", "torch": "2.14.1",
               "triton": "3.8.0", "git_commit": "abc", **fields}
    path.write_text(json.dumps(payload))
    return str(path)


def test_compare_prints_each_file_and_the_difference_and_writes_json(tmp_path, capsys):
    a = result_file(tmp_path / "a.json", [0.940, 0.942, 0.938], [3.0, 3.1, 2.9])
    b = result_file(tmp_path / "b.json", [0.945, 0.947, 0.943], [2.5, 2.6, 2.4])
    out = tmp_path / "comparison.json"
    assert main(["compare", a, b, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[0] " + a in text and "[1] " + b in text
    assert "accuracy    mean 94.00%" in text and "accuracy    mean 94.50%" in text
    expected = welch([0.940, 0.942, 0.938], [0.945, 0.947, 0.943])
    low, high = expected["interval"]
    assert (f"accuracy    +0.50 points (95% CI {100 * low:+.2f} points .. {100 * high:+.2f} points, "
            f"p {expected['p_value']:.3g})") in text
    assert "training s  -0.50 s" in text
    assert "warning" not in text
    saved = json.loads(out.read_text())
    assert saved["differences"][0]["ema_accuracy"]["p_value"] == pytest.approx(expected["p_value"])
    assert [entry["runs"] for entry in saved["entries"]] == [3, 3]


def test_compare_warns_about_different_devices_dtypes_versions_and_unfinished_files(tmp_path, capsys):
    a = result_file(tmp_path / "a.json", [0.94, 0.95], [3.0, 3.2])
    b = result_file(tmp_path / "b.json", [0.94, 0.95], [3.0, 3.2], device="NVIDIA A100", dtype="bfloat16",
                    torch="2.11.0", data_source="CIFAR-10", complete=False)
    assert main(["compare", a, b]) == 0
    text = capsys.readouterr().out
    for what in ("devices", "dtypes", "torch versions", "data"):
        assert f"warning: measured on different {what} (" in text
    assert "warning: measured on different devices ([0] NVIDIA H200; [1] NVIDIA A100)" in text
    assert f"warning: [1] {b} is not complete" in text


def test_a_folder_stands_for_its_json_files_and_a_sweep_for_its_points(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    result_file(folder / "1.json", [0.93, 0.94], [3.0, 3.1])
    sweep = result_file(folder / "2.json", [0.93, 0.94, 0.95, 0.96], [3.0, 3.1, 3.0, 3.1],
                        points=[{"settings": {"lr": 0.001}}, {"settings": {"lr": 0.002}}])
    payload = json.loads(Path(sweep).read_text())
    for i, run in enumerate(payload["runs"]):
        run["point"] = i // 2
    entries = entries_of(sweep, payload)
    assert [e["label"] for e in entries] == [f"{sweep} [lr=0.001]", f"{sweep} [lr=0.002]"]
    assert [e["ema_accuracy"]["mean"] for e in entries] == pytest.approx([0.935, 0.955])
    Path(sweep).write_text(json.dumps(payload))
    assert main(["compare", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "[2] " + f"{sweep} [lr=0.002]" in text and "[2] - [0]" in text


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.write_text("{not json"), "is not JSON"),
    (lambda p: p.write_text('{"a": 1}'), "no list of runs: not a result file of `run.py --json`"),
])
def test_bad_result_files_get_one_line_errors(tmp_path, capsys, make, message):
    bad = tmp_path / "bad.json"
    make(bad)
    good = result_file(tmp_path / "good.json", [0.9, 0.91], [1.0, 1.1])
    assert main(["compare", good, str(bad)]) == 2
    assert message in capsys.readouterr().err


def test_compare_needs_two_results_and_never_writes_over_one(tmp_path, capsys):
    good = result_file(tmp_path / "good.json", [0.9, 0.91], [1.0, 1.1])
    with pytest.raises(ValueError, match="two or more"):
        compare(entries_of(good, json.loads(Path(good).read_text())))
    with pytest.raises(SystemExit):
        main(["compare", good, good, "--json", good])
    assert "the same file as RESULT" in capsys.readouterr().err


def test_compare_from_run_py_never_imports_torch(tmp_path):
    a = result_file(tmp_path / "a.json", [0.94, 0.95], [3.0, 3.2])
    b = result_file(tmp_path / "b.json", [0.95, 0.96], [3.0, 3.2])
    code = ("import runpy, sys\n"
            f"sys.argv = ['run.py', 'compare', {a!r}, {b!r}, '--json', {str(tmp_path / 'c.json')!r}]\n"
            "try:\n    runpy.run_path('run.py', run_name='__main__')\n"
            "except SystemExit as exit_:\n    code = exit_.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "sys.exit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "[1] - [0]" in result.stdout and (tmp_path / "c.json").is_file()


def test_help_shows_a_plain_percent_sign(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "95% interval" in " ".join(text.split()) and "%%" not in text


# One field each, as the engine records it (the train/test subset in "data", settings in "config"):
# each difference must be named by exactly one warning.
DIFFERENCES = [
    ({"recipe": "airbench94-muon"}, "measured on different recipes ([0] seed; [1] airbench94-muon)"),
    ({"config": {"epochs": 10, "lr": 0.4}}, "measured with different settings: config.lr ([0] 0.2; [1] 0.4)"),
    ({"config": {"epochs": 2, "lr": 0.2}}, "measured on different epochs ([0] 10; [1] 2)"),
    ({"data": {"train_subset": 1000, "test_subset": None}},
     "measured with different data.train_subset ([0] none; [1] 1000)"),
    ({"data": {"train_subset": None, "test_subset": 500}},
     "measured with different data.test_subset ([0] none; [1] 500)"),
    ({"data_source": "synthetic"}, "measured on different data ([0] CIFAR-10 (JPEG copy); [1] synthetic)"),
    ({"device": "NVIDIA A100"}, "measured on different devices ([0] NVIDIA H200; [1] NVIDIA A100)"),
    ({"dtype": "bfloat16"}, "measured on different dtypes ([0] float16; [1] bfloat16)"),
    ({"kernels": "eager"}, "measured on different kernels ([0] triton; [1] eager)"),
    ({"torch": "2.11.0"}, "measured on different torch versions ([0] 2.14.1; [1] 2.11.0)"),
    ({"triton": "3.6.0"}, "measured on different triton versions ([0] 3.8.0; [1] 3.6.0)"),
    ({"python": "3.11.7"}, "measured on different python versions ([0] 3.12.1; [1] 3.11.7)"),
    ({"git_commit": "def"}, "measured on different engine versions (git commit) ([0] abc; [1] def)"),
    ({"compile": True}, "measured with different compile ([0] false; [1] true)"),
    ({"new_field_of_a_later_engine": [1, 2]},
     "measured with different new_field_of_a_later_engine ([0] not recorded; [1] [1, 2])"),
]


@pytest.mark.parametrize("changed, warning", DIFFERENCES, ids=[warning.split(" (")[0] for _, warning in DIFFERENCES])
def test_compare_warns_for_every_difference_in_set_up(tmp_path, capsys, changed, warning):
    common = {"python": "3.12.1", "compile": False, "config": {"epochs": 10, "lr": 0.2},
              "data": {"train_subset": None, "test_subset": None}}
    a = result_file(tmp_path / "a.json", [0.94, 0.95], [3.0, 3.2], **common)
    b = result_file(tmp_path / "b.json", [0.94, 0.95], [3.0, 3.2], **{**common, **changed})
    assert main(["compare", a, b]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {warning}"]


def test_the_same_set_up_recorded_differently_is_no_difference(tmp_path, capsys):
    a = result_file(tmp_path / "a.json", [0.94, 0.95], [3.0, 3.2], config={"epochs": 10}, data={"train_subset": None})
    b = result_file(tmp_path / "b.json", [0.94, 0.95], [3.0, 3.2], config={"epochs": 10.0}, date="2026-12-03",
                    note="rerun", compile_seconds=12.0)                   # 10 == 10.0; a missing field counts as null
    assert main(["compare", a, b]) == 0
    assert "warning" not in capsys.readouterr().out


def test_points_of_a_sweep_differ_in_their_own_settings(tmp_path, capsys):
    sweep = result_file(tmp_path / "sweep.json", [0.93, 0.94, 0.95, 0.96], [3.0, 3.1, 3.0, 3.1],
                        config={"epochs": 10, "lr": 0.1},
                        points=[{"settings": {"lr": 0.1}, "recipe": "seed", "config": {"epochs": 10, "lr": 0.1}},
                                {"settings": {"lr": 0.2}, "recipe": "seed", "config": {"epochs": 10, "lr": 0.2}}])
    payload = json.loads(Path(sweep).read_text())
    for i, run in enumerate(payload["runs"]):
        run["point"] = i // 2
    Path(sweep).write_text(json.dumps(payload))
    assert main(["compare", sweep]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: measured with different settings: config.lr ([0] 0.1; [1] 0.2)"]
