"""The suite's one way to wait for something another thread or process does."""
import time


def poll_until(condition, interval: float = 0.01):
    """Check condition() every `interval` seconds until it holds. No limit: a slow or busy
    machine only waits longer (tests/test_suite_rules.py allows this sleep and no other)."""
    while not condition():
        time.sleep(interval)
