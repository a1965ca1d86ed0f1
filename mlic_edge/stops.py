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
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block (outside the main thread: no change)."""
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is delivered when it ends (to the handler in place before)."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


@contextlib.contextmanager
def finish_on_signals(stop: threading.Event) -> Iterator[None]:
    """For work that can end gracefully (``run``: finish what is in flight, flush and close every output): the first
    SIGINT or SIGTERM sets ``stop``; a second SIGINT stops at once."""
    if not _in_main_thread():
        yield
        return

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise Interrupted(signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
