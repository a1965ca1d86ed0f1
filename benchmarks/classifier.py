"""Classifier benchmark: what ``mlic_edge.load()``'s classifier costs over the bare backend session, what a held
classifier saves over reopening, and ``mlic-edge run`` over a video before and after the classifier (issue 27).

    python benchmarks/classifier.py --before /tmp/before-venv/bin/mlic-edge --out benchmarks/results

1. **Call overhead.** Baseline resnet18 at 224 px (random weights, pretrained=False) on ONNX Runtime's CPU provider,
   batch 1 and 8 of 640x480 BGR frames. ``bare``: what a user writes without the classifier on the same backend
   session (the runtime's ``spec_input`` per frame, ``np.stack``, ``backend.infer``); ``classifier``:
   ``clf.predict(frames)`` (the same, plus input checks, the batch-range split, labels and timing per result).
   Interleaved rounds (bare and classifier in turn, the order alternating), median images/s and the ratio.
2. **Held vs reopened.** ``mlic_edge.load()`` then two calls on one frame, against ``Run.predict`` on a one-image
   folder twice (it opens the backend and the source for each pass, as before the classifier).
3. **run over a video, before and after.** ``mlic-edge run VIDEO --out …`` of the installed tree (``--after``,
   default: this environment's) and of another install (``--before``: the wheel of the commit before the
   classifier) in turns, as whole processes: wall time and the pipeline's own frames/s from ``--stats-json``.

Not a test: nothing is asserted. The machine is named in the results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from common import make_run, results_header, write_results
from mlic_edge.data.images import spec_input
from mlic_edge.rundir import installed_versions
from mlic_edge.runtime.checks.bench import make_video, spread
from mlic_edge.runtime.inference.backends import create_backend
from mlic_edge.runtime.inference.classifier import Classifier
from mlic_edge.spec import ModelSpec


def call_overhead(run, batches: list[int], rounds: int, calls: int) -> list[dict]:
    spec = ModelSpec.from_run(run.spec())
    rng = np.random.default_rng(0)
    rows = []
    with create_backend("onnxruntime", run, "fp32", "cpu") as backend:
        classifier = Classifier(backend, spec)  # the same session: only what the classifier adds is compared

        def bare(frames: list[np.ndarray]) -> None:
            backend.infer(np.stack([spec_input(frame, spec) for frame in frames]))

        def held(frames: list[np.ndarray]) -> None:
            classifier.predict(frames)

        for batch in batches:
            frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(batch)]
            for _ in range(3):
                bare(frames)
                held(frames)
            measured: dict[str, list[float]] = {"bare": [], "classifier": []}
            for number in range(rounds):
                order = (("bare", bare), ("classifier", held))
                for name, call in order if number % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    for _ in range(calls):
                        call(frames)
                    measured[name].append(batch * calls / (time.perf_counter() - started))
            row = {"batch": batch, "calls_per_round": calls, "rounds": rounds,
                   **{name: spread(values) for name, values in measured.items()}, "every_round": measured}
            row["ratio"] = row["classifier"]["median"] / row["bare"]["median"]
            rows.append(row)
            print(f"batch {batch}: bare {row['bare']['median']:.1f} img/s, classifier "
                  f"{row['classifier']['median']:.1f} img/s, ratio {row['ratio']:.3f}", flush=True)
    return rows


def held_vs_reopened(run, rounds: int) -> dict:
    import mlic_edge

    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    loads, firsts, seconds, reopened = [], [], [], []
    with tempfile.TemporaryDirectory() as work:
        import cv2

        cv2.imwrite(str(Path(work) / "frame.png"), frame)
        for _ in range(rounds):
            started = time.perf_counter()
            with mlic_edge.load(run.path, backend="onnxruntime", device="cpu") as clf:
                loaded = time.perf_counter()
                clf(frame)
                first = time.perf_counter()
                clf(frame)
                second = time.perf_counter()
            loads.append((loaded - started) * 1e3)
            firsts.append((first - loaded) * 1e3)
            seconds.append((second - first) * 1e3)
            for _ in range(2):
                started = time.perf_counter()
                list(mlic_edge.Run(run.path).predict(work, backend="onnxruntime", device="cpu"))
                reopened.append((time.perf_counter() - started) * 1e3)
    result = {"load_ms": spread(loads), "first_call_ms": spread(firsts), "second_call_ms": spread(seconds),
              "run_predict_per_image_ms": spread(reopened), "rounds": rounds}
    print(f"load {result['load_ms']['median']:.0f} ms, first call {result['first_call_ms']['median']:.1f} ms, "
          f"second {result['second_call_ms']['median']:.1f} ms; Run.predict per image "
          f"{result['run_predict_per_image_ms']['median']:.0f} ms", flush=True)
    return result


def run_before_after(run, executables: dict[str, str], rounds: int, frames: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        video = make_video(Path(work) / "clip.mp4", frames)
        walls: dict[str, list[float]] = {name: [] for name in executables}
        fps: dict[str, list[float]] = {name: [] for name in executables}
        for number in range(rounds):
            names = list(executables) if number % 2 == 0 else list(executables)[::-1]
            for name in names:
                out, stats = Path(work) / f"{name}.jsonl", Path(work) / f"{name}.stats.json"
                command = [executables[name], "run", str(video), "--run", str(run.path), "--backend", "onnxruntime",
                           "--device", "cpu", "--out", str(out), "--stats-json", str(stats)]
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, text=True)
                walls[name].append(time.perf_counter() - started)
                fps[name].append(json.loads(stats.read_text())["fps"])
                records = out.read_text().splitlines()
                assert len(records) == frames, f"{name} wrote {len(records)} records for {frames} frames"
    result = {"frames": frames, "rounds": rounds, "executables": executables,
              "wall_s": {name: spread(values) for name, values in walls.items()},
              "pipeline_fps": {name: spread(values) for name, values in fps.items()}, "every_round": {
                  "wall_s": walls, "pipeline_fps": fps}}
    print("run over a video: " + "; ".join(f"{name} {result['pipeline_fps'][name]['median']:.1f} fps, "
                                           f"{result['wall_s'][name]['median']:.2f} s" for name in executables),
          flush=True)
    return result


def markdown(result: dict) -> str:
    def pm(entry: dict, digits: int = 1) -> str:
        return f"{entry['median']:.{digits}f} ±{entry['relative_spread'] * 50:.0f} %"

    lines = [f"# Classifier benchmark ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command'].strip()}`. Baseline resnet18, 224 px, random weights, ONNX Runtime "
             f"{result['versions'].get('onnxruntime')} CPUExecutionProvider, fp32, the runtime's thread policy. "
             "Figures are medians over interleaved rounds, ± half the range of the rounds.", "",
             "## Call overhead: `clf.predict(frames)` vs the bare session on the same 640x480 frames", "",
             "| batch | bare img/s (spec_input + infer) | classifier img/s | classifier / bare |", "|---|---|---|---|"]
    for row in result["call_overhead"]:
        lines.append(f"| {row['batch']} | {pm(row['bare'])} | {pm(row['classifier'])} | {row['ratio']:.3f} |")
    held = result["held_vs_reopened"]
    lines += ["", "## A held classifier vs reopening", "",
              f"`mlic_edge.load()` {pm(held['load_ms'], 0)} ms; then first call {pm(held['first_call_ms'])} ms, "
              f"second call {pm(held['second_call_ms'])} ms (one 640x480 frame). `Run.predict` on a one-image "
              f"folder, which opens the backend and the source each pass: {pm(held['run_predict_per_image_ms'], 0)} "
              f"ms per image ({held['rounds']} rounds)."]
    if "run_before_after" in result:
        video = result["run_before_after"]
        lines += ["", f"## `mlic-edge run` over a {video['frames']}-frame 640x480 video, before and after", "",
                  "| install | pipeline frames/s | process wall s |", "|---|---|---|"]
        for name in video["executables"]:
            lines.append(f"| {name} | {pm(video['pipeline_fps'][name])} | {pm(video['wall_s'][name], 2)} |")
        names = list(video["executables"])
        if len(names) == 2:
            ratio = video["pipeline_fps"][names[1]]["median"] / video["pipeline_fps"][names[0]]["median"]
            lines += ["", f"{names[1]} / {names[0]} pipeline frames/s: {ratio:.3f} ({video['rounds']} rounds, in "
                          "turns, the order alternating)."]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-classifier"))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=10, help="calls per round and measurement")
    parser.add_argument("--before", help="the mlic-edge executable of the install to compare `run` against")
    parser.add_argument("--after", default=shutil.which("mlic-edge"))
    parser.add_argument("--video-frames", type=int, default=150)
    parser.add_argument("--video-rounds", type=int, default=5)
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    run = make_run(args.work, "resnet18", 224)
    result = {**results_header("classifier.py"), "versions": installed_versions(),
              "call_overhead": call_overhead(run, [int(b) for b in args.batches.split(",")], args.rounds, args.calls),
              "held_vs_reopened": held_vs_reopened(run, max(3, args.rounds // 3)), "notes": args.note}
    if args.before:
        result["run_before_after"] = run_before_after(run, {"before": args.before, "after": args.after},
                                                      args.video_rounds, args.video_frames)
    write_results(args.out, "classifier", result, markdown)


if __name__ == "__main__":
    main()
