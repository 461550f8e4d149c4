"""A pytest plugin for CI (loaded by every pytest run of ``make test`` with ``-p tests.skips_fail_in_ci``):
with ``DEMHEC_FAIL_ON_SKIP=1`` in the environment, as ``.ci/run`` sets it, a skipped test fails the
run and the summary says which test and why (a browser that could not be installed, a missing
package): a check that did not run is not a check that passed. Without it, a skip stays a skip,
so a developer's machine without Chromium still runs everything else."""

from __future__ import annotations

import os

import pytest

ENV = "DEMHEC_FAIL_ON_SKIP"


def _active() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class _Skips:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.seen.append((report.nodeid, reason.removeprefix("Skipped: ")))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.seen and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.seen:
            terminalreporter.section(f"{len(self.seen)} skipped test(s) fail this run ({ENV} is set)", red=True)
            for nodeid, reason in self.seen:
                terminalreporter.line(f"{nodeid}: {reason}", red=True)


def pytest_configure(config: pytest.Config) -> None:
    if _active():
        config.pluginmanager.register(_Skips(), "skips_fail_in_ci.active")
