"""`run.py compare` trusts nothing it reads: every field it uses is checked (type, finite,
in range; a boolean is not a number), a bad file is one line naming the file and the
field, the same file given twice and compare's own output are handled, and text from
files is printed with its control characters escaped. Hand-made files, no training."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine.results.compare as compare_module
from engine.command import main

ROOT = Path(__file__).resolve().parents[1]


def payload_of(accuracies=(0.94, 0.95), seconds=(3.0, 3.2), **fields):
    runs = [{"seed": i, "status": "ok", "ema_accuracy": a, "accuracy": a, "train_seconds": s, "total_seconds": s + 1}
            for i, (a, s) in enumerate(zip(accuracies, seconds))]
    return {"runs": runs, "complete": True, "recipe": "seed", "data_source": "CIFAR-10 (JPEG copy)",
            "device": "NVIDIA H200", "dtype": "float16", "kernels": "triton", "torch": "2.14.1",
            "triton": "3.8.0", "python": "3.12.1", "git_commit": "abc", "config": {"epochs": 10, "lr": 0.2},
            **fields}


def write(path, payload) -> str:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def refused(argv, capsys) -> str:
    """compare's exit status is 2 and its error one line (no traceback): that line."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def sweep_payload():
    payload = payload_of(accuracies=(0.93, 0.94, 0.95, 0.96), seconds=(3.0, 3.1, 3.0, 3.1),
                         points=[{"index": 0, "settings": {"lr": 0.1}, "recipe": "seed"},
                                 {"index": 1, "settings": {"lr": 0.2}, "recipe": "seed"}])
    for i, run in enumerate(payload["runs"]):
        run["point"] = i // 2
    return payload


def set_run(index, key, value):
    def change(payload):
        payload["runs"][index][key] = value
    return change


def set_field(key, value):
    def change(payload):
        payload[key] = value
    return change


# (what is wrong, how to make it, the field the error must name)
BAD_FIELDS = [
    ("runs not a list", set_field("runs", {"0": {}}), "runs"),
    ("a run not an object", lambda p: p["runs"].append(5), "runs[2]"),
    ("accuracy a boolean", set_run(1, "ema_accuracy", True), "runs[1].ema_accuracy"),
    ("accuracy a string", set_run(0, "ema_accuracy", "0.94"), "runs[0].ema_accuracy"),
    ("accuracy NaN", set_run(0, "ema_accuracy", float("nan")), "runs[0].ema_accuracy"),
    ("accuracy infinite", set_run(0, "ema_accuracy", float("inf")), "runs[0].ema_accuracy"),
    ("accuracy above 1 (a fraction)", set_run(0, "ema_accuracy", 94.0), "runs[0].ema_accuracy"),
    ("accuracy below 0", set_run(0, "ema_accuracy", -0.01), "runs[0].ema_accuracy"),
    ("seconds negative", set_run(1, "train_seconds", -1.0), "runs[1].train_seconds"),
    ("seconds a boolean", set_run(1, "total_seconds", False), "runs[1].total_seconds"),
    ("seconds -infinite", set_run(0, "total_seconds", float("-inf")), "runs[0].total_seconds"),
    ("seconds beyond a float", set_run(0, "train_seconds", 10 ** 400), "runs[0].train_seconds"),
    ("status not a string", set_run(0, "status", 1), "runs[0].status"),
    ("complete not a boolean", set_field("complete", "yes"), "complete"),
    ("device not a string", set_field("device", ["H200"]), "device"),
    ("recipe not a string", set_field("recipe", 7), "recipe"),
    ("a setting NaN", lambda p: p["config"].update(lr=float("nan")), "config.lr"),
    ("a nested setting infinite", set_field("data", {"train_subset": float("inf")}), "data.train_subset"),
]


@pytest.mark.parametrize("change, field", [case[1:] for case in BAD_FIELDS], ids=[case[0] for case in BAD_FIELDS])
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(tmp_path, capsys, change, field):
    good = write(tmp_path / "good.json", payload_of())
    payload = payload_of()
    change(payload)
    bad = write(tmp_path / "bad.json", json.dumps(payload))        # NaN and Infinity as Python writes them
    line = refused(["compare", good, bad], capsys)
    assert bad in line and f"{field} " in line.replace(bad, "")


def test_a_huge_integer_literal_and_an_overflowing_float_literal_are_refused(tmp_path, capsys):
    good = write(tmp_path / "good.json", payload_of())
    text = json.dumps(payload_of()).replace('"train_seconds": 3.0', '"train_seconds": 1e999')
    bad = write(tmp_path / "bad.json", text)
    assert "runs[0].train_seconds " in refused(["compare", good, bad], capsys).replace(bad, "")
    text = json.dumps(payload_of()).replace('"epochs": 10', '"epochs": ' + "9" * 5000)   # past int()'s 4300 digits
    bad = write(tmp_path / "bad.json", text)
    assert "config.epochs " in refused(["compare", good, bad], capsys).replace(bad, "")


def test_a_setting_nested_deeper_than_any_result_is_refused_naming_it(tmp_path, capsys):
    good = write(tmp_path / "good.json", payload_of())
    nested = json.dumps(payload_of())[:-1] + ', "extra": ' + "[" * 500 + "]" * 500 + "}"   # json reads it
    line = refused(["compare", good, write(tmp_path / "bad.json", nested)], capsys)
    assert "extra[0][0]" in line and "nested more than" in line


SWEEP_FIELDS = [
    ("points not a list", set_field("points", "lr"), "points"),
    ("points an empty object", set_field("points", {}), "points"),
    ("a point not an object", lambda p: p["points"].__setitem__(1, [0.2]), "points[1]"),
    ("settings not an object", lambda p: p["points"][0].__setitem__("settings", "lr=0.1"), "points[0].settings"),
    ("a run's point out of range", set_run(3, "point", 2), "runs[3].point"),
    ("a run's point a boolean", set_run(0, "point", False), "runs[0].point"),
    ("a run's point missing", lambda p: p["runs"][2].pop("point"), "runs[2].point"),
]


@pytest.mark.parametrize("change, field", [case[1:] for case in SWEEP_FIELDS], ids=[case[0] for case in SWEEP_FIELDS])
def test_a_bad_sweep_field_is_one_line_naming_the_file_and_the_field(tmp_path, capsys, change, field):
    payload = sweep_payload()
    change(payload)
    bad = write(tmp_path / "sweep.json", payload)
    assert f"{field} " in refused(["compare", bad], capsys).replace(bad, "")


def make_fifo(path):
    os.mkfifo(path)


BAD_FILES = [
    ("not JSON", lambda p: p.write_text("{not json"), "not JSON"),
    ("empty", lambda p: p.write_text(""), "not JSON"),
    ("not UTF-8", lambda p: p.write_bytes(b'{"runs": [], "recipe": "\xff"}'), "not JSON"),
    ("a list, not an object", lambda p: p.write_text("[1, 2]"), "not a JSON object"),
    ("a number", lambda p: p.write_text("0.94"), "not a JSON object"),
    ("no runs", lambda p: p.write_text('{"a": 1}'), "no list of runs"),
    ("nested too deeply", lambda p: p.write_text('{"runs": [], "config": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     "nested too deeply"),
    ("a FIFO", make_fifo, "not a regular file"),
    ("a folder without results", lambda p: (p.mkdir(), (p / "inner.json").mkdir()), "a folder with no .json files"),
    ("missing", lambda p: None, "no such file or folder"),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_one_line_naming_it(tmp_path, capsys, make, message):
    good = write(tmp_path / "good.json", payload_of())
    bad = tmp_path / "bad.json"
    make(bad)
    line = refused(["compare", good, str(bad)], capsys)
    assert str(bad) in line and message in line


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_module, "MAX_BYTES", 1000)
    good = write(tmp_path / "good.json", payload_of())
    huge = write(tmp_path / "huge.json", payload_of(accuracies=[0.9] * 100, seconds=[1.0] * 100))
    line = refused(["compare", good, huge], capsys)
    assert huge in line and "larger than" in line


def test_an_unreadable_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    good = write(tmp_path / "good.json", payload_of())
    other = write(tmp_path / "other.json", payload_of())

    def no_permission(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(compare_module, "open", no_permission, raising=False)   # root reads any file
    line = refused(["compare", good, other], capsys)
    assert "cannot read" in line and "Permission denied" in line


def test_a_folder_named_like_a_result_inside_a_folder_is_passed_over(tmp_path, capsys):
    folder = tmp_path / "results"
    (folder / "sub.json").mkdir(parents=True)
    write(folder / "a.json", payload_of())
    write(folder / "b.json", payload_of(accuracies=(0.95, 0.96)))
    assert main(["compare", str(folder)]) == 0
    assert "sub.json" not in capsys.readouterr().out


def test_the_same_file_twice_is_compared_once_with_a_note(tmp_path, capsys):
    a = write(tmp_path / "a.json", payload_of())
    b = write(tmp_path / "b.json", payload_of(accuracies=(0.95, 0.96)))
    os.symlink(a, tmp_path / "link.json")
    assert main(["compare", a, b, a, str(tmp_path / "link.json")]) == 0
    text = capsys.readouterr().out
    assert text.count("note:") == 2 and "[2]" not in text
    assert f"note: {a} is given twice; compared once" in text
    assert f"note: {tmp_path / 'link.json'} is the same file as {a}; compared once" in text


def test_one_file_given_twice_is_not_a_comparison(tmp_path, capsys):
    a = write(tmp_path / "a.json", payload_of())
    line = refused(["compare", a, a], capsys)
    assert "two or more" in line and "the same file" in line


def test_compares_own_output_in_a_compared_folder_is_never_read(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    write(folder / "a.json", payload_of())
    write(folder / "b.json", payload_of(accuracies=(0.95, 0.96)))
    out = folder / "comparison.json"
    assert main(["compare", str(folder), "--json", str(out)]) == 0
    first = json.loads(out.read_text())
    capsys.readouterr()
    assert main(["compare", str(folder), "--json", str(out)]) == 0        # again: its output is now in the folder
    text = capsys.readouterr().out
    assert "[2]" not in text and f"note: {out} is the --json output; not read" in text
    assert json.loads(out.read_text())["entries"] == first["entries"]
    other = folder / "other-comparison.json"                              # an earlier comparison, kept aside
    other.write_text(out.read_text())
    assert main(["compare", str(folder)]) == 0
    assert f"note: {other} is a comparison written by compare --json, not a result; not read" in capsys.readouterr().out
    line = refused(["compare", str(folder / "a.json"), str(other)], capsys)
    assert str(other) in line and "written by compare --json" in line


def test_json_never_replaces_a_result_in_a_compared_folder(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    a = write(folder / "a.json", payload_of())
    write(folder / "b.json", payload_of(accuracies=(0.95, 0.96)))
    write(folder / "c.json", payload_of(accuracies=(0.96, 0.97)))
    before = Path(a).read_text()
    line = refused(["compare", str(folder), "--json", a], capsys)
    assert "--json" in line and "result file" in line
    assert Path(a).read_text() == before


@pytest.mark.parametrize("path", ["", "  ", "\t"])
def test_an_empty_or_blank_json_path_is_refused_up_front(tmp_path, capsys, path):
    with pytest.raises(SystemExit) as exit_:            # an argument's error: argparse's usage line, then the error
        main(["compare", str(tmp_path / "missing-a.json"), str(tmp_path / "missing-b.json"), "--json", path])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert "--json" in line and "empty or blank" in line
    assert list(tmp_path.iterdir()) == []


HOSTILE_TEXT = "seed\x1b[2J\x1b[31mRED\rover\nline\u202eevil\x07"


def test_text_from_files_is_printed_with_control_characters_escaped(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    write(folder / "a\x1b[31m\nb.json", payload_of(recipe=HOSTILE_TEXT, device="H200\r\x1b[Kfake"))
    write(folder / "c.json", payload_of(accuracies=(0.95, 0.96), config={"epochs": 10, "lr": 0.2, "x\ny": "\x1b]0;t"}))
    (folder / os.fsdecode(b"d\xff.json")).write_text(json.dumps(payload_of(data_source="\x9bCIFAR")))
    result = subprocess.run([sys.executable, "run.py", "compare", str(folder)], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode("utf-8")
    assert not any(ch in out for ch in "\x1b\r\x07\u202e\x9b")
    assert "\\x1b[2J" in out and "\\x1b[31m\\nb.json" in out and "\\r\\x1b[Kfake" in out and "\\u202e" in out
    assert "\\udcff" in out or "\\xff" in out                                # the file name that is not UTF-8
    for line in out.splitlines():                                         # no line broken by a file's newline
        assert line.startswith(("results:", "  ", "differences", "warning:", "note:")), line


def test_the_engines_earlier_result_files_are_still_read(capsys):
    results = ROOT / "bench" / "results"
    assert main(["compare", str(results / "cpu_full_run_jpeg_2026-11-27.json"),
                 str(results / "cpu_full_run_airbench94_muon_jpeg_2026-11-29.json"),
                 str(results / "hiverge_cpu_jpeg_2026-12-02")]) == 0
    text = capsys.readouterr().out
    assert "[2] " in text and "accuracy    mean 90.88%" in text
    assert "warning: measured on different recipes (" in text


def test_a_reader_that_goes_away_ends_the_printing_not_the_command(tmp_path):
    a = write(tmp_path / "a.json", payload_of())
    b = write(tmp_path / "b.json", payload_of(accuracies=(0.95, 0.96)))
    read, written = os.pipe()
    os.close(read)                                       # `compare ... | head -0`: every write meets a closed pipe
    try:
        result = subprocess.run([sys.executable, "run.py", "compare", a, b, "--json", str(tmp_path / "c.json")],
                                cwd=ROOT, stdout=written, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(written)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "c.json").read_text())["entries"][1]["runs"] == 2
