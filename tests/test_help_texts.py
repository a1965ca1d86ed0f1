"""Every command's --help shows the texts its source holds: Typer renders them as Markdown, where a placeholder
written as ``<time>`` is an HTML tag and vanishes (``previous/<time>/`` showed as ``previous//``)."""

from __future__ import annotations

import re

import pytest
import typer
from typer import rich_utils
from typer.testing import CliRunner

from mlic_edge.cli.app import app

BOX_DRAWING = "│╭╮╰╯─"


def commands(command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


ALL_COMMANDS = list(commands(typer.main.get_command(app)))


def as_rendered(source: str) -> str:
    """What Markdown makes of a help text meant as it is written: emphasis and code marks go, the words stay."""
    text = re.sub(r"\*\*(.+?)\*\*", r"\1", source.partition("\f")[0])
    return " ".join(re.sub(r"`([^`]*)`", r"\1", text).split())


def test_every_command_is_walked():
    names = {" ".join(path) for path, _ in ALL_COMMANDS}
    assert {"", "train", "models", "data stats", "data synth", "import"} <= names


@pytest.mark.parametrize("path, command", ALL_COMMANDS, ids=[" ".join(path) or "mlic-edge" for path, _ in ALL_COMMANDS])
def test_help_shows_every_text_the_source_holds(path, command, monkeypatch):
    monkeypatch.setattr(rich_utils, "MAX_WIDTH", 10_000)  # one line per text: no wrapping to compare across
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.translate({ord(char): " " for char in BOX_DRAWING}).split())
    texts = {"the command's help": command.help, "its epilog": command.epilog,
             **{f"--{param.name}": getattr(param, "help", None) for param in command.params}}
    lost = {where: as_rendered(text) for where, text in texts.items() if text and as_rendered(text) not in shown}
    assert lost == {}, shown


def test_the_cli_starts_without_numpy_opencv_or_a_backend_library():
    """Every `mlic-edge` call (--help included) imports the CLI module: it loads no numpy, OpenCV, PyTorch or
    backend library, so help and one-line refusals come in a fraction of a second (a command imports what it needs
    when it runs)."""
    import json
    import subprocess
    import sys

    code = "import json, sys\nimport mlic_edge.cli.app\nprint(json.dumps(sorted(sys.modules)))"
    loaded = {name.split(".")[0] for name in json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)}
    assert not loaded & {"numpy", "cv2", "torch", "timm", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx", "cuda"}
