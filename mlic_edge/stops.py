"""Clean stops: SIGINT and SIGTERM end a long command the same way (docs/design.md, "Stops").

``stop_on_signals()`` turns both into :class:`~mlic_edge.errors.Interrupted` in the main thread, so every ``with``
block unwinds: temporary files and folders are removed (``mlic_edge.io.atomic_path``, ``tempfile``), nothing is renamed
into place, and the CLI prints one line and exits 130 (SIGINT) or 143 (SIGTERM). ``signals_deferred()`` holds a
signal back while files that belong together are renamed (an artefact and run.json), so a stop lands before or
after them, never between. ``finish_on_signals()`` lets ``run`` finish what is in flight first, then end the same
way; ``exit_uninterrupted()`` keeps a signal during the interpreter's shutdown from changing the exit status.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from typing import Iterator

from mlic_edge.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _stop_signals_handled_by(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers after it (main thread only: Python
    delivers signals there; elsewhere nothing changes)."""
    if not _in_main_thread():
        yield
        return
    installed_by = os.getpid()

    def in_this_process(signum: int, frame: object) -> None:
        # A process forked inside the block (a DataLoader worker, before its worker_init_fn ignores stop signals)
        # inherits the handler: there the stop is the parent's to make, which shuts its workers down.
        if os.getpid() == installed_by:
            handler(signum, frame)

    previous = {sig: signal.signal(sig, in_this_process) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block, the first of them only: the unwinding it starts
    (removing temporary files, joining threads) is not cut short by another, and the first decides the exit status."""
    raised: list[int] = []

    def raise_once(signum: int, frame: object) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    return _stop_signals_handled_by(raise_once)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is delivered when it ends (to the handler in place before)."""
    received: list[int] = []
    try:
        with _stop_signals_handled_by(lambda signum, frame: received.append(signum)):
            yield
    finally:
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def finish_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """For work that can end gracefully (``run``: finish what is in flight, flush and close every output): the first
    SIGINT or SIGTERM sets ``stop``, says so on stderr and is kept in the list the block gets, so the caller can end
    with its exit status (130 / 143) once the work is finished; a second one raises Interrupted at once (the first
    still decides the exit status and, as in ``stop_on_signals``, any after it leave the unwinding alone)."""
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) == 1:
            stop.set()
            # os.write, not print: the handler may run inside a write to stderr, which a second write would re-enter
            os.write(2, f"{signal.Signals(signum).name}: finishing what is in flight (SIGINT or SIGTERM again "
                        "stops at once)\n".encode())
        elif len(received) == 2:
            raise Interrupted(received[0], note="a second signal: stopped at once, without finishing what was in "
                                                "flight; every output ends with a whole record")

    with _stop_signals_handled_by(request_stop):
        yield received


def ignore_stop_signals() -> None:
    """SIGINT and SIGTERM do nothing in this process from now on: in worker processes, whose parent alone handles a
    stop, and at shutdown."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def exit_uninterrupted() -> None:
    """Once the interpreter shuts down, the command's outcome is decided and its line printed: a stop signal then
    (while ONNX Runtime, OpenCV and the modules are freed) is ignored instead of killing the process with another
    status and no line."""
    atexit.unregister(ignore_stop_signals)
    atexit.register(ignore_stop_signals)
