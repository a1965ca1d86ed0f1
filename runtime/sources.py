"""Where frames come from: an image, a folder, a glob, a video file, a camera or a network stream.

``open_source(spec)`` picks the kind from the spec (Ultralytics-style: ``0``/``camera0``/``/dev/video0`` camera,
``rtsp://``/``http://`` stream, a path otherwise) and yields ``Frame``s. Unreadable images are yielded with
``image=None`` so the pipeline can count them; a lost stream raises ``SourceError``.
"""

from __future__ import annotations

import glob as globlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from mlic_edge.data.images import is_image_file, read_image
from mlic_edge.errors import SourceError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_CAMERA = re.compile(r"^(?:camera|cam)?(\d+)$|^(?:v4l2://)?(/dev/video\d+)$")


@dataclass
class Frame:
    image: np.ndarray | None
    """BGR uint8; None when the image could not be decoded."""
    source: str
    index: int
    timestamp: float
    """Seconds: position in a video, wall-clock time since start for a camera/stream, 0 for still images."""
    decode_ms: float


class Source:
    kind = "source"

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fps: float | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFiles(Source):
    """One image, a folder (sorted, non-image files ignored) or a glob."""

    def __init__(self, spec: str, paths: list[Path], kind: str) -> None:
        super().__init__(spec)
        self.paths = paths
        self.kind = kind

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            started = time.perf_counter()
            image = read_image(path)
            yield Frame(image, str(path), index, 0.0, (time.perf_counter() - started) * 1e3)


class VideoCapture(Source):
    """A video file, a camera or a stream through OpenCV (FFmpeg/V4L2/GStreamer, whatever cv2 was built with)."""

    def __init__(self, spec: str, target: str | int, kind: str) -> None:
        super().__init__(spec)
        self.kind = kind
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            hints = {
                "camera": "check the camera is connected and free (ls /dev/video*), or try another index",
                "stream": "check the URL, credentials and that the stream is live",
                "video": "the file may be corrupt or in a codec this OpenCV cannot decode",
            }
            raise SourceError(f"cannot open {kind} {spec!r}", hint=hints[kind])
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        frames = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
        self.frame_count = frames if frames > 0 else None

    def __iter__(self) -> Iterator[Frame]:
        started_wall = time.monotonic()
        index = 0
        while True:
            started = time.perf_counter()
            ok, image = self.capture.read()
            decode_ms = (time.perf_counter() - started) * 1e3
            if not ok:
                if self.kind == "video":
                    return
                raise SourceError(f"{self.kind} {self.spec!r} stopped delivering frames after {index}",
                                  hint="check the connection; the frames before were processed")
            if self.kind == "video":
                timestamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
            else:
                timestamp = time.monotonic() - started_wall
            yield Frame(image, self.spec, index, timestamp, decode_ms)
            index += 1

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str) -> Source:
    spec = str(spec)
    camera = _CAMERA.match(spec)
    if camera:
        return VideoCapture(spec, int(camera.group(1)) if camera.group(1) else camera.group(2), "camera")
    if spec.startswith(STREAM_SCHEMES):
        return VideoCapture(spec, spec, "stream")
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    if any(char in spec for char in "*?["):
        paths = sorted(Path(p) for p in globlib.glob(spec, recursive=True) if is_image_file(p))
        if not paths:
            raise SourceError(f"no images match {spec!r}", hint="check the pattern (quote it so the shell leaves it)")
        return ImageFiles(spec, paths, "glob")
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec!r} does not exist",
                          hint="give an image, a folder, a glob, a video file, camera0 or an rtsp:// URL")
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        if not paths:
            raise SourceError(f"folder {spec!r} holds no images", hint="supported: .jpg .jpeg .png .bmp .webp .tif")
        return ImageFiles(spec, paths, "folder")
    if is_image_file(path):
        return ImageFiles(spec, [path], "image")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoCapture(spec, str(path), "video")
    raise SourceError(f"{spec!r} is neither an image nor a video this tool knows",
                      hint=f"video suffixes: {' '.join(sorted(VIDEO_SUFFIXES))}")
