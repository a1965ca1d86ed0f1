"""Output where it is not a terminal (a pipe, a log, the journal): a long step says it has started, a progress task
that is not updated for a while (a first batch taking minutes) is reported all the same, and tables keep their
columns."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time

from rich.console import Console
from rich.table import Table

from mlic_edge.console import PlainProgress, describe_duration, show

SLOW_FIRST_BATCH = """import sys, time
from mlic_edge.train import trainer

forward, batches = trainer._TrainingLoss.forward, []


def slow_first_batch(self, *args):
    if not batches:
        print("(the first batch is running)", file=sys.stderr, flush=True)
        time.sleep(1)
    batches.append(1)
    return forward(self, *args)


trainer._TrainingLoss.forward = slow_first_batch
from mlic_edge.cli.app import main
sys.argv = ["mlic-edge", *sys.argv[1:]]
main()
"""


def in_order(lines: list[str], patterns: list[str]) -> list[str]:
    """The patterns not found in ``lines`` one after the other (each after the line of the one before)."""
    missing, start = [], 0
    for pattern in patterns:
        found = next((index for index in range(start, len(lines)) if re.search(pattern, lines[index])), None)
        if found is None:
            missing.append(pattern)
        else:
            start = found + 1
    return missing


def test_piped_training_says_first_batch_before_it_and_the_pace_after_it(tmp_path, synth_data):
    out = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-c", SLOW_FIRST_BATCH, "train", "--model", "baseline", "--data", f"voc:{synth_data}",
         "--out", str(out), "--backbone", "resnet10t", "--img-size", "32", "--batch-size", "32", "--workers", "0",
         "--epochs", "2", "--no-pretrained"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    assert in_order(lines, [r"^reading voc:.*…$", r"^building baseline \(resnet10t\)…$", r"^training baseline",
                            r"^epoch 1/2: first batch… \(of \d+, 32 images each at 32 px\)$",
                            r"^\(the first batch is running\)$",
                            r"^first batch took [\d.]+ s; at that pace an epoch of \d+ batch(es)? takes up to ",
                            r"^epoch 1/2: .*val mAP", r"^epoch 2/2: .*val mAP"]) == [], completed.stderr
    assert sum("first batch…" in line for line in lines) == 1, completed.stderr  # the first epoch's only


def test_a_task_without_updates_is_reported_every_interval():
    written = io.StringIO()
    with PlainProgress(console=Console(file=written, width=200), interval=0.05) as progress:
        progress.add_task("epoch 1/20", total=7, status="")
        deadline = time.monotonic() + 60
        while written.getvalue().count("epoch 1/20: 0/7") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert written.getvalue().count("epoch 1/20: 0/7") >= 2, written.getvalue()
    assert "plain-progress" not in [thread.name for thread in threading.enumerate()]  # stopped with the display


def test_a_finished_task_is_reported_once_and_no_more():
    written = io.StringIO()
    with PlainProgress(console=Console(file=written, width=200), interval=0.01) as progress:
        task = progress.add_task("validate", total=2, status="")
        progress.update(task, completed=2)
        time.sleep(0.2)
    assert written.getvalue().count("validate: 2/2") == 1
    assert written.getvalue().splitlines()[-1].startswith("validate: 2/2"), written.getvalue()


def test_durations_read_as_a_person_says_them():
    assert [describe_duration(seconds) for seconds in (0.04, 4.46, 45.4, 725, 3600, 12000.4)] == [
        "0.0 s", "4.5 s", "45 s", "12 min 5 s", "1 h", "3 h 20 min"]


def test_a_table_keeps_its_columns_in_a_pipe(capsys):
    table = Table(title="twelve columns")
    for column in range(12):
        table.add_column(f"column {column}")
    table.add_row(*[f"48.1234 result{column}" for column in range(12)])
    show(table)
    show(table, stderr=True)
    out, err = capsys.readouterr()
    for printed in (out, err):
        assert "…" not in printed and "48.1234 result11" in printed, printed
