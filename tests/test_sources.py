"""Every source kind that can exist on this machine, and live-capture robustness against a local MJPEG server."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from mlic_edge.errors import SourceError
from mlic_edge.runtime.inference import sources
from mlic_edge.runtime.inference.sources import capture_target, csi_pipeline, gstreamer_available, open_source

BROKEN_JPEG = b"\xff\xd8\xff\xe0 not a jpeg"


def _jpeg(value: int) -> bytes:
    return cv2.imencode(".jpg", np.full((48, 64, 3), value, np.uint8))[1].tobytes()


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for value in range(3):
        (folder / f"im{value}.jpg").write_bytes(_jpeg(value * 80))
    (folder / "notes.md").write_text("not an image")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    return folder


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for value in range(8):
        writer.write(np.full((48, 64, 3), value * 30, np.uint8))
    writer.release()
    return path


def test_video_file_yields_every_frame_then_ends(video):
    with open_source(str(video)) as source:
        frames = list(source)
    assert source.kind == "video" and not source.live and source.fps == pytest.approx(10)
    assert len(frames) == 8 and [f.index for f in frames] == list(range(8))
    assert frames[-1].timestamp > frames[0].timestamp and frames[0].captured <= frames[-1].captured
    assert source.stats["reconnects"] == 0


def test_file_uri_form(video, images):
    assert len(list(open_source(f"file://{video}"))) == 8
    assert open_source(f"file://{images}").kind == "folder"


def test_folder_ignores_non_images_and_yields_broken_ones_as_none(images):
    with open_source(str(images)) as source:
        frames = list(source)
    assert source.kind == "folder" and not source.live
    assert [f.image is None for f in frames] == [False, False, False, True]
    assert source.stats["decode_failures"] == 1 and source.stats["missing"] == 0


def test_glob(images):
    source = open_source(str(images / "im*.jpg"))
    assert source.kind == "glob" and [f.source.rsplit("/", 1)[-1] for f in source] == ["im0.jpg", "im1.jpg", "im2.jpg"]


def test_list_file_skips_comments_resolves_relative_paths_and_flags_missing_entries(images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\nimages/im1.jpg\n\n  {images / 'im0.jpg'}  \nimages/gone.jpg\n")
    with open_source(str(listing)) as source:
        frames = list(source)
    assert source.kind == "list"
    assert [f.source.rsplit("/", 1)[-1] for f in frames] == ["im1.jpg", "im0.jpg", "gone.jpg"]
    assert [f.image is None for f in frames] == [False, False, True]
    assert source.stats["missing"] == 1 and source.stats["decode_failures"] == 1


def test_stop_ends_a_file_iteration(images):
    source = open_source(str(images))
    seen = []
    for frame in source:
        seen.append(frame)
        source.stop()
    assert len(seen) == 1


@pytest.mark.parametrize("spec, fragment", [
    ("ftp://example.org/x.mp4", "unknown source form"), ("csi://front", "unknown source form"),
    ("missing/folder", "does not exist"), ("rtsp://127.0.0.1:1/none", "cannot open stream"),
    ("gst:videotestsrc ! fakesink", "appsink"),
])
def test_bad_sources_are_one_clear_line(spec, fragment):
    with pytest.raises(SourceError, match=fragment) as error:
        open_source(spec)
    assert "\n" not in str(error.value)


def test_silent_rtp_stream_says_it_may_need_an_sdp(monkeypatch):
    monkeypatch.setattr(sources, "STREAM_OPEN_TIMEOUT_MS", 300)
    with pytest.raises(SourceError, match="cannot open stream") as error:
        open_source("rtp://127.0.0.1:9")
    assert "SDP" in error.value.hint


def test_unknown_form_lists_the_accepted_ones():
    with pytest.raises(SourceError) as error:
        open_source("ftp://example.org/x.mp4")
    for form in ("camera0", "csi://0", "rtsp://", "gst:PIPELINE", "file://", ".txt"):
        assert form in error.value.hint


@pytest.mark.parametrize("spec, target", [("camera0", 0), ("cam2", 2), ("0", 0), ("/dev/video1", "/dev/video1"),
                                          ("v4l2:///dev/video3", "/dev/video3"), ("v4l2://4", 4)])
def test_camera_forms(spec, target):
    parsed = capture_target(spec, width=640, height=480, fps=15)
    assert parsed.kind == "camera" and parsed.target == target and parsed.live
    assert dict(parsed.settings) == {cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 480,
                                     cv2.CAP_PROP_FPS: 15}


def test_absent_camera_lists_the_cameras_found(monkeypatch):
    monkeypatch.setattr(sources, "list_cameras", lambda: ["/dev/video0", "/dev/video2"])
    with pytest.raises(SourceError, match=r"camera 63 is not available; cameras found: /dev/video0, /dev/video2"):
        open_source("camera63")
    monkeypatch.setattr(sources, "list_cameras", lambda: [])
    with pytest.raises(SourceError, match="no camera found"):
        open_source("/dev/video63")


def test_csi_and_gstreamer_pipelines():
    assert capture_target("csi://1").target == csi_pipeline(1) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! "
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1")
    assert "width=640,height=480,framerate=2997/100" in capture_target("csi://0", 640, 480, 29.97).target
    assert capture_target("csi://0").api == cv2.CAP_GSTREAMER and capture_target("csi://0").live
    finite = capture_target("gst:videotestsrc num-buffers=5 ! videoconvert ! appsink")
    assert finite.kind == "gstreamer" and finite.target == "videotestsrc num-buffers=5 ! videoconvert ! appsink"
    assert not finite.live and capture_target("gst:v4l2src ! videoconvert ! appsink").live


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("spec", ["csi://0", "gst:videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_forms_say_this_opencv_lacks_gstreamer(spec):
    with pytest.raises(SourceError, match="built without it") as error:
        open_source(spec)
    assert "--system-site-packages" in error.value.hint


@pytest.mark.skipif(not gstreamer_available(), reason="this OpenCV has no GStreamer")
def test_gstreamer_pipeline_yields_frames():
    with open_source("gst:videotestsrc num-buffers=5 ! videoconvert ! appsink") as source:
        frames = list(source)
    assert source.kind == "gstreamer" and len(frames) == 5 and frames[0].image.ndim == 3


class MjpegServer:
    """A multipart/x-mixed-replace JPEG stream on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self, frames: list[bytes] | None = None, interval: float = 0.02) -> None:
        self.frames = frames or [_jpeg(100)]
        self.interval = interval
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        stopping = threading.Event()
        frames, interval = self.frames, self.interval

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = 0
                try:
                    while not stopping.is_set():
                        jpeg = frames[count % len(frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                         % (len(jpeg), jpeg))
                        count += 1
                        time.sleep(interval)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.stopping = stopping
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.stopping.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


@pytest.fixture
def mjpeg():
    server = MjpegServer()
    yield server
    server.stop()


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_mjpeg_stream_reconnects_after_a_restart_and_gives_up_when_gone(mjpeg):
    source = open_source(mjpeg.url, max_reconnects=4, reconnect_delay=0.05)
    assert source.kind == "stream" and source.live
    frames = iter(source)
    before = _take(frames, 3)
    assert all(f.image.shape == (48, 64, 3) for f in before)
    mjpeg.stop()
    threading.Timer(0.1, mjpeg.start).start()  # down for a moment: at least one attempt fails first
    after = [next(frames)]
    while source.stats["reconnects"] == 0 and len(after) < 100:  # frames in flight at the stop may come first
        after.append(next(frames))
    after += _take(frames, 2)
    assert source.stats["reconnects"] >= 1 and all(f.image is not None for f in after)
    assert after[0].index == 3 and after[0].timestamp > before[-1].timestamp
    mjpeg.stop()
    started = time.monotonic()
    with pytest.raises(SourceError, match="lost after 4 reconnects"):
        list(frames)
    assert time.monotonic() - started < 3
    source.close()


def test_undecodable_stream_frames_are_skipped_and_counted():
    server = MjpegServer([_jpeg(50), BROKEN_JPEG, BROKEN_JPEG, _jpeg(200)])
    try:
        with open_source(server.url, reconnect_delay=0.05) as source:
            frames = _take(iter(source), 4)
        assert all(f.image is not None for f in frames)
        assert source.stats["decode_failures"] >= 2 and source.stats["reconnects"] == 0
    finally:
        server.stop()


def test_stop_from_another_thread_ends_a_live_iteration(mjpeg):
    source = open_source(mjpeg.url)
    threading.Timer(0.3, source.stop).start()
    started = time.monotonic()
    frames = list(source)  # returns normally
    assert frames and time.monotonic() - started < 1.3
    source.close()


def test_stop_interrupts_the_reconnect_backoff(mjpeg):
    source = open_source(mjpeg.url, max_reconnects=3, reconnect_delay=30)
    frames = iter(source)
    next(frames)
    mjpeg.stop()
    threading.Timer(0.3, source.stop).start()
    started = time.monotonic()
    list(frames)  # returns normally, without waiting out the 30 s backoff
    assert time.monotonic() - started < 1.3
    source.close()


def test_close_from_another_thread_ends_a_live_iteration(mjpeg):
    source = open_source(mjpeg.url)
    threading.Timer(0.3, source.close).start()
    started = time.monotonic()
    assert list(source) and time.monotonic() - started < 1.3
