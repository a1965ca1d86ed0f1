"""Run the real ``mlic-edge`` entry point in-process and capture what a user would see."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from mlic_edge.cli.app import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def invoke(capsys, *args: str) -> Result:
    argv = sys.argv
    sys.argv = ["mlic-edge", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_one_line_error(result: Result, *fragments: str) -> None:
    """A failing command says what is wrong in one line, with no traceback, and exits non-zero."""
    assert result.code != 0, result
    assert "Traceback" not in result.err
    error_lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.err
    for fragment in fragments:
        assert fragment in result.err.replace("\n", " "), result.err


def exit_before_torch(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Run ``mlic-edge ARGS`` in a fresh interpreter (with ``env`` added to the environment): (['exit', CODE,
    whether torch was imported], stderr)."""
    import os
    import subprocess

    code = ("import sys\nfrom mlic_edge.cli.app import main\n"
            f"sys.argv = ['mlic-edge', *{[str(arg) for arg in args]!r}]\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    print('exit', stop.code, 'torch' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env={**os.environ, **(env or {})})
    return completed.stdout.split(), completed.stderr


__all__ = ["invoke", "assert_one_line_error", "exit_before_torch", "pytest"]
