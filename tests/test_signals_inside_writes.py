"""A signal that arrives inside each of a session's writes waits for the write: the
progress JSON after a run, a run's checkpoint, the summary, the final JSON.

Each signal is sent deterministically at that exact point: the write is wrapped so
that the process sends the signal to itself (os.kill) just before writing, so the
handler runs inside the write's protected block, never by a race.
"""
import json
import os
import signal

import pytest

from engine import cli
from engine.results import session
from engine.results.checkpoint import load_checkpoint
from engine.training.train import Trainer
from test_daily_results_safe import SMALL, instant_runs


def signal_inside(monkeypatch, name, signum, when=lambda *args: True):
    """Wrap session.<name> so that its first call for which when(*args) holds is preceded,
    inside the call, by `signum` sent to this process."""
    real, sent = getattr(session, name), []

    def wrapped(*args, **kwargs):
        if not sent and when(*args):
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    monkeypatch.setattr(session, name, wrapped)
    return sent


def run_cli(args):
    try:
        return cli.main([*SMALL, *args])
    except KeyboardInterrupt:
        pytest.fail("the signal escaped the write as a KeyboardInterrupt")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_the_progress_write_keeps_the_run_and_stops_the_next(tmp_path, monkeypatch, capfd, signum):
    monkeypatch.setattr(Trainer, "run", instant_runs())
    sent = signal_inside(monkeypatch, "write_json", signum, when=lambda path, payload: not payload["final"])
    out = tmp_path / "runs.json"
    assert run_cli(["--runs", "3", "--json", str(out)]) == session.EXIT_STATUS[signum]
    assert sent == [signum]
    report = json.loads(out.read_text())
    assert report["final"] and report["interrupted"] and [r["seed"] for r in report["runs"]] == [0]
    assert report["complete"] is False
    assert f"{signal.Signals(signum).name}: writing the results first" in capfd.readouterr().err


def test_a_signal_inside_the_checkpoint_write_keeps_a_whole_checkpoint(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(Trainer, "run", instant_runs())
    sent = signal_inside(monkeypatch, "save_checkpoint", signal.SIGINT)
    out, save = tmp_path / "runs.json", tmp_path / "model.pt"
    assert run_cli(["--runs", "3", "--json", str(out), "--save", str(save)]) == 130
    assert sent == [signal.SIGINT]
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [0] and report["interrupted"]
    checkpoint = report["runs"][0]["checkpoint"]
    assert checkpoint == str(tmp_path / "model-seed0.pt")
    _, saved = load_checkpoint(checkpoint, "cpu")
    assert saved["seed"] == 0 and saved["accuracy"] == report["runs"][0]["ema_accuracy"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]      # no half-written file left
    assert "SIGINT: writing the results first" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("write", ["format_summary", "write_json"])
def test_a_signal_inside_the_final_report_waits_for_the_json(tmp_path, monkeypatch, capfd, write):
    """All runs done: a signal while the summary is printed or the final JSON written
    neither escapes nor costs the JSON any run."""
    monkeypatch.setattr(Trainer, "run", instant_runs())
    when = (lambda *args: True) if write == "format_summary" else (lambda path, payload: payload["final"])
    sent = signal_inside(monkeypatch, write, signal.SIGINT, when=when)
    out = tmp_path / "runs.json"
    run_cli(["--runs", "2", "--json", str(out)])
    assert sent == [signal.SIGINT]
    report = json.loads(out.read_text())
    assert report["complete"] is True and [r["seed"] for r in report["runs"]] == [0, 1]
    captured = capfd.readouterr()
    assert "summary over 2 run(s)" in captured.out
    assert "SIGINT: writing the results first" in captured.err
