"""`mlic-edge models` counts parameters and FLOPs once per mlic-edge source, timm and PyTorch versions and label
count (building every model: tens of seconds), then lists from the user's cache: without importing PyTorch, the
same JSON as when counted, and its table whole when piped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_helpers import invoke
from mlic_edge.commands import models as models_command
from mlic_edge.commands.models import ModelsRequest, list_zoo

LONG_PAPER = "A paper whose title runs on well past the eighty columns rich gives a table it prints into a pipe"


def toy_rows(classes: int, flops: bool) -> list[dict]:
    row = {"name": "toy", "paper": LONG_PAPER, "default_backbone": "resnet10t", "default_img_size": 224,
           "num_classes": classes, "img_size": 224, "params_train_M": 1.5, "params_inference_M": 1.25,
           "needs_label_graph": False, "options": {"pool": "avg"}, "recipes": {}}
    return [{**row, "GFLOPs": 48.123456, "GMACs": 24.061728} if flops else row]


@pytest.fixture
def counts(monkeypatch, tmp_path) -> list[tuple[int, bool]]:
    """Each (classes, flops) the zoo is counted for, by a stand-in that builds nothing; the cache in tmp_path, and no
    packaged listing."""
    monkeypatch.setenv("MLIC_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models_command, "PACKAGED_LISTING", tmp_path / "not-packaged.json")
    made: list[tuple[int, bool]] = []

    def count(request: ModelsRequest, progress) -> list[dict]:
        made.append((request.classes, request.flops))
        return toy_rows(request.classes, request.flops)

    monkeypatch.setattr(models_command, "_count_zoo", count)
    return made


def test_the_zoo_is_counted_once_per_label_count(counts):
    first = list_zoo(ModelsRequest(classes=80))
    assert list_zoo(ModelsRequest(classes=80)) == first == toy_rows(80, flops=True)
    assert list_zoo(ModelsRequest(classes=80, flops=False)) == toy_rows(80, flops=False)  # from the same listing
    assert list_zoo(ModelsRequest(classes=20)) == toy_rows(20, flops=True)
    assert list_zoo(ModelsRequest(classes=80)) == first  # both label counts kept
    assert counts == [(80, True), (20, True)]


def test_flops_asked_after_a_listing_without_them_are_counted(counts):
    list_zoo(ModelsRequest(flops=False))
    assert list_zoo(ModelsRequest()) == toy_rows(80, flops=True)
    assert list_zoo(ModelsRequest(flops=False)) == toy_rows(80, flops=False)
    assert counts == [(80, False), (80, True)]


def test_another_source_or_timm_counts_again(counts, monkeypatch):
    list_zoo(ModelsRequest())
    key = models_command.listing_key
    monkeypatch.setattr(models_command, "listing_key", lambda classes: {**key(classes), "timm": "0.0.1"})
    list_zoo(ModelsRequest())
    assert counts == [(80, True), (80, True)]


def test_the_key_follows_the_source(tmp_path):
    assert models_command.listing_key(80) == models_command.listing_key(80) != models_command.listing_key(20)
    assert set(models_command.listing_key(80)) == {"mlic_edge", "source_sha256", "timm", "torch", "classes"}


def test_a_damaged_or_unwritable_cache_costs_time_not_the_listing(counts, monkeypatch, tmp_path):
    cache = tmp_path / "cache" / "models.json"
    cache.parent.mkdir()
    cache.write_text('{"listings": [{"key": "not a key"}, 7], "garbage"')
    assert list_zoo(ModelsRequest()) == toy_rows(80, flops=True)
    assert list_zoo(ModelsRequest()) == toy_rows(80, flops=True) and counts == [(80, True)]  # rewritten whole
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    monkeypatch.setenv("MLIC_EDGE_CACHE_DIR", str(in_the_way / "cache"))  # a folder that cannot be made
    assert list_zoo(ModelsRequest()) == toy_rows(80, flops=True)


LISTING = """import sys
from mlic_edge.cli.app import main
sys.argv = ['mlic-edge', 'models', *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    print('exit', stop.code or 0, 'torch' in sys.modules, file=sys.stderr)
"""


def list_in_a_pipe(*args: str) -> tuple[str, str]:
    """``mlic-edge models ARGS`` in a fresh interpreter, stdout and stderr pipes: (stdout, stderr)."""
    completed = subprocess.run([sys.executable, "-c", LISTING, *args], capture_output=True, text=True, timeout=120)
    return completed.stdout, completed.stderr


def test_a_cached_listing_imports_no_pytorch_and_its_table_keeps_its_columns_in_a_pipe(counts):
    rows = list_zoo(ModelsRequest(classes=20))
    out, err = list_in_a_pipe("--classes", "20")
    assert err.split()[-3:] == ["exit", "0", "False"], err  # exit 0, and torch never imported
    assert "…" not in out and LONG_PAPER in out and "48.1" in out, out
    out, err = list_in_a_pipe("--classes", "20", "--json")
    assert json.loads(out) == rows and err.split()[-3:] == ["exit", "0", "False"], err


def test_a_listing_read_back_is_the_one_counted(capsys, monkeypatch, tmp_path):
    """The real zoo: counted once, then read back as the same JSON."""
    from mlic_edge.models import summary

    monkeypatch.setenv("MLIC_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    summarized = []
    monkeypatch.setattr(summary, "summarize", lambda *args, summarize=summary.summarize, **kwargs:
                        summarized.append(args[0].name) or summarize(*args, **kwargs))
    counted = invoke(capsys, "models", "--json", "--no-flops", "--classes", "3")
    assert counted.code == 0, counted.err
    models = len(summarized)
    read_back = invoke(capsys, "models", "--json", "--no-flops", "--classes", "3")
    assert read_back.out == counted.out and len(summarized) == models >= 6


def test_the_packaged_listing_matches_the_zoo_so_a_new_install_builds_nothing(tmp_path):
    """The package ships the zoo's listing at the default label count: after any change to mlic_edge/models it must be
    counted again (python -m mlic_edge.commands.models), and a fresh install lists from it without PyTorch."""
    import json
    import os
    import subprocess
    import sys

    from mlic_edge.commands.models import PACKAGED_LISTING, ModelsRequest, listing_key

    shipped = json.loads(PACKAGED_LISTING.read_text())["listings"][0]
    assert shipped["key"] == listing_key(ModelsRequest().classes), \
        "mlic_edge/models changed since listing.json was counted: run python -m mlic_edge.commands.models"
    assert shipped["flops"] and {row["name"] for row in shipped["rows"]} >= {"baseline", "mlgcn", "q2l", "msrn"}
    probe = ("import sys\nfrom mlic_edge.commands.models import list_zoo\nrows = list_zoo()\n"
             "print(len(rows), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "MLIC_EDGE_CACHE_DIR": str(tmp_path / "empty-cache")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(shipped["rows"])), "False"]
    assert not (tmp_path / "empty-cache").exists()  # nothing had to be counted, so nothing was cached
