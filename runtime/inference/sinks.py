"""Where records go: JSON lines (stdout or a file), CSV, an annotated video and a window — one ``Sink`` interface.

Interrupted runs keep what they wrote. JSONL and CSV files are written at their final path one complete line at
a time, flushed per line (so a consumer can tail them live); Ctrl-C, SIGTERM or an error therefore leave a valid
file of every record emitted so far. The file is created on the first record, so a run that fails before any
record leaves an existing file untouched; a run that ends normally with no record leaves an empty file (CSV: the
header). The video is written under a temporary name and renamed on close, also after an interruption, since
releasing the writer finalises the container. ``--append`` onto a file whose last line is partial (a run killed
mid-write by SIGKILL or a power cut) cuts it back to its last whole line first, with a warning, so no new record is
glued to the fragment.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import cv2
import numpy as np

from mlic_edge.console import warn
from mlic_edge.errors import MlicError
from mlic_edge.io import atomic_path

STOP_KEYS = frozenset({ord("q"), 27})  # 'q' and ESC in the window


@runtime_checkable
class Sink(Protocol):
    def write(self, frame: Any, record: dict[str, Any]) -> None:
        """``frame``: the source's Frame (its ``.image`` is drawn by image sinks); ``record``: the JSON record."""

    def close(self, ok: bool = True) -> None:
        """Flush and close; ``ok=False`` after an interruption or error (what was written stays valid)."""


def check_writable(path: Path) -> None:
    """Refuse before any work if ``path`` cannot be written: its folder must exist or be creatable, and be writable."""
    path = Path(path)
    if path.is_dir():
        raise _cannot_write(path, "it is a folder")
    if path.exists():
        if not path.is_file():  # /dev/null, a pipe: truncating or renaming onto it fails or replaces the device
            raise _cannot_write(path, "it is not a regular file")
        if not os.access(path, os.W_OK):
            raise _cannot_write(path, "permission denied")
        return
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise _cannot_write(path, f"{folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _cannot_write(path, f"no permission to write in {folder}")


def _cannot_write(path: Path, reason: str) -> MlicError:
    return MlicError(f"cannot write {path}: {reason}", hint="choose another output path")


class _LineFile:
    """A text file written at its final path one complete line at a time, unbuffered; opened on the first line.

    The file is locked (``flock``) while open, so a second writer is refused in one line instead of interleaving.
    A write that fails part-way (a full disk) is cut back to the last complete line before the error is raised, so
    the file always ends on a whole record.
    """

    def __init__(self, path: Path, first_line: str = "", append: bool = False) -> None:
        self.path = Path(path)
        self._first_line = first_line
        self._append = append
        self._handle: Any = None
        self.lines = 0

    def write(self, line: str) -> None:
        with self._errors_explained():
            if self._handle is None:
                self._open()
            self._write_whole(line)
        self.lines += 1

    def close(self, ok: bool = True) -> None:
        with self._errors_explained():
            if self._handle is None and ok:
                self._open()  # a normal run with no record still leaves its (empty or header-only) file
            if self._handle is not None:
                handle, self._handle = self._handle, None
                handle.close()  # releases the lock

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Append mode keeps the file valid under logrotate's copytruncate too: every write goes to the (new) end.
        handle = open(self.path, "ab", buffering=0)
        try:
            _lock(handle, self.path)
            if not self._append:
                handle.truncate(0)  # only once the lock is held: another writer's file is never emptied
            else:
                self._drop_partial_line(handle)
            if handle.seek(0, os.SEEK_END) == 0:
                self._handle = handle
                self._write_whole(self._first_line)
        except BaseException:
            handle.close()
            self._handle = None
            raise
        self._handle = handle

    def _drop_partial_line(self, handle: Any) -> None:
        size = handle.seek(0, os.SEEK_END)
        whole = _whole_lines_size(self.path, size)
        if whole < size:
            os.ftruncate(handle.fileno(), whole)
            warn(f"{self.path} ended in a partial line (an earlier run stopped mid-record): cut back {size - whole} "
                 "byte(s) to its last whole line before appending")

    def _write_whole(self, line: str) -> None:
        data = line.encode("utf-8")
        if not data:
            return
        start = self._handle.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += self._handle.write(data[written:])
        except OSError:
            self._cut_back(start)
            raise

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self._handle.fileno(), size)
        except (AttributeError, OSError, ValueError):
            pass  # nothing more can be done; the error that got us here is the one to report

    @contextlib.contextmanager
    def _errors_explained(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise MlicError(f"cannot write {self.path}: {error.strerror or error}",
                            hint=f"the {self.lines} record(s) already in it stay valid; free space or choose "
                                 "another output path") from error


def _whole_lines_size(path: Path, size: int, chunk: int = 1 << 16) -> int:
    """How many of the file's first ``size`` bytes end on a line break (its last whole line), read from the end."""
    with open(path, "rb") as reader:
        end = size
        while end > 0:
            start = max(0, end - chunk)
            reader.seek(start)
            found = reader.read(end - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            end = start
    return 0


def _lock(handle: Any, path: Path) -> None:
    """An exclusive, non-blocking lock on an output file (POSIX; elsewhere outputs are not locked)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise MlicError(f"{path} is being written by another process",
                        hint="stop that run, or choose another output path") from None


class JsonlSink:
    """One JSON record per line, to stdout (``path=None``) or a file (see the module docstring for validity)."""

    def __init__(self, path: Path | None = None, append: bool = False) -> None:
        self.path = path
        self._file = _LineFile(path, append=append) if path else None

    def write(self, frame: Any, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if self._file:
            self._file.write(line)
        else:
            sys.stdout.write(line)
            sys.stdout.flush()

    def close(self, ok: bool = True) -> None:
        if self._file:
            self._file.close(ok)
        else:
            sys.stdout.flush()


class CsvSink:
    """One row per record: (the stream, where several share the file,) source, index, timestamp, labels
    (``;``-joined), then one score column per label.

    Scores come from the record's ``scores`` (Postprocessor ``all_scores=True``); without it, the scores the
    record lists under ``labels`` / ``top_k`` are filled in and the other cells are left empty.
    """

    def __init__(self, path: Path, labels: list[str], append: bool = False, with_stream: bool = False) -> None:
        self.path = path
        self.labels = list(labels)
        self.with_stream = with_stream  # a first column naming the stream (a file that several streams share)
        self._file = _LineFile(path, first_line=self._row([*(["stream"] if with_stream else []), "source", "index",
                                                           "timestamp", "labels", *self.labels]), append=append)

    def write(self, frame: Any, record: dict[str, Any]) -> None:
        names = ";".join(item["label"] for item in record["labels"])
        self._file.write(self._row([*([record.get("stream")] if self.with_stream else []), record["source"],
                                    record["index"], record["timestamp"], names, *self._scores(record)]))

    def _scores(self, record: dict[str, Any]) -> list[Any]:
        if "scores" in record:
            return list(record["scores"])
        known = {item["label"]: item["score"] for item in (*record.get("top_k", ()), *record["labels"])}
        return [known.get(label, "") for label in self.labels]

    @staticmethod
    def _row(cells: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    def close(self, ok: bool = True) -> None:
        self._file.close(ok)


class VideoSink:
    """Draws the predicted labels on each frame and writes an MP4 (frames resized to the first frame's size).

    Nothing is created before the first frame; then a temporary file, renamed onto ``path`` on close."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = Path(path)
        self.fps = fps or 10.0
        self._context: contextlib.AbstractContextManager[Path] | None = None
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: Any, record: dict[str, Any] | list[dict[str, Any]]) -> None:
        """``write(frame, record)``; the older ``write(image, labels)`` form is accepted too."""
        image = _image_of(frame)
        if self._writer is None:
            self._open(image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(draw_labels(image, _labels_of(record)))

    def _open(self, width: int, height: int) -> None:
        context = atomic_path(self.path)
        tmp = context.__enter__()
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        if not writer.isOpened():
            context.__exit__(RuntimeError, None, None)
            raise MlicError(f"cannot write {self.path}: OpenCV could not open a video writer",
                            hint="check the folder and use the .mp4 suffix")
        self._context, self._writer, self._size = context, writer, (width, height)

    def close(self, ok: bool = True) -> None:
        if self._context is None:
            return
        self._writer.release()
        self._context.__exit__(None, None, None)  # kept even when interrupted: the released file is a complete video
        self._context = None


class WindowSink:
    """Shows each frame with its labels in a window; 'q' or ESC there sets ``stop_requested``."""

    def __init__(self, title: str = "mlic-edge") -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise MlicError("--show needs a display, and this session has none (DISPLAY and WAYLAND_DISPLAY unset)",
                            hint="run from a desktop session or over ssh -X, or use --save-video instead")
        self.title = title
        self.stop_requested = False
        self._opened = False

    def write(self, frame: Any, record: dict[str, Any]) -> None:
        try:
            cv2.imshow(self.title, draw_labels(_image_of(frame), _labels_of(record)))
            self._opened = True
            key = cv2.waitKey(1)
            closed_by_user = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error as error:  # opencv-python-headless has no GUI at all
            raise MlicError(f"cannot open a window: {str(error).strip().splitlines()[-1]}",
                            hint="install opencv-python (not -headless) for --show, or use --save-video") from error
        if closed_by_user or (key != -1 and (key & 0xFF) in STOP_KEYS):
            self.stop_requested = True

    def close(self, ok: bool = True) -> None:
        if self._opened:
            try:
                cv2.destroyWindow(self.title)
            except cv2.error:
                pass  # already closed by the user
            self._opened = False


def _image_of(frame: Any) -> np.ndarray:
    return frame if isinstance(frame, np.ndarray) else frame.image


def _labels_of(record: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return record if isinstance(record, list) else record["labels"]


def draw_labels(image: np.ndarray, labels: list[dict[str, Any]]) -> np.ndarray:
    canvas = image.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 400)
    line = int(22 * scale) + 4
    for row, item in enumerate(labels):
        text = f"{item['label']} {item['score']:.2f}"
        origin = (6, line * (row + 1))
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 255, 80), 1, cv2.LINE_AA)
    return canvas
