"""One stderr console for humans (stdout stays for JSON / JSONL) and the progress bar every long job uses."""

from __future__ import annotations

import threading
import time

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, soft_wrap=True)  # one message, one line, also in logs and the journal
results = Console(soft_wrap=True)  # stdout: the tables a command exists to show, as JSON and records go there too


def show(renderable: RenderableType, *, stderr: bool = False) -> None:
    """A command's result (a table) on stdout, so ``mlic-edge eval … > metrics.txt`` keeps it and nothing else
    (``stderr``: beside the messages, where stdout carries records). On a terminal it fits the window; elsewhere
    (a pipe, a file, a log) it keeps its natural width, where rich would cut every column to fit 80."""
    target = console if stderr else results
    target.print(renderable if target.is_terminal else NaturalWidth(renderable))


class NaturalWidth:
    """A renderable laid out as wide as it wants, whatever the console's width."""

    WIDEST = 100_000

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = Measurement.get(console, options.update_width(self.WIDEST), self.renderable).maximum
        yield from console.render(self.renderable, options.update_width(max(width, options.max_width)))


PLAIN_PROGRESS_SECONDS = 10.0  # how often a long task reports when stderr is not a terminal


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar on a terminal; elsewhere (CI logs, the systemd journal, a pipe) plain lines: one when a
    task finishes or its status changes after that, and one per task every ``PLAIN_PROGRESS_SECONDS``
    (``MLIC_EDGE_PROGRESS_SECONDS`` overrides it)."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient)
    import os

    interval = float(os.environ.get("MLIC_EDGE_PROGRESS_SECONDS", PLAIN_PROGRESS_SECONDS))
    return PlainProgress(*columns, console=console, interval=interval)


class PlainProgress(Progress):
    """rich's Progress without the live display, reporting in whole lines (see ``progress_bar``). A task that is
    not updated (a first batch that takes minutes) is reported all the same, from a thread that wakes when a task's
    interval is up."""

    def __init__(self, *columns, console: Console, interval: float) -> None:
        super().__init__(*columns, console=console, disable=True)
        self._interval = interval
        self._last: dict[TaskID, tuple[float, str | None]] = {}
        self._stopped = threading.Event()
        self._reporter: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if self._interval > 0 and self._reporter is None:  # at 0, every update is reported already
            self._stopped.clear()
            self._reporter = threading.Thread(target=self._report_when_due, name="plain-progress", daemon=True)
            self._reporter.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._reporter is not None:
            self._reporter.join()
            self._reporter = None
        super().stop()

    def _report_when_due(self) -> None:
        while True:
            with self._lock:
                running = [task_id for task_id in self._last if task_id in self._tasks
                           and not self._tasks[task_id].finished]
                due = min((self._last[task_id][0] + self._interval for task_id in running), default=None)
            wait = self._interval if due is None else max(0.0, due - time.monotonic())
            if self._stopped.wait(wait):
                return
            for task_id in running:
                self._report(task_id)

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._last[task_id] = (time.monotonic(), None)
        return task_id

    def update(self, task_id: TaskID, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: TaskID) -> None:
        with self._lock:  # the reporting thread and the updating one
            task = self._tasks.get(task_id)
            if task is None:  # removed meanwhile
                return
            status = str(task.fields.get("status", ""))
            logged_at, logged_status = self._last.get(task_id, (0.0, None))
            now = time.monotonic()
            if task.finished:
                if logged_status == f"done {status}":
                    return
                self._last[task_id] = (now, f"done {status}")
            elif now - logged_at >= self._interval:
                self._last[task_id] = (now, status)
            else:
                return
            done = f"{task.completed:g}/{task.total:g}" if task.total is not None else f"{task.completed:g}"
            elapsed = f"{task.elapsed:.1f} s" if task.elapsed is not None else ""
            self.console.print(" ".join(part for part in (f"{task.description}:", done, status, elapsed) if part),
                               highlight=False, markup=False)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def info(message: str) -> None:
    console.print(message, highlight=False)


def describe_duration(seconds: float) -> str:
    """'4.5 s', '45 s', '12 min 5 s', '3 h 20 min': a duration as a person reads it."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"
