"""A per-test time limit for benchmarks/gpu_check.sh where pytest-timeout is not installed (the
GPU machine has no network): ``python -m pytest -p benchmarks.pytest_deadline --deadline=S``.

At S seconds (setup, call and teardown together) SIGALRM fails the test where it stands and the
run goes on. A test stuck in a C call that never returns to Python (a hung kernel, a deadlocked
collective) cannot be interrupted that way: at 2 S + 30 s faulthandler prints every thread's
stack and ends the process, and the caller's overall timeout is the last resort.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--deadline", type=float, default=0.0, help="seconds per test (0: no limit)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    limit = item.config.getoption("--deadline")
    if not limit or limit <= 0:
        yield
        return

    def expired(signum, frame):  # noqa: ANN001
        pytest.fail(f"test ran past its {limit:.0f} s deadline (benchmarks/pytest_deadline.py)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    faulthandler.dump_traceback_later(2 * limit + 30, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
