"""`mlic-edge doctor` as a library: what this machine can run, each check ok / warn / fail with its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def doctor(run_path: Path | None = None) -> tuple[list[Any], dict[str, Any]]:
    """(the checks, their machine-readable summary); a check with status "fail" means the CLI exits 1."""
    from mlic_edge.runtime.deployment.doctor import run_checks, summarize

    checks = run_checks(run_path)
    return checks, summarize(checks)


def doctor_table(checks: list[Any]) -> Any:
    """The rich table ``doctor`` prints (runtime/deployment/doctor.py)."""
    from mlic_edge.runtime.deployment.doctor import doctor_table as table

    return table(checks)
