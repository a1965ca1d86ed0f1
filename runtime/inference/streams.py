"""How sources are read (``StreamOptions``), and several sources in one run: their names (``door=rtsp://…``, or one
made from the source), the ``--sources`` file, opening them so that one that cannot be opened does not stop the
others, and per-stream output paths (``out/{stream}.jsonl``). Loads no OpenCV until a source is opened or named from
its form, so the CLI and the commands take ``StreamOptions``' defaults at start."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import urlparse

from mlic_edge.console import warn
from mlic_edge.errors import MlicError, SourceError
from mlic_edge.spec import require_at_least, require_fraction

if TYPE_CHECKING:  # the sources module loads OpenCV: names are parsed (service install, --help) without it
    from mlic_edge.runtime.inference.sources import Source

STREAM_FIELD = "{stream}"
"""Where an output path takes each stream's name: ``--out 'out/{stream}.jsonl'`` writes one file per stream."""
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)$")
_MEANT_AS_NAME = re.compile(r"^([^=:/\\]+)=.")  # text before "=" that is no URL, path or GStreamer pipeline


@dataclass(frozen=True)
class StreamSpec:
    """A source of a run and the name its records, outputs and statistics carry."""

    name: str
    source: str


@dataclass(frozen=True)
class StreamOptions:
    """How ``Classifier.stream`` (and ``mlic-edge run``) reads a source; these are the only defaults."""

    batch: int = 1  # images per inference (at least one per stream; a live stream gives its newest frame)
    batch_timeout_ms: float = 0.0  # how long a batch waits for the other streams' frames (0: takes what is queued)
    max_frames: int | None = None  # per stream
    smoothing: float = 0.0  # EMA of scores across frames of a video or live source
    only_changes: bool = False
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    max_reconnects: int = 5

    def check(self) -> None:
        require_fraction("--smoothing", self.smoothing, upper_open=True, hint="0 turns it off; 0.8 is a good start")
        require_at_least("--batch", self.batch, 1, hint="images per inference, for example 8")
        require_at_least("--batch-timeout", self.batch_timeout_ms, 0, hint="milliseconds a batch may wait for the "
                                                                         "other streams, for example 20")
        require_at_least("--max-frames", self.max_frames, 1, hint="pass 1 or more")
        require_at_least("--max-reconnects", self.max_reconnects, 0, hint="0 never reconnects")
        require_at_least("--width", self.width, 1, hint="a capture width in pixels, for example 1280")
        require_at_least("--height", self.height, 1, hint="a capture height in pixels, for example 720")
        require_at_least("--fps", self.fps, 0, above=True, hint="a capture frame rate, for example 30")


def parse_streams(sources: Sequence[str], sources_file: Path | None = None) -> list[StreamSpec]:
    """The streams of a run from SOURCE arguments and a ``--sources`` file (one per line; blank lines and ``#``
    comments skipped), in that order. ``NAME=SOURCE`` names one (letters, digits, ``_.-``); the others are named after
    their source (a file's stem, the camera, the stream's host), made unique with ``-2``, ``-3``… Two streams of one
    source, or two of one name, are refused."""
    entries = [str(value).strip() for value in sources]
    if sources_file is not None:
        entries += _read_sources_file(Path(sources_file))
    if not entries:
        raise MlicError("no source given", hint="pass SOURCE (camera0, a video, rtsp://…) or --sources FILE")
    named = [_split_name(entry) for entry in entries]
    _refuse_repeats([source for _, source in named], "source", "each source once (one stream reads it)")
    _refuse_repeats([name for name, _ in named if name], "stream name", "give each stream its own name")
    taken = {name for name, _ in named if name}
    streams = []
    for name, source in named:
        if name is None:
            name = _unique(default_stream_name(source), taken)
            taken.add(name)
        streams.append(StreamSpec(name, source))
    return streams


def as_streams(sources: Any) -> list[StreamSpec]:
    """A run's streams from one SOURCE, a list of SOURCEs (``parse_streams``) or of ``StreamSpec``s."""
    if isinstance(sources, (str, Path)):
        return parse_streams([str(sources)])
    items = list(sources)
    return items if items and all(isinstance(item, StreamSpec) for item in items) else parse_streams(items)


def default_stream_name(source: str) -> str:
    """A short name for a source: ``camera0``, ``csi0``, a URL's host (and last path part), a file's stem."""
    from mlic_edge.runtime.inference.sources import capture_target

    target = capture_target(source)
    if target is not None and target.kind in ("camera", "csi"):
        digits = re.findall(r"\d+", source)
        return f"{target.kind}{digits[-1] if digits else 0}"
    if "://" in source and not source.startswith("file://"):
        parsed = urlparse(source)
        tail = Path(parsed.path).stem
        return _sanitised("-".join(part for part in (parsed.hostname, tail) if part) or "stream")
    if source.startswith("gst:"):
        return "gstreamer"
    return _sanitised(Path(source.removeprefix("file://").rstrip("/")).stem or "stream")


def output_paths(path: Path | None, names: Sequence[str], option: str, *, one_file: bool = True) -> dict[str, Path]:
    """Where ``option``'s output goes per stream: with ``{stream}`` in ``path``, one file each; without it, one file
    that every stream shares (``one_file``; refused where the output cannot mix streams, e.g. a video)."""
    if path is None:
        return {}
    text = str(path)
    if STREAM_FIELD in text:
        return {name: Path(text.replace(STREAM_FIELD, name)) for name in names}
    if len(names) > 1 and not one_file:
        raise MlicError(f"{option} {path} would mix {len(names)} streams in one file",
                        hint=f"put {STREAM_FIELD} in the path for one file per stream, e.g. out/{STREAM_FIELD}.mp4")
    return {name: Path(text) for name in names}


@contextlib.contextmanager
def open_streams(streams: Sequence[StreamSpec], *, width: int | None = None, height: int | None = None,
                 fps: float | None = None, max_reconnects: int = 5) -> Iterator[tuple[list[tuple[StreamSpec, Source]],
                                                                                    dict[str, str]]]:
    """Open every stream; yields the opened ones with their sources, and why the others could not be opened (by
    name). One stream is the run's: its error is raised. Of several, one that cannot be opened is warned about and
    left out, unless none opens. Every opened source is closed on leaving."""
    from mlic_edge.runtime.inference.sources import open_source

    failed: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        opened = []
        for stream in streams:
            try:
                source = stack.enter_context(open_source(stream.source, width=width, height=height, fps=fps,
                                                         max_reconnects=max_reconnects))
            except (MlicError, OSError) as error:
                if len(streams) == 1:
                    raise
                failed[stream.name] = getattr(error, "message", None) or str(error)
                warn(f"stream {stream.name} not opened: {failed[stream.name]}; the other streams go on")
                continue
            opened.append((stream, source))
        if not opened:
            raise SourceError(f"none of the {len(streams)} streams could be opened: "
                              + "; ".join(f"{name}: {why}" for name, why in failed.items()),
                              hint="check the sources (mlic-edge doctor lists the cameras)")
        yield opened, failed


def with_unopened(summary: dict[str, Any], streams: Sequence[StreamSpec], failed: dict[str, str]) -> dict[str, Any]:
    """A run's summary with the streams that could not be opened listed among its streams, with why."""
    if not failed:
        return summary
    unopened = [{"name": stream.name, "source": stream.source, "frames": 0, "records": 0, "fps": None,
                 "error": f"not opened: {failed[stream.name]}"} for stream in streams if stream.name in failed]
    return {**summary, "streams": [*summary.get("streams", []), *unopened]}


def failed_streams(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The streams of a run's summary that ended in error (or never opened)."""
    return [stream for stream in summary.get("streams", []) if stream.get("error")]


def _read_sources_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise MlicError(f"cannot read --sources {path}: {error.strerror or error}",
                        hint="pass a text file with one source per line (NAME=SOURCE to name one)") from error
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _split_name(entry: str) -> tuple[str | None, str]:
    """``NAME=SOURCE`` → (NAME, SOURCE); a source that merely holds ``=`` (a URL's query, a GStreamer pipeline, an
    existing file) stays whole. Text before ``=`` that is no URL, path or pipeline but no valid name either (``front
    door=rtsp://…``) is refused rather than opened as one source."""
    if Path(entry).exists():
        return None, entry
    match = _NAMED.match(entry)
    if match is not None:
        return match.group(1), match.group(2).strip()
    meant = _MEANT_AS_NAME.match(entry)
    if meant is not None:
        raise MlicError(f"stream name {meant.group(1)!r} (in {entry!r}) may hold only letters, digits, '-', '_' and "
                        "'.'", hint="rename it, e.g. front-door=rtsp://...")
    return None, entry


def _refuse_repeats(values: list[str], what: str, hint: str) -> None:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise MlicError(f"{what} {', '.join(repeated)} given more than once", hint=hint)


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


def _sanitised(text: str) -> str:
    """``text`` as a stream name: other characters turned to ``-``, starting with a letter or digit, 64 at most."""
    return (re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._") or "stream")[:64]


__all__ = ["STREAM_FIELD", "StreamOptions", "StreamSpec", "as_streams", "default_stream_name", "failed_streams", "open_streams", "output_paths",
           "parse_streams", "with_unopened"]
