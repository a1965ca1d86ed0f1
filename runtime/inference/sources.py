"""Where frames come from: files (an image, a folder, a glob, a .txt list, a video) or live captures (a V4L2 camera,
a Jetson CSI camera, a network stream, a GStreamer pipeline).

``open_source(spec)`` picks the kind from one SOURCE string (the jetson-inference URI forms ``v4l2://``, ``csi://``,
``file://``, ``rtp://`` work too) and yields ``Frame``s. File sources yield every item in order, an unreadable one
with ``image=None``. Live sources skip frames that fail to decode, reconnect with backoff when the stream drops and
raise ``SourceError`` once ``max_reconnects`` consecutive attempts have failed. ``stop()`` ends any iteration soon.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from mlic_edge.console import info, warn
from mlic_edge.data.images import is_image_file, read_image
from mlic_edge.errors import SourceError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "rtp://", "tcp://")
LIVE_KINDS = frozenset({"camera", "csi", "stream", "gstreamer"})
ACCEPTED_FORMS = ("camera0, cam0, 0, /dev/video0, v4l2:///dev/video0, csi://0, rtsp:// rtmp:// http(s):// udp:// "
                  "rtp:// tcp:// URLs, gst:PIPELINE, file://PATH, or a path to an image, a folder, a glob, "
                  "a video file or a .txt list of image paths")
CSI_DEFAULT = (1280, 720, 30.0)
MAX_BACKOFF_S = 5.0
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000
FAILED_READS_BEFORE_DROP = 5
"""A read can fail on one undecodable frame (FFmpeg reports it like a closed connection): only this many failures
in a row, or failing for ``STALL_S``, mean the source dropped."""
STALL_S = 2.0

# AV_LOG_QUIET unless the user chose a level; OpenCV reads it once, when something first uses FFmpeg
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
_V4L2 = getattr(cv2, "CAP_V4L2", cv2.CAP_ANY)
_CAMERA = re.compile(r"^(?:camera|cam|v4l2://)?(\d+)$|^(?:v4l2://)?(/dev/video\d+)$")
_CSI = re.compile(r"^csi://(\d+)$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_FINITE_GSTREAMER = re.compile(r"\b(?:filesrc|multifilesrc|num-buffers\s*=)")


@dataclass
class Frame:
    image: np.ndarray | None
    """BGR uint8; None when the image/frame could not be decoded."""
    source: str
    index: int
    timestamp: float
    """Seconds: position in a video, wall-clock time since start for a live source, 0 for still images."""
    decode_ms: float
    captured: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when the frame was captured/decoded: end-to-end latency starts here."""
    service_ms: float = 0.0
    """Time the pipeline's stages have worked on this frame since ``captured`` (its share of a batch's)."""
    timing: dict[str, float] = field(default_factory=dict)
    """That time per stage (ms), which the frame's ``Result`` carries."""
    stream: int = 0
    """The number of its stream in a run of several sources (runtime/inference/pipeline.py)."""


class Source:
    """Frames from somewhere. ``stats`` counts ``decode_failures`` (files: yielded with ``image=None``; live: skipped),
    ``missing`` (listed files that do not exist) and ``reconnects`` (successful reopenings of a live source)."""

    kind = "source"
    live = False

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fps: float | None = None
        self.stats: dict = {"decode_failures": 0, "missing": 0, "reconnects": 0}
        self._stopping = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask the iteration to end soon; safe from another thread or a signal handler. Iteration returns normally."""
        self._stopping.set()

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageFiles(Source):
    """Still images: one image, a folder, a glob or a .txt list. Unreadable or missing ones come as ``image=None``."""

    def __init__(self, spec: str, paths: list[Path], kind: str) -> None:
        super().__init__(spec)
        self.paths = paths
        self.kind = kind

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            if self.stopped:
                return
            started = time.perf_counter()
            image = read_image(path)
            captured = time.perf_counter()
            if image is None:
                self.stats["decode_failures"] += 1
                if not path.exists():
                    self.stats["missing"] += 1
            yield Frame(image, str(path), index, 0.0, (captured - started) * 1e3, captured)


@dataclass(frozen=True)
class CaptureTarget:
    """What to hand ``cv2.VideoCapture``: ``target`` through backend ``api`` with open-time ``params``, then the
    ``settings`` (property, value) applied after opening."""

    kind: str
    target: str | int
    api: int = cv2.CAP_ANY
    params: tuple[int, ...] = ()
    settings: tuple[tuple[int, float], ...] = ()

    @property
    def live(self) -> bool:
        if self.kind == "gstreamer":
            return not _FINITE_GSTREAMER.search(str(self.target))
        return self.kind in LIVE_KINDS


class CaptureSource(Source):
    """A video file or a live capture through OpenCV (FFmpeg / V4L2 / GStreamer)."""

    def __init__(self, spec: str, target: CaptureTarget, *, max_reconnects: int = 5,
                 reconnect_delay: float = 0.5) -> None:
        super().__init__(spec)
        _quiet_native_logs()
        self.target = target
        self.kind = target.kind
        self.live = target.live
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        if target.api == cv2.CAP_GSTREAMER and not gstreamer_available():
            raise SourceError(f"{spec!r} needs GStreamer, and this OpenCV was built without it (GStreamer: NO)",
                              hint="pip's opencv-python has no GStreamer; on a Jetson use JetPack's OpenCV "
                                   "(python3-opencv) in a venv made with --system-site-packages, without "
                                   "opencv-python installed")
        if target.kind == "camera" and sys.platform.startswith("linux") and not _camera_device(target.target).exists():
            raise _camera_error(target.target)  # before OpenCV tries, so its own warnings stay out of the way
        self._capture_lock = threading.Lock()  # close() from another thread must not release during a read
        self.capture = self._open()
        if not self.capture.isOpened():
            raise _open_error(spec, target)
        self._warn_unmet_settings()
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        frames = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)) if target.kind in ("video", "stream") else 0
        self.frame_count = frames if frames > 0 else None
        if target.kind == "stream" and self.frame_count:
            self.live = False  # a video file served over HTTP: its end is the end, not a drop

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.target.target, self.target.api, list(self.target.params))
        if capture.isOpened():
            for prop, value in self.target.settings:
                capture.set(prop, value)
        return capture

    def _warn_unmet_settings(self) -> None:
        names = {cv2.CAP_PROP_FRAME_WIDTH: "width", cv2.CAP_PROP_FRAME_HEIGHT: "height", cv2.CAP_PROP_FPS: "fps"}
        unmet = [f"{names[prop]} {self.capture.get(prop):g} instead of {value:g}"
                 for prop, value in self.target.settings if abs(self.capture.get(prop) - value) > 0.5]
        if unmet:
            warn(f"{self.kind} {self.spec} gives {', '.join(unmet)}")

    def __iter__(self) -> Iterator[Frame]:
        started = last_good = time.monotonic()
        index = failed_reads = reconnect_attempts = 0
        while not self.stopped:
            read_started = time.perf_counter()
            with self._capture_lock:
                ok, image = self.capture.read()
            captured = time.perf_counter()
            if ok and image is not None and image.size:
                self.stats["decode_failures"] += failed_reads
                failed_reads = reconnect_attempts = 0
                last_good = time.monotonic()
                if self.live:
                    timestamp = last_good - started
                else:
                    timestamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
                yield Frame(image, self.spec, index, timestamp, (captured - read_started) * 1e3, captured)
                index += 1
                continue
            if not self.live:
                return
            if ok:  # delivered, but nothing decoded
                self.stats["decode_failures"] += 1
                continue
            failed_reads += 1
            if failed_reads < FAILED_READS_BEFORE_DROP and time.monotonic() - last_good < STALL_S:
                continue
            reconnect_attempts = self._reconnect(reconnect_attempts, index)
            failed_reads = 0
            last_good = time.monotonic()

    def _reconnect(self, attempts: int, frames_so_far: int) -> int:
        """Reopen after a drop, waiting ``reconnect_delay * 2**k`` before attempt k; returns the attempts made
        since the last good frame. Raises once ``max_reconnects`` of them have failed."""
        while not self.stopped:
            if attempts >= self.max_reconnects:
                raise SourceError(f"{self.kind} {self.spec!r} lost after {attempts} reconnects; "
                                  f"the {frames_so_far} frames before were processed",
                                  hint="check the camera/stream; raise --max-reconnects to wait longer")
            delay = min(self.reconnect_delay * 2 ** attempts, MAX_BACKOFF_S)
            attempts += 1
            state = f"dropped after {frames_so_far} frames" if attempts == 1 else "still unreachable"
            warn(f"{self.kind} {self.spec} {state}; reconnecting in {delay:.2f} s "
                 f"(attempt {attempts}/{self.max_reconnects})")
            if self._stopping.wait(delay):
                break
            with self._capture_lock:
                if self.stopped:
                    break
                self.capture.release()
                self.capture = self._open()
            if self.capture.isOpened():
                self.stats["reconnects"] += 1
                info(f"{self.kind} {self.spec} reconnected")
                break
        return attempts

    def close(self) -> None:
        self.stop()
        with self._capture_lock:
            self.capture.release()


@lru_cache(maxsize=1)
def _quiet_native_logs() -> None:
    """Keep OpenCV's (and, through OPENCV_FFMPEG_LOGLEVEL above, FFmpeg's) per-frame messages off the console:
    failures are counted and reported here. A user who sets OPENCV_LOG_LEVEL gets what they asked for."""
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


@lru_cache(maxsize=1)
def gstreamer_available() -> bool:
    """Whether this OpenCV can open GStreamer pipelines (pip's opencv-python cannot)."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def list_cameras() -> list[str]:
    """The V4L2 devices (``/dev/video*``) OpenCV can open; metadata nodes and busy cameras are left out."""
    found = []
    for path in sorted(globlib.glob("/dev/video*"), key=_device_number):
        capture = cv2.VideoCapture(path, _V4L2)
        if capture.isOpened():
            found.append(path)
        capture.release()
    return found


def _device_number(path: str) -> int:
    digits = re.search(r"(\d+)$", path)
    return int(digits.group(1)) if digits else -1


def csi_pipeline(sensor_id: int, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc), delivering BGR to OpenCV."""
    width, height, fps = width or CSI_DEFAULT[0], height or CSI_DEFAULT[1], fps or CSI_DEFAULT[2]
    rate = Fraction(fps).limit_denominator(1001)
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={rate.numerator}/{rate.denominator} ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            "video/x-raw,format=BGR ! appsink drop=true max-buffers=1")


def capture_target(spec: str, width: int | None = None, height: int | None = None,
                   fps: float | None = None) -> CaptureTarget | None:
    """How to open a camera, CSI camera, stream or GStreamer spec; ``None`` when ``spec`` names files."""
    camera = _CAMERA.match(spec)
    if camera:
        index, device = camera.groups()
        settings = tuple((prop, float(value)) for prop, value in
                         ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                          (cv2.CAP_PROP_FPS, fps)) if value)
        target: str | int = device if device else int(index)
        return CaptureTarget("camera", target, _V4L2, settings=settings)
    csi = _CSI.match(spec)
    if csi:
        return CaptureTarget("csi", csi_pipeline(int(csi.group(1)), width, height, fps), cv2.CAP_GSTREAMER)
    if spec.startswith("gst:"):
        pipeline = spec[len("gst:"):].strip()
        if "appsink" not in pipeline:
            raise SourceError(f"GStreamer pipeline {pipeline!r} does not end in an appsink",
                              hint="end it with '! videoconvert ! video/x-raw,format=BGR ! appsink'")
        return CaptureTarget("gstreamer", pipeline, cv2.CAP_GSTREAMER)
    if spec.startswith(STREAM_SCHEMES):
        timeouts = (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_READ_TIMEOUT_MS)
        return CaptureTarget("stream", spec, cv2.CAP_FFMPEG, timeouts)
    scheme = _SCHEME.match(spec)
    if scheme and scheme.group(1).lower() != "file":
        raise SourceError(f"unknown source form {spec!r}", hint=f"accepted: {ACCEPTED_FORMS}")
    return None


def _open_error(spec: str, target: CaptureTarget) -> SourceError:
    if target.kind == "camera":
        return _camera_error(target.target)
    if target.kind == "csi":
        return SourceError(f"cannot open CSI camera {spec!r} through nvarguscamerasrc",
                           hint="check the sensor id, that nvargus-daemon runs (sudo systemctl restart "
                                "nvargus-daemon) and that no other program holds the camera")
    if target.kind == "gstreamer":
        return SourceError(f"GStreamer could not start {spec!r}",
                           hint="try the pipeline with gst-launch-1.0 (appsink replaced by fakesink)")
    if target.kind == "stream":
        hint = "check the URL, credentials and that the stream is live"
        if spec.startswith("rtp://"):
            hint = "rtp:// usually needs an SDP description; use a gst: pipeline with udpsrc and caps instead"
        elif spec.startswith("rtsp://"):
            hint += "; for RTSP over TCP set OPENCV_FFMPEG_CAPTURE_OPTIONS='rtsp_transport;tcp'"
        return SourceError(f"cannot open stream {spec!r}", hint=hint)
    return SourceError(f"cannot open video {spec!r}",
                       hint="the file may be corrupt or in a codec this OpenCV cannot decode")


def _camera_device(target: str | int) -> Path:
    return Path(target if isinstance(target, str) else f"/dev/video{target}")


def _camera_error(target: str | int) -> SourceError:
    device = _camera_device(target)
    cameras = list_cameras()
    found = f"cameras found: {', '.join(cameras)}" if cameras else "no camera found"
    number = _device_number(str(device))
    if device.exists():
        return SourceError(f"cannot open camera {number}: {device} exists but OpenCV cannot capture from it; "
                           f"{found}", hint="another program may hold it (fuser -v /dev/video*)")
    return SourceError(f"cannot open camera {number}: camera {number} is not available; {found}",
                       hint="check the cable and ls /dev/video*" + (", or pick one of the cameras found" if cameras
                                                                     else ""))


def _list_file_paths(list_file: Path) -> list[Path]:
    """One path per line; blank lines and ``#`` comments skipped; relative paths are relative to the list file."""
    paths = []
    for line in list_file.read_text().splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


_NO_IMAGES = {"glob": ("no images match {spec!r}", "check the pattern (quote it so the shell leaves it)"),
              "folder": ("folder {spec!r} holds no images", "supported: .jpg .jpeg .png .bmp .webp .tif"),
              "list": ("list {spec!r} names no images", "write one image path per line")}


def _file_paths(path_spec: str) -> tuple[str, list[Path]]:
    """(kind, files) of a file source: glob, folder, list (the list file, then its entries), image or video; kind
    missing or unknown (no files) for a path that is not there or no source this tool knows."""
    if any(char in path_spec for char in "*?["):
        return "glob", sorted(Path(p) for p in globlib.glob(path_spec, recursive=True) if is_image_file(p))
    path = Path(path_spec).expanduser()
    if not path.exists():
        return "missing", []
    if path.is_dir():
        return "folder", sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
    if path.suffix.lower() == ".txt":
        return "list", [path, *_list_file_paths(path)]
    if is_image_file(path):
        return "image", [path]
    return ("video", [path]) if path.suffix.lower() in VIDEO_SUFFIXES else ("unknown", [])


def _path_spec(spec: str) -> str:
    return spec[len("file://"):] if spec.startswith("file://") else spec


def _file_source(spec: str, path_spec: str) -> Source:
    kind, paths = _file_paths(path_spec)
    if kind == "missing":
        raise SourceError(f"{spec!r} does not exist", hint=f"accepted: {ACCEPTED_FORMS}")
    if kind == "unknown":
        raise SourceError(f"{spec!r} is neither an image, a video nor a .txt list this tool knows",
                          hint=f"video suffixes: {' '.join(sorted(VIDEO_SUFFIXES))}")
    if kind == "video":
        return CaptureSource(spec, CaptureTarget("video", str(paths[0])))
    images = paths[1:] if kind == "list" else paths
    if not images:
        message, hint = _NO_IMAGES[kind]
        raise SourceError(message.format(spec=spec), hint=hint)
    return ImageFiles(spec, images, kind)


def source_files(spec: str) -> list[Path]:
    """Every file SOURCE will read: the video, the image, the images of a folder or glob, or a list and the images
    it names; none for a live source (what no output may overwrite: ``mlic_edge.io.refuse_output_onto_inputs``)."""
    spec = str(spec).strip()
    return [] if capture_target(spec) is not None else _file_paths(_path_spec(spec))[1]


def open_source(spec: str, *, width: int | None = None, height: int | None = None, fps: float | None = None,
                max_reconnects: int = 5, reconnect_delay: float = 0.5) -> Source:
    """Open SOURCE. ``width``/``height``/``fps`` apply to cameras (V4L2 and CSI); live sources reconnect up to
    ``max_reconnects`` times in a row, waiting ``reconnect_delay * 2**k`` seconds (at most 5 s) before attempt k."""
    spec = str(spec).strip()
    target = capture_target(spec, width, height, fps)
    if (width or height or fps) and (target is None or target.kind not in ("camera", "csi")):
        warn(f"--width/--height/--fps apply to cameras (camera0, csi://0) only; ignored for {spec}")
    if target is not None:
        return CaptureSource(spec, target, max_reconnects=max_reconnects, reconnect_delay=reconnect_delay)
    return _file_source(spec, _path_spec(spec))
