"""What a doctor check found, printed one line per finding."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TextIO


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"  # worth knowing, not a misconfiguration: does not fail the run
    FAIL = "FAIL"
    SKIP = "skip"  # could not be checked because an earlier check failed


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.check:<12}  {self.message}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def ok(check: str, message: str) -> Finding:
    return Finding(check, Status.OK, message)


def warn(check: str, message: str, fix: str = "") -> Finding:
    return Finding(check, Status.WARN, message, fix)


def fail(check: str, message: str, fix: str) -> Finding:
    return Finding(check, Status.FAIL, message, fix)


def skip(check: str, why: str) -> Finding:
    return Finding(check, Status.SKIP, f"not checked: {why}")


def print_report(findings: list[Finding], out: TextIO) -> int:
    """Every finding, then a summary; the exit code: 0 when nothing failed, else 1."""
    for finding in findings:
        print(finding.line(), file=out)
    problems = [f for f in findings if f.status is Status.FAIL]
    checked = [f for f in findings if f.status in (Status.OK, Status.WARN)]
    if problems:
        print(f"{len(problems)} problem(s) found; fix them and run doctor again.", file=out)
        return 1
    warnings = sum(f.status is Status.WARN for f in findings)
    note = f", {warnings} warning(s)" if warnings else ""
    print(f"All {len(checked)} checks passed{note}.", file=out)
    return 0
