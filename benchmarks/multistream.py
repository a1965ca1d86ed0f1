"""Multi-stream benchmark: what cross-stream batching (`mlic-edge run SRC SRC ...`) buys over one process per stream
and over streams one after another, and how close one stream's pipeline comes to its bound.

    python benchmarks/multistream.py --out benchmarks/results          # writes multistream.json and multistream.md

Backends: the modelled accelerator (benchmarks/accelerator.py: it waits a + b·c ms per batch of b on one device
shared by every process through a lock file, taking no CPU; a and c from NVIDIA's MLPerf Jetson AGX Orin ResNet-50
results), as published (--scales 1) and slowed down (a number: both a and c times it; ``feed``: batch-1 device time
made equal to this machine's measured feed time per frame), and ONNX Runtime on the CPU (a small baseline model with
random weights; throughput does not depend on them). Sources: generated 640x480 MP4 files, one per stream.

Each round measures, for each backend in turn:
- one stream: the pipeline (Classifier.run, batch 1) and a sequential loop over the same Classifier (decode →
  prepare → infer → postprocess + JSON, one after another, each stage timed); the bound is 1/max(stage) from the
  loop's per-stage service times (each stage alone, nothing competing);
- N streams (--streams): one run of all N (batch N), N single-stream processes started at once (subprocesses of this
  script, each with its own classifier on the shared device; timed from a common start signal, their start-up
  excluded) and the N streams one after another in this process.
Figures are medians over the rounds with the spread (max - min) / median. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import cv2

from accelerator import MLPERF_SOURCE, ORIN_RESNET50, DeviceTiming, ModelledAccelerator
from common import (BENCH_LABELS, IMAGENET_MEAN, IMAGENET_STD, make_run, notes_section, results_header,
                    write_results)
from mlic_edge.rundir import installed_versions
from mlic_edge.runtime.checks.bench import make_video, spread
from mlic_edge.runtime.inference.backends import create_backend
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.runtime.inference.streams import StreamOptions
from mlic_edge.runtime.inference.streams import open_streams, parse_streams
from mlic_edge.spec import ModelSpec

ACCELERATOR_IMG_SIZE = 224  # the modelled engine is a ResNet-50 at 224 px: the feed resizes to that
CPU_BACKBONE, CPU_IMG_SIZE = "resnet10t", 96  # the demo's model: small enough for 8 streams on 2 cores
STAGES = ("decode", "preprocess", "inference", "postprocess")
MODES = ("one_run", "processes", "sequential")


@dataclass(frozen=True)
class Setting:
    """One backend configuration, passed to the worker processes as JSON."""

    name: str
    kind: str  # "accelerator", "onnxruntime" or "torch" (the PyTorch reference, on ``device``)
    fixed_ms: float = 0.0
    per_image_ms: float = 0.0
    scale: float = 1.0
    lock: str = ""
    run: str = ""
    device: str = "cpu"

    @property
    def timing(self) -> DeviceTiming:
        return DeviceTiming(self.fixed_ms, self.per_image_ms)


def open_classifier(setting: Setting) -> Classifier:
    if setting.kind == "accelerator":
        spec = ModelSpec(BENCH_LABELS, ACCELERATOR_IMG_SIZE, IMAGENET_MEAN, IMAGENET_STD)
        return Classifier(ModelledAccelerator(len(BENCH_LABELS), setting.timing, Path(setting.lock)), spec)
    from mlic_edge.rundir import RunDir

    run = RunDir(Path(setting.run))
    spec = ModelSpec.from_run(run.read())
    if setting.kind == "torch":
        from mlic_edge.runtime.inference.backends.torch_backend import TorchBackend

        return Classifier(TorchBackend(run.checkpoint, device=setting.device), spec)
    return Classifier(create_backend("onnxruntime", run, "fp32", "cpu"), spec)


def device_busy_ms(classifier: Classifier) -> float | None:
    return getattr(classifier.backend, "busy_ms", None)


# --- the three ways to run streams -------------------------------------------------------------------------------
def pipeline_run(classifier: Classifier, videos: list[Path], batch: int) -> dict[str, Any]:
    """One pipeline over ``videos`` (each result written as a JSON line to nowhere): frames, wall time, per-stream
    fps, stage service times, batch fill and the device's busy time."""
    busy = device_busy_ms(classifier)
    with open_streams(parse_streams([str(video) for video in videos])) as (opened, _failed):
        summary = classifier.run(opened, StreamOptions(batch=batch),
                                 on_result=lambda frame, result: json.dumps(result.to_dict()))
    return {"frames": summary["frames"], "wall_s": summary["wall_s"],
            "stream_fps": [stream["fps"] for stream in summary["streams"]],
            "stages_ms": {name: figures["mean_ms"] for name, figures in summary["stages_ms"].items()},
            "batch_fill": summary["batch_fill"],
            "device_busy_ms": device_busy_ms(classifier) - busy if busy is not None else None}


def sequential_loop(classifier: Classifier, video: Path) -> dict[str, Any]:
    """What a user writes without the pipeline: read a frame, prepare, infer, decide + JSON, then the next; each
    stage timed (its mean service time per frame, nothing else competing)."""
    rule = classifier.postprocessor()
    capture = cv2.VideoCapture(str(video))
    totals = dict.fromkeys(STAGES, 0.0)
    frames, started = 0, time.perf_counter()
    try:
        while True:
            mark = time.perf_counter()
            ok, image = capture.read()
            if not ok:
                break
            marks = [mark, time.perf_counter()]
            tensor = classifier.prepare([image])
            marks.append(time.perf_counter())
            scores = classifier.infer(tensor)
            marks.append(time.perf_counter())
            json.dumps(rule(scores[0], {"source": str(video), "index": frames, "timestamp": 0.0}).to_dict())
            marks.append(time.perf_counter())
            for stage, begin, end in zip(STAGES, marks, marks[1:]):
                totals[stage] += (end - begin) * 1e3
            frames += 1
    finally:
        capture.release()
    wall = time.perf_counter() - started
    return {"frames": frames, "wall_s": wall, "fps": frames / wall,
            "stages_ms": {stage: total / max(frames, 1) for stage, total in totals.items()}}


def separate_processes(setting: Setting, videos: list[Path]) -> dict[str, Any]:
    """One single-stream process per video (this script with --worker), started together: each opens its
    classifier and warms up, says ready, and starts on a common signal; throughput over the common time."""
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", str(video), "--setting",
                                 json.dumps(asdict(setting))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True) for video in videos]
    for worker in workers:
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker did not start (exit {worker.wait()})")
    go = time.monotonic()
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = [json.loads(worker.communicate()[0]) for worker in workers]
    ended = max(report["ended"] for report in reports)
    busy = [report["device_busy_ms"] for report in reports]
    return {"frames": sum(report["frames"] for report in reports), "wall_s": ended - go,
            "stream_fps": [report["frames"] / (report["ended"] - go) for report in reports],
            "device_busy_ms": sum(busy) if None not in busy else None}


def one_after_another(classifier: Classifier, videos: list[Path]) -> dict[str, Any]:
    runs = [pipeline_run(classifier, [video], 1) for video in videos]
    return {"frames": sum(run["frames"] for run in runs), "wall_s": sum(run["wall_s"] for run in runs),
            "stream_fps": None, "device_busy_ms": None}


def worker(video: Path, setting: Setting) -> None:
    """A single-stream process of ``separate_processes``: warm up, say ready, wait for go, run, report JSON."""
    with open_classifier(setting) as classifier:
        classifier.infer(classifier.prepare([_first_frame(video)]))
        print("ready", flush=True)
        sys.stdin.readline()
        result = pipeline_run(classifier, [video], 1)
        print(json.dumps({"frames": result["frames"], "ended": time.monotonic(),
                          "device_busy_ms": result["device_busy_ms"]}), flush=True)


def _first_frame(video: Path) -> Any:
    capture = cv2.VideoCapture(str(video))
    try:
        return capture.read()[1]
    finally:
        capture.release()


# --- rounds and summaries ------------------------------------------------------------------------------------------
def one_round(setting: Setting, classifier: Classifier, videos: list[Path], stream_counts: list[int]) -> dict:
    single = {"pipeline": pipeline_run(classifier, videos[:1], 1), "loop": sequential_loop(classifier, videos[0])}
    multi = {}
    for count in stream_counts:
        chosen = videos[:count]
        multi[str(count)] = {"one_run": pipeline_run(classifier, chosen, count),
                             "processes": separate_processes(setting, chosen),
                             "sequential": one_after_another(classifier, chosen)}
    return {"single": single, "multi": multi}


def throughput(run: dict[str, Any]) -> float:
    return run["frames"] / run["wall_s"] if run["wall_s"] else 0.0


def fairness(stream_fps: list[float] | None) -> dict[str, float] | None:
    if not stream_fps:
        return None
    mean = sum(stream_fps) / len(stream_fps)
    return {"min_over_max": min(stream_fps) / max(stream_fps), "min_over_mean": min(stream_fps) / mean}


def median_of(rounds: list[dict], value: Callable[[dict], float | None]) -> dict[str, float] | None:
    values = [v for v in (value(entry) for entry in rounds) if v is not None]
    return spread(values) if values else None


def summarise(rounds: list[dict], stream_counts: list[int]) -> dict[str, Any]:
    def bound(entry: dict) -> float:
        return 1e3 / max(entry["single"]["loop"]["stages_ms"].values())

    single = {"pipeline_fps": median_of(rounds, lambda e: throughput(e["single"]["pipeline"])),
              "loop_fps": median_of(rounds, lambda e: e["single"]["loop"]["fps"]),
              "bound_fps": median_of(rounds, bound),
              "loop_stages_ms": {stage: median_of(rounds, lambda e, s=stage: e["single"]["loop"]["stages_ms"][s])
                                 ["median"] for stage in STAGES}}
    single["pipeline_over_bound"] = single["pipeline_fps"]["median"] / single["bound_fps"]["median"]
    single["pipeline_over_loop"] = single["pipeline_fps"]["median"] / single["loop_fps"]["median"]
    multi = {}
    for count in map(str, stream_counts):
        row: dict[str, Any] = {}
        for mode in MODES:
            runs = [entry["multi"][count][mode] for entry in rounds]
            row[mode] = {"fps": median_of(runs, throughput),
                         "min_over_max": median_of(runs, lambda r: (fairness(r["stream_fps"]) or {}).get(
                             "min_over_max")),
                         "min_over_mean": median_of(runs, lambda r: (fairness(r["stream_fps"]) or {}).get(
                             "min_over_mean")),
                         "device_busy": median_of(runs, lambda r: r["device_busy_ms"] / 1e3 / r["wall_s"]
                                                  if r["device_busy_ms"] is not None else None)}
        row["batch_fill"] = rounds[len(rounds) // 2]["multi"][count]["one_run"]["batch_fill"]
        row["one_run_over_processes"] = row["one_run"]["fps"]["median"] / row["processes"]["fps"]["median"]
        row["one_run_over_sequential"] = row["one_run"]["fps"]["median"] / row["sequential"]["fps"]["median"]
        multi[count] = row
    return {"single": single, "multi": multi}


def feed_scale(classifier: Classifier, video: Path, timing: DeviceTiming) -> float:
    """The factor that makes the device's batch-1 time equal to the feed's time per frame (decode, prepare,
    postprocess) measured here by the sequential loop."""
    stages = sequential_loop(classifier, video)["stages_ms"]
    return (stages["decode"] + stages["preprocess"] + stages["postprocess"]) / timing.batch_ms(1)


def accelerator_settings(scales: list[str], work: Path, video: Path) -> list[Setting]:
    lock = str(work / "modelled-device.lock")
    published = Setting("accelerator", "accelerator", ORIN_RESNET50.fixed_ms, ORIN_RESNET50.per_image_ms, 1.0, lock)
    settings = []
    for scale in scales:
        if scale == "feed":
            with open_classifier(published) as classifier:
                factor = feed_scale(classifier, video, ORIN_RESNET50)
        else:
            factor = float(scale)
        timing = ORIN_RESNET50.scaled(factor)
        settings.append(replace(published, name=f"accelerator x{factor:.1f}" + (" (feed)" if scale == "feed" else ""),
                                fixed_ms=timing.fixed_ms, per_image_ms=timing.per_image_ms, scale=factor))
    return settings


def measure(settings: list[Setting], videos: list[Path], stream_counts: list[int], rounds: int) -> list[dict]:
    """Every setting's report; each round runs every setting in turn, so a load that comes and goes on the machine
    falls on all of them alike."""
    with contextlib.ExitStack() as stack:
        classifiers = [stack.enter_context(open_classifier(setting)) for setting in settings]
        for classifier in classifiers:
            pipeline_run(classifier, videos[:1], 1)  # warm-up: file cache, sessions, threads
        measured: list[list[dict]] = [[] for _ in settings]
        for number in range(1, rounds + 1):
            for setting, classifier, rounds_so_far in zip(settings, classifiers, measured):
                print(f"round {number}/{rounds}: {setting.name}", flush=True)
                rounds_so_far.append(one_round(setting, classifier, videos, stream_counts))
        return [report(setting, classifier, entries, stream_counts)
                for setting, classifier, entries in zip(settings, classifiers, measured)]


def report(setting: Setting, classifier: Classifier, rounds: list[dict], stream_counts: list[int]) -> dict[str, Any]:
    budget = classifier.backend.thread_budget
    return {"setting": asdict(setting), "backend": classifier.info.as_dict(),
            "threads": budget.as_dict() if budget is not None else None, **summarise(rounds, stream_counts),
            "rounds": rounds}


# --- the report ------------------------------------------------------------------------------------------------------
def rate(figures: dict[str, float] | None, digits: int = 0) -> str:
    if figures is None:
        return "-"
    return f"{figures['median']:.{digits}f} ±{figures['relative_spread'] * 50:.0f} %"


def ratio(figures: dict[str, float] | None) -> str:
    return "-" if figures is None else f"{figures['median']:.2f} ({figures['min']:.2f}-{figures['max']:.2f})"


def markdown(result: dict) -> str:
    settings = result["settings"]
    lines = [f"# Multi-stream benchmark ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command'].strip()}`; {settings['rounds']} interleaved rounds, {settings['frames']} "
             f"frames per stream (generated 640x480 MP4, one file per stream); {result['minutes']:.1f} min in all. "
             f"Load average before the run: {result['load_before']}; after: {result['load_after']}.", "",
             f"Modelled accelerator: a + b·c ms per batch of b, no CPU, one device shared by all processes (flock). "
             f"a = {ORIN_RESNET50.fixed_ms:.3f} ms, c = {ORIN_RESNET50.per_image_ms:.3f} ms derived from two batch "
             f"sizes of {MLPERF_SOURCE}: c = (2.170 - 0.630) / 7, a = 0.630 - c. 'x k' multiplies both by k (c/a "
             f"kept); 'feed' picks k so that a + c equals the feed time per frame measured here. Feed for it: "
             f"{ACCELERATOR_IMG_SIZE} px. ONNX Runtime: baseline {CPU_BACKBONE} at {CPU_IMG_SIZE} px, fp32, random "
             "weights, the runtime's thread policy.", "",
             "## One stream", "",
             "Bound = 1 / max(stage), the stages' service times from the sequential loop (each alone).", "",
             "| backend | pipeline fps | sequential loop fps | bound fps | pipeline / bound | pipeline / loop | "
             "decode / prepare / infer / post ms |", "|---|---|---|---|---|---|---|"]
    for report in result["reports"]:
        single = report["single"]
        stages = " / ".join(f"{single['loop_stages_ms'][stage]:.2f}" for stage in STAGES)
        lines.append(f"| {report['setting']['name']} ({report['backend']['version']}) | "
                     f"{rate(single['pipeline_fps'])} | {rate(single['loop_fps'])} | {rate(single['bound_fps'])} | "
                     f"{single['pipeline_over_bound']:.2f} | {single['pipeline_over_loop']:.2f} | {stages} |")
    lines += ["", "## Several streams", "",
              "Total frames/s of all streams; fairness: per-stream fps (frames to its last one over the time from "
              "the common start), min/max and min/mean (medians over the rounds, range in brackets). Device busy: "
              "the share of the wall time the modelled device was executing.", "",
              "| backend | streams | one run fps | N processes fps | one after another fps | one run / processes | "
              "one run / sequential | one run min/max, min/mean | processes min/max, min/mean | device busy one run "
              "/ processes | batch fill (one run, median round) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for report in result["reports"]:
        for count, row in report["multi"].items():
            one, processes = row["one_run"], row["processes"]
            busy = " / ".join("-" if entry["device_busy"] is None else f"{entry['device_busy']['median']:.2f}"
                              for entry in (one, processes))
            fill = ", ".join(f"{size}: {times}" for size, times in row["batch_fill"].items())
            lines.append(f"| {report['setting']['name']} | {count} | {rate(one['fps'])} | {rate(processes['fps'])} | "
                         f"{rate(row['sequential']['fps'])} | {row['one_run_over_processes']:.2f} | "
                         f"{row['one_run_over_sequential']:.2f} | {ratio(one['min_over_max'])}, "
                         f"{ratio(one['min_over_mean'])} | {ratio(processes['min_over_max'])}, "
                         f"{ratio(processes['min_over_mean'])} | {busy} | {fill} |")
    lines += notes_section(result.get("notes", []), "Reading")
    return "\n".join(lines) + "\n"


def read_notes(path: Path | None) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path else []


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-multistream"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="frames per stream")
    parser.add_argument("--streams", default="4,8", help="comma-separated stream counts")
    parser.add_argument("--scales", default="1,feed", help="accelerator settings: factors on a and c, or feed")
    parser.add_argument("--no-cpu", action="store_true", help="leave out the ONNX Runtime CPU backend")
    parser.add_argument("--notes", type=Path, help="a text file, one reading per line, added to the report")
    parser.add_argument("--render", type=Path, help="only rewrite the report from this results JSON (with --notes)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Setting(**json.loads(args.setting)))
    if args.render:
        rendered = {**json.loads(args.render.read_text()), "notes": read_notes(args.notes)}
        return write_results(args.out, "multistream", rendered, markdown)

    started, load_before = time.monotonic(), load_average()
    stream_counts = [int(part) for part in args.streams.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlic-edge-multistream-") as folder:
        videos = [make_video(Path(folder) / f"stream{index}.mp4", args.frames) for index in range(max(stream_counts))]
        settings = accelerator_settings(args.scales.split(","), args.work, videos[0])
        if not args.no_cpu:
            run = make_run(args.work, CPU_BACKBONE, CPU_IMG_SIZE)
            settings.append(Setting("onnxruntime cpu", "onnxruntime", run=str(run.path)))
        reports = measure(settings, videos, stream_counts, args.rounds)
    notes = read_notes(args.notes)
    result = {**results_header("multistream.py"), "versions": installed_versions(),
              "settings": {key: str(value) for key, value in vars(args).items()}, "reports": reports,
              "load_before": load_before, "load_after": load_average(), "notes": notes,
              "minutes": (time.monotonic() - started) / 60}
    write_results(args.out, "multistream", result, markdown)


if __name__ == "__main__":
    main()
