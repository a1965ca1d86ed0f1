"""Mutation check of the TensorRT and CUDA test doubles: does a real-API break fail a test? (issue 28)

    python benchmarks/mutations.py --out benchmarks/results          # writes mutations.json and mutations.md

Each mutation is one deliberate break of how the code uses NVIDIA's real Python APIs (an int for an enum, a dropped
network flag, swapped event arguments, a missing destroy, a call without an argument the real binding requires…).
The committed tree (``--commit``, default HEAD) is
extracted into a temporary folder, its sources laid out as they install (an import root) with the break applied, and
the tests that guard that code run from that folder against the copy (``python -P``, the copy first on
``PYTHONPATH``, so the checkout's editable install is not what they import; work in progress in the checkout is not
measured). A break is *killed* when a test fails, *survived* when every test passes. Breaks no fake
can see (a swap of two arguments of the same type and meaning to the binding) are listed as such and not counted.
Not a test: the table is the result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {"runtime": "runtime", "train": "train", "export": "export", "calibration": "calibration"}
"""Top-level folders that install as ``mlic_edge.<name>`` (pyproject.toml's package-dir)."""


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    invisible: bool = False  # a break no fake can see (the real binding accepts it too): listed, not counted


# fastest first (each run stops at the first failure); test_tensorrt_build.py makes real TensorRT for RTX builds
TRT_TESTS = ("tests/test_tensorrt_api_surface.py", "tests/test_tensorrt_backend.py", "tests/test_tensorrt_build.py")
ENGINE_RUN_TESTS = ("tests/test_tensorrt_backend.py", *[test for test in TRT_TESTS if "backend" not in test])
"""For breaks that show when an engine is deserialized or run, the backend's tests first."""
CUDA_TESTS = ("tests/test_tensorrt_backend.py", "tests/test_cuda_fakes.py", "tests/test_cuda_bindings.py")
GPU_TESTS = ("tests/test_cuda_bindings.py", "tests/test_doctor.py")

MUTATIONS: tuple[Mutation, ...] = (
    # --- the engine builder (runtime/engines/builder.py) -------------------------------------------------------
    Mutation("config.default_device_type = 1 (an int for trt.DeviceType.DLA)", "runtime/engines/builder.py",
             "config.default_device_type = module.DeviceType.DLA", "config.default_device_type = 1", TRT_TESTS),
    Mutation("config.DLA_core = float(core)", "runtime/engines/builder.py", "config.DLA_core = options.dla_core",
             "config.DLA_core = float(options.dla_core)", TRT_TESTS),
    Mutation("hardware_compatibility_level = an int", "runtime/engines/builder.py",
             "getattr(module.HardwareCompatibilityLevel, plan.hardware_compatibility)",
             "int(getattr(module.HardwareCompatibilityLevel, plan.hardware_compatibility))", TRT_TESTS),
    Mutation("create_network without EXPLICIT_BATCH (TensorRT 8.6's parser needs it)", "runtime/engines/builder.py",
             '        network_flags.append("EXPLICIT_BATCH")\n', "        pass\n", TRT_TESTS),
    Mutation("create_network without STRONGLY_TYPED (10.x would silently be weakly typed)",
             "runtime/engines/builder.py", 'network_flags = ["STRONGLY_TYPED"] if strongly_typed and caps.strongly_typed else []',
             "network_flags = []", TRT_TESTS),
    Mutation("the workspace limit in KiB instead of bytes (an int either way)", "runtime/engines/builder.py",
             "options.workspace_mb << 20)", "options.workspace_mb << 10)", TRT_TESTS),
    Mutation("the optimization profile's min/opt/max given in reverse order", "runtime/engines/builder.py",
             "profile.set_shape(tensor[\"name\"], *[(size, *shape[1:]) for size in batch])",
             "profile.set_shape(tensor[\"name\"], *[(size, *shape[1:]) for size in reversed(batch)])", TRT_TESTS),
    Mutation("the flag's value instead of 1 << value", "runtime/engines/builder.py",
             "flags |= 1 << int(getattr(module.NetworkDefinitionCreationFlag, name))",
             "flags |= int(getattr(module.NetworkDefinitionCreationFlag, name))", TRT_TESTS),
    Mutation("create_network() with no flags at all", "runtime/engines/builder.py",
             "self.network = self.builder.create_network(flags)", "self.network = self.builder.create_network()",
             TRT_TESTS),
    Mutation("the logger compares a Severity with an int's order (no int())", "runtime/engines/builder.py",
             "if int(level) <= int(severity.ERROR):", "if level <= severity.ERROR:", ENGINE_RUN_TESTS),
    # --- the TensorRT backend (runtime/inference/backends/tensorrt_backend.py) -----------------------------------
    Mutation("get_tensor_mode(name) == 1 (an enum compared with an int)", "runtime/inference/backends/tensorrt_backend.py",
             "engine.get_tensor_mode(name) == trt_module.TensorIOMode.INPUT", "engine.get_tensor_mode(name) == 1",
             ENGINE_RUN_TESTS),
    Mutation("runtime.DLA_core = float(core)", "runtime/inference/backends/tensorrt_backend.py",
             "runtime.DLA_core = self._dla_core", "runtime.DLA_core = float(self._dla_core)", ENGINE_RUN_TESTS),
    Mutation("nptype(int(dtype)) (an int for trt.DataType)", "runtime/inference/backends/tensorrt_backend.py",
             "trt_module.nptype(dtype)", "trt_module.nptype(int(dtype))", ENGINE_RUN_TESTS),
    # --- the CUDA layer (runtime/inference/cuda.py) ------------------------------------------------------------
    Mutation("cudaEventElapsedTime(end, start): arguments swapped", "runtime/inference/cuda.py",
             'self.rt.cudaEventElapsedTime, start, end)', 'self.rt.cudaEventElapsedTime, end, start)', CUDA_TESTS),
    Mutation("pycuda end.time_since(start) swapped", "runtime/inference/cuda.py",
             '"cuEventElapsedTime", end.time_since, start)', '"cuEventElapsedTime", start.time_since, end)',
             CUDA_TESTS),
    Mutation("no cudaStreamDestroy on close", "runtime/inference/cuda.py",
             '        self._call("cudaStreamDestroy", self.rt.cudaStreamDestroy, stream)\n', '        pass\n',
             CUDA_TESTS),
    Mutation("no cudaEventDestroy on close", "runtime/inference/cuda.py",
             '        self._call("cudaEventDestroy", self.rt.cudaEventDestroy, event)\n', '        pass\n', CUDA_TESTS),
    Mutation("no cudaFreeHost on close", "runtime/inference/cuda.py",
             '        self._call("cudaFreeHost", self.rt.cudaFreeHost, ptr)\n', '        pass\n', CUDA_TESTS),
    Mutation("no cudaFree on close", "runtime/inference/cuda.py",
             '        self._call("cudaFree", self.rt.cudaFree, ptr)\n', '        pass\n', CUDA_TESTS),
    Mutation("no cudaGraphDestroy on close", "runtime/inference/cuda.py",
             '        self._call("cudaGraphDestroy", self.rt.cudaGraphDestroy, graph)\n', '        pass\n', CUDA_TESTS),
    Mutation("the default stream (0) instead of the backend's stream for host-to-device copies",
             "runtime/inference/cuda.py", "self._driver.copy_htod(dst.ptr, src, nbytes, stream.handle)",
             "self._driver.copy_htod(dst.ptr, src, nbytes, 0)", CUDA_TESTS),
    Mutation("a non-positive event time reported instead of refused", "runtime/inference/cuda.py",
             "        if not elapsed > 0:", "        if False:", CUDA_TESTS),
    Mutation("the stream's int value instead of its handle in Cuda.record (cuda-python accepts it, pycuda does not)",
             "runtime/inference/cuda.py", "self._driver.event_record(event.handle, stream.handle)",
             "self._driver.event_record(event.handle, stream.ptr)", CUDA_TESTS),
    Mutation("host-to-device copy with destination and source swapped (two ints to the binding)",
             "runtime/inference/cuda.py", 'self.rt.cudaMemcpyAsync, dst_ptr, src.ptr, nbytes,',
             'self.rt.cudaMemcpyAsync, src.ptr, dst_ptr, nbytes,', CUDA_TESTS),
    Mutation("a blocking stream (cudaStreamDefault) instead of a non-blocking one (the same type)",
             "runtime/inference/cuda.py", "self.rt.cudaStreamNonBlocking)", "self.rt.cudaStreamDefault)", CUDA_TESTS),
    # --- GPU detection (runtime/engines/gpu.py) ------------------------------------------------------------------
    Mutation("cuDeviceGetName(device) without its length", "runtime/engines/gpu.py",
             "call(driver.cuDeviceGetName, 256, device)", "call(driver.cuDeviceGetName, device)", GPU_TESTS),
    Mutation("the probe's except catches every error (a TypeError hidden)", "runtime/engines/gpu.py",
             "    except RuntimeError:  # no libcuda", "    except Exception:  # no libcuda", GPU_TESTS),
)


def extract(commit: str, work: Path) -> Path:
    """The files of ``commit`` under ``work/tree`` (``git archive``)."""
    tree = work / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def import_root(tree: Path, work: Path) -> Path:
    """``tree``'s sources as they install (``mlic_edge`` with the stage folders inside), copied under ``work``."""
    root = work / "root"
    shutil.copytree(tree / "mlic_edge", root / "mlic_edge")
    for folder, name in STAGES.items():
        shutil.copytree(tree / folder, root / "mlic_edge" / name)
    return root


def installed_path(file: str) -> str:
    """runtime/inference/cuda.py -> mlic_edge/runtime/inference/cuda.py (its place in the import root)."""
    first = file.split("/", 1)[0]
    return f"mlic_edge/{file}" if first in STAGES else file


def run_tests(tree: Path, root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str, float]:
    """('killed' | 'survived' | 'timeout', the failing tests or the last line, seconds) for the tests on ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-P", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
               *[str(tree / test) for test in tests]]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {timeout:.0f} s", time.monotonic() - started
    seconds = time.monotonic() - started
    failed = [line.split(" ")[1] for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode == 0:
        return "survived", last, seconds
    return "killed", ", ".join(failed[:3]) or last, seconds


def check_import_root(tree: Path, root: Path) -> None:
    """Refuse to measure when the tests would import the checkout instead of the copy."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    where = subprocess.run([sys.executable, "-P", "-c", "import mlic_edge.runtime.inference.cuda as m; print(m.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(root)):
        raise SystemExit(f"the tests would import {where}, not the mutated copy under {root}")


def apply(root: Path, mutation: Mutation) -> Path:
    path = root / installed_path(mutation.file)
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: {mutation.file} holds the original text {text.count(mutation.old)} times "
                         "(expected once): update the mutation to the current source")
    path.write_text(text.replace(mutation.old, mutation.new))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--commit", default="HEAD", help="the committed tree to measure")
    parser.add_argument("--only", help="run the mutations whose name contains this")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for one mutation's tests")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlic-edge-mutations-") as work:
        tree = extract(args.commit, Path(work))
        if (REPO / ".cuda-bindings").is_dir():  # the real cuda-python of each major (not in git: .ci/run installs it)
            (tree / ".cuda-bindings").symlink_to(REPO / ".cuda-bindings")
        root = import_root(tree, Path(work))
        check_import_root(tree, root)
        baseline = run_tests(tree, root, tuple(sorted({test for m in chosen for test in m.tests})), args.timeout * 2)
        if baseline[0] != "survived":
            raise SystemExit(f"the tests fail without any mutation: {baseline[1]}")
        for mutation in chosen:
            path = apply(root, mutation)
            original = (tree / mutation.file).read_text()
            try:
                outcome, detail, seconds = run_tests(tree, root, mutation.tests, args.timeout)
            finally:
                path.write_text(original)
            rows.append({**asdict(mutation), "outcome": outcome, "detail": detail, "seconds": round(seconds, 1)})
            print(f"{outcome:9s} {seconds:5.1f} s  {mutation.name}: {detail}", flush=True)
    from common import results_header, write_results

    counted = [row for row in rows if not row["invisible"]]
    result = {**results_header("mutations.py"), "mutations": rows, "minutes": (time.monotonic() - started) / 60,
              "killed": sum(row["outcome"] == "killed" for row in counted), "counted": len(counted)}
    write_results(args.out, "mutations", result, markdown)
    if result["killed"] != result["counted"]:
        raise SystemExit(1)


def markdown(result: dict) -> str:
    lines = [f"# Mutation check of the TensorRT and CUDA doubles ({result['date']}, {result['machine']})", "",
             f"Command: `{result['command'].strip()}`; {result['minutes']:.1f} min. Each row is one break of how the "
             "code uses NVIDIA's real API, applied to a copy of the source; the tests listed ran on that copy. "
             f"**{result['killed']} of {result['counted']} breaks fail a test.** Rows marked *invisible* are breaks "
             "the real binding accepts too (not counted).", "",
             "| break | file | outcome | first failing tests | s |", "|---|---|---|---|---|"]
    for row in result["mutations"]:
        outcome = f"{row['outcome']} (invisible)" if row["invisible"] else row["outcome"]
        detail = row["detail"].replace("|", "\\|") if row["outcome"] == "killed" else ""
        lines.append(f"| {row['name']} | `{row['file']}` | {outcome} | {detail} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
