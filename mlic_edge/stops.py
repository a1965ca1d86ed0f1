"""Clean stops: SIGINT and SIGTERM end a long command the same way (docs/design.md, "Stops").

``stop_on_signals()`` turns both into :class:`~mlic_edge.errors.Interrupted` in the main thread, so every ``with``
block unwinds: temporary files and folders are removed (``mlic_edge.io.atomic_path``, ``tempfile``), nothing is renamed
into place, and the CLI prints one line and exits 130 (SIGINT) or 143 (SIGTERM). ``signals_deferred()`` holds a
signal back while files that belong together are renamed (an artefact and run.json), so a stop lands before or
after them, never between.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from mlic_edge.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _stop_signals_handled_by(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous handlers after it (main thread only: Python
    delivers signals there; elsewhere nothing changes)."""
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block."""
    return _stop_signals_handled_by(_raise_interrupted)


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


def finish_on_signals(stop: threading.Event) -> contextlib.AbstractContextManager[None]:
    """For work that can end gracefully (``run``: finish what is in flight, flush and close every output): the first
    SIGINT or SIGTERM sets ``stop``; a second SIGINT stops at once."""

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise Interrupted(signum)
        stop.set()

    return _stop_signals_handled_by(request_stop)
