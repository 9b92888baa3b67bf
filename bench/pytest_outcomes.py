"""A pytest plugin: one line per test outcome, written and flushed as each test ends.

    python -m pytest -p bench.pytest_outcomes --outcomes PATH ...

bench/device_check.sh runs the kernel tests on CUDA under a hard time limit; a
pytest killed there prints no "N passed" line, and its JUnit XML is written only
at the end. With this plugin PATH gets, as each test finishes (under pytest-xdist:
in the controller, as each worker's report arrives),

    test passed: tests/test_kernels_gelu.py::test_gelu_4d[...] (0.41 s)
    test failed: tests/...::test_x (1.20 s): AssertionError: ... (first line)

("passed", "failed", "skipped", or "error" for a failing set-up or tear-down), so a
cut stage still says which tests ran and how they ended. Nothing else changes.
"""
import os


def pytest_addoption(parser):
    parser.addoption("--outcomes", metavar="PATH", help="append one line per test outcome to PATH as it happens")


def _first_line(report) -> str:
    text = str(getattr(report, "longrepr", "") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("E ")]
    line = lines[0][1:].strip() if lines else (text.strip().splitlines() or [""])[-1]
    return line[:200]


class Outcomes:
    def __init__(self, path: str):
        self.path = path

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            outcome = report.outcome
        elif report.failed:                       # set-up or tear-down failed
            outcome = "error"
        elif report.skipped and report.when == "setup":
            outcome = "skipped"
        else:
            return
        line = f"test {outcome}: {report.nodeid} ({report.duration:.2f} s)"
        if outcome in ("failed", "error"):
            line += f": {_first_line(report)}"
        with open(self.path, "a") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())


def pytest_configure(config):
    path = config.getoption("outcomes")
    if path and not hasattr(config, "workerinput"):    # under xdist: the controller only
        config.pluginmanager.register(Outcomes(os.path.abspath(path)), "bench-outcomes")
