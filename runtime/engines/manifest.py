"""Engine folders and sidecar manifests: where an engine lives, what it was built from and for, whether it fits here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from mlic_edge.errors import BuildError
from mlic_edge.io import read_json, sha256_file, write_json
from mlic_edge.rundir import ENGINES_DIR, RunDir
from mlic_edge.runtime.engines.gpu import GpuInfo
from mlic_edge.runtime.engines.api import TensorRT

MANIFEST_FORMAT = 1
TIMING_CACHE_NAME = "timing.cache"
_BACKEND_TAGS = {"tensorrt": "trt", "tensorrt-rtx": "rtx"}
_BACKEND_TITLES = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT for RTX"}


def engine_target_name(trt: TensorRT, gpu: GpuInfo | None, compute_capabilities: Sequence[str] = ()) -> str:
    """The ``engines/<target>`` folder name: GPU (or ahead-of-time targets) plus backend and version.

    ``nvidia-h100-80gb-hbm3-trt10.3.0`` for an engine built on and for that GPU; ``aot-sm86-sm89-rtx1.7.1`` for a
    TensorRT for RTX build for named compute capabilities; ``aot-all-rtx1.7.1`` for one built on a machine without a
    GPU for every compute capability the builder supports.
    """
    suffix = f"{_BACKEND_TAGS[trt.backend]}{'.'.join(trt.version.split('.')[:3])}"
    if compute_capabilities:
        return "aot-" + "-".join(f"sm{cc.replace('.', '')}" for cc in compute_capabilities) + f"-{suffix}"
    if gpu is not None:
        return f"{slug(gpu.name)}-{suffix}"
    if trt.caps.compute_capability_targets:
        return f"aot-all-{suffix}"
    raise BuildError(f"no NVIDIA GPU found to build a {_BACKEND_TITLES[trt.backend]} engine for",
                     hint="build on the device that will run the engine; if it has a GPU, make nvidia-smi work "
                          "or pip install cuda-python so it can be identified")


def engine_paths(run_path: Path, target: str, precision: str) -> tuple[Path, Path]:
    """(engine, manifest): ``engines/<target>/model.<precision>.engine`` and ``.json`` beside it."""
    folder = Path(run_path) / ENGINES_DIR / target
    return folder / f"model.{precision}.engine", folder / f"model.{precision}.json"


def timing_cache_path(engine_folder: Path) -> Path:
    return engine_folder / TIMING_CACHE_NAME


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = read_json(path)
    except FileNotFoundError as error:
        raise BuildError(f"engine manifest {path} is missing", hint="build the engine: mlic-edge build") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BuildError(f"engine manifest {path} is not valid JSON",
                         hint="delete it and build the engine again") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BuildError(f"engine manifest {path} is not a format-{MANIFEST_FORMAT} mlic-edge manifest",
                         hint="build the engine again with this mlic-edge")
    return manifest


def find_engines(run_path: Path, precision: str | None = None) -> list[Path]:
    """Every engine manifest under ``<run>/engines/`` (of ``precision`` if given), sorted."""
    return RunDir(Path(run_path)).engine_manifests(precision)


def check_manifest(manifest: dict[str, Any], *, trt: TensorRT, gpu: GpuInfo | None, onnx_path: Path,
                   rebuild_command: str, engine_path: Path | None = None) -> None:
    """Refuse, in one line with the rebuild command, an engine that was not built for this TensorRT, GPU and ONNX."""
    engine_name = manifest.get("engine", "the engine")

    def refuse(why: str, hint: str | None = None) -> None:
        raise BuildError(f"{engine_name} {why}", hint=hint or f"rebuild: {rebuild_command}")

    if engine_path is not None:
        if not Path(engine_path).is_file():
            refuse(f"is missing from {Path(engine_path).parent}")
        if manifest.get("engine_sha256") and sha256_file(engine_path) != manifest["engine_sha256"]:
            refuse("does not match its manifest (the engine file was replaced or damaged)")
    built_backend = manifest.get("backend")
    if built_backend != trt.backend:
        refuse(f"was built with {_BACKEND_TITLES.get(built_backend, built_backend)}, "
               f"not {_BACKEND_TITLES[trt.backend]}")
    built_version = str(manifest.get("tensorrt_version"))
    if not _version_accepted(built_version, trt.version, bool(manifest.get("version_compatible"))):
        refuse(f"was built with {_BACKEND_TITLES[trt.backend]} {built_version}; this is {trt.version}")
    _check_gpu(manifest, gpu, refuse)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        refuse(f"was built from {onnx_path}, which is missing")
    if sha256_file(onnx_path) != manifest.get("onnx", {}).get("sha256"):
        refuse(f"was built from another version of {onnx_path.name} (the ONNX changed since)")


def slug(text: str) -> str:
    """Lower-case letters, digits and dots; runs of anything else become one dash."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def _check_gpu(manifest: dict[str, Any], gpu: GpuInfo | None, refuse) -> None:
    targets = manifest.get("compute_capabilities")
    built_gpu = manifest.get("gpu")
    if gpu is None:
        refuse("needs an NVIDIA GPU and none was found here",
               hint="run it on a machine with a supported GPU, or use --backend onnxruntime")
    here = f"this GPU ({gpu.name}) has compute capability {gpu.compute_capability}"
    if targets:
        if gpu.compute_capability not in targets:
            refuse(f"was built for compute capability {', '.join(targets)}; {here}")
        return
    if built_gpu is None:  # TensorRT for RTX, every compute capability its builder knows: its runtime checks
        return
    built_cc = str(built_gpu.get("compute_capability"))
    level = manifest.get("hardware_compatibility")
    if level == "ampere+":
        if _version_tuple(gpu.compute_capability) < (8, 0):
            refuse(f"was built for Ampere or newer GPUs; {here}")
    elif level == "same-compute-capability":
        if gpu.compute_capability != built_cc:
            refuse(f"was built for compute capability {built_cc}; {here}")
    elif gpu.name != built_gpu.get("name") or gpu.compute_capability != built_cc:
        refuse(f"was built for {built_gpu.get('name')} (compute capability {built_cc}); {here}")


def _version_accepted(built: str, running: str, version_compatible: bool) -> bool:
    if built == running:
        return True
    # A version-compatible plan runs on the same or a later TensorRT of the same major version (8.6 → 8.x, 10.x).
    built_tuple, running_tuple = _version_tuple(built), _version_tuple(running)
    return version_compatible and built_tuple[:1] == running_tuple[:1] and running_tuple >= built_tuple


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))
