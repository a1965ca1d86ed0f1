"""`mlic-edge doctor`: what this machine can run — platform, Jetson/L4T, CUDA, GPU, every backend of the registry
(TensorRT, ONNX Runtime, ...), DLA, cameras, disk — each check ok / warn / fail with a concrete fix.

System facts are read from files under a ``SystemRoot`` ("/" normally, a fake tree in tests); the Python packages
(TensorRT, ONNX Runtime, OpenCV, CUDA bindings) are the ones of this interpreter, imported lazily inside checks.
The live probes (nvidia-smi, CUDA bindings, opening cameras) run only when the root is the real "/".
A check that cannot run becomes a warn with the reason; ``run_checks`` never raises.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Literal

from mlic_edge.errors import BackendError
from mlic_edge.runtime.engines.gpu import (GpuInfo, cuda_python_mismatch, cuda_python_requirement, detect_gpu,
                                   driver_cuda_version, jetson_gpu_from_model)
from mlic_edge.runtime.engines.api import TensorRT, available_tensorrt_backends, load_tensorrt
from mlic_edge.runtime.inference.backends.registry import BackendEntry, list_backends

Status = Literal["ok", "warn", "fail"]
STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}
MIN_PYTHON = (3, 10)  # pyproject's requires-python
LOW_DISK_BYTES = 2_000_000_000
# L4T release → (JetPack, TensorRT major.minor it ships), from NVIDIA's JetPack release notes.
JETPACK_RELEASES = {
    "35.1.0": ("5.0.2", "8.4"), "35.2.1": ("5.1", "8.5"), "35.3.1": ("5.1.1", "8.5"), "35.4.1": ("5.1.2", "8.5"),
    "35.5.0": ("5.1.3", "8.5"), "35.6.0": ("5.1.4", "8.5"), "35.6.1": ("5.1.5", "8.5"),
    "36.2.0": ("6.0 DP", "8.6"), "36.3.0": ("6.0", "8.6"), "36.4.0": ("6.1", "10.3"), "36.4.3": ("6.2", "10.3"),
    "36.4.4": ("6.2.1", "10.3"), "38.2.0": ("7.0", "10.13"),
}
JETPACK_MAJOR_BY_L4T = {32: 4, 35: 5, 36: 6, 38: 7}
JETPACK_PYTHON = {4: (3, 6), 5: (3, 8), 6: (3, 10), 7: (3, 12)}  # the system Python JetPack's apt packages target
# DLA cores by module family (device-tree words, most specific first); None: depends on the SKU (Orin NX 8 GB has 1).
DLA_CORES = (("thor", 0), ("agx orin", 2), ("orin nx", None), ("orin nano", 0), ("orin", 2), ("xavier", 2),
             ("tx2", 0), ("nano", 0), ("tx1", 0))
# TensorRT for RTX runs engines only on these compute capabilities below 12.0: Turing to Ada (1.7.1's
# ComputeCapability enum: SM75, SM80, SM86, SM89, SM120, SM121; its runtime refused 9.0 on an H100).
RTX_RUNNABLE = ("7.5", "8.0", "8.6", "8.9")
NVARGUS_PLUGIN = "usr/lib/aarch64-linux-gnu/gstreamer-1.0/libgstnvarguscamerasrc.so"
JETPACK_TENSORRT_FIX = ("use JetPack's TensorRT: sudo apt install python3-libnvinfer, in a venv made with "
                        "/usr/bin/python3 -m venv --system-site-packages VENV")
UNSUPPORTED_JETPACK_FIX = ("flash JetPack 6 with NVIDIA SDK Manager (Orin modules; Xavier stops at JetPack 5, Nano and "
                           "TX2 at 4, so they cannot run mlic-edge's engines)")
NO_GPU_DETAIL = "no NVIDIA GPU: TensorRT engines cannot run here; ONNX Runtime CPU works"


@dataclass
class Check:
    id: str  # stable: the docs' troubleshooting table and scripts key on it
    title: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable facts behind ``detail``


@dataclass(frozen=True)
class SystemRoot:
    """Where system files are read from: "/" normally, a fake /proc-style tree in tests."""

    root: Path = Path("/")

    def path(self, relative: str) -> Path:
        return self.root / relative

    def read(self, relative: str) -> str | None:
        """A file's text (NULs dropped, as device-tree strings end with one), or None if it cannot be read."""
        try:
            return self.path(relative).read_text(errors="replace").replace("\x00", "").strip()
        except OSError:
            return None

    @property
    def live(self) -> bool:
        """Whether this is the real machine, so probes that bypass files (nvidia-smi, CUDA, cameras) may run."""
        return self.root.resolve() == Path("/").resolve()


def parse_nv_tegra_release(text: str) -> dict[str, Any]:
    """``# R36 (release), REVISION: 3.0, ...`` → {"l4t": "36.3.0", "jetpack": "6.0", "jetpack_major": 6, ...};
    values unknown to this table are None."""
    release = re.search(r"#\s*R(\d+)\s*\(release\)", text)
    revision = re.search(r"REVISION:\s*([\d.]+)", text)
    board = re.search(r"BOARD:\s*([^,\s]+)", text)
    if not release or not revision:
        return {"l4t": None, "jetpack": None, "jetpack_major": None, "tensorrt": None, "board": None}
    major = int(release.group(1))
    parts = revision.group(1).strip(".").split(".")
    l4t = ".".join([str(major), *parts, *["0"] * (2 - len(parts))])
    jetpack, tensorrt = JETPACK_RELEASES.get(l4t, (None, _tensorrt_by_l4t(major, parts)))
    return {"l4t": l4t, "jetpack": jetpack, "jetpack_major": JETPACK_MAJOR_BY_L4T.get(major), "tensorrt": tensorrt,
            "board": board.group(1) if board else None}


def run_checks(run_path: Path | None = None, system: SystemRoot = SystemRoot()) -> list[Check]:
    """Every check that applies to this machine, in a fixed order. Never raises."""
    facts = _Facts(system, Path(run_path) if run_path else None)
    checks = []
    for check_id, title, check in all_checks():
        try:
            outcome = check(facts)
        except Exception as error:  # a doctor must report, not crash: the reason becomes the check's detail
            outcome = _Outcome("warn", f"check could not run: {type(error).__name__}: {error}",
                               "rerun with `mlic-edge --debug doctor --json` and report the output")
        if outcome is not None:
            checks.append(Check(check_id, title, outcome.status, outcome.detail, outcome.fix, outcome.data))
    return checks


def summarize(checks: list[Check]) -> dict[str, Any]:
    """JSON-ready: every check, the count per status, the platform and the Jetson facts (None off a Jetson)."""
    by_id = {check.id: check for check in checks}
    jetson = by_id.get("jetson")
    jetson_facts = None
    if jetson is not None and jetson.data.get("is_jetson"):
        jetson_facts = {"model": jetson.data.get("model"), **_data(by_id, "l4t"),
                        "dla_cores": _data(by_id, "dla").get("cores")}
    summary = {"checks": [asdict(check) for check in checks],
               **{status: sum(check.status == status for check in checks) for status in STATUS_STYLE},
               "platform": _data(by_id, "platform"), "jetson": jetson_facts}
    json.dumps(summary)  # fail here, in the doctor, rather than in the CLI's --json output
    return summary


def doctor_table(checks: list[Check]):
    """A rich table for the CLI: id, status (coloured), detail, fix."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    counts = {status: sum(check.status == status for check in checks) for status in STATUS_STYLE}
    table = Table(title=f"mlic-edge doctor: {counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        style = STATUS_STYLE[check.status]
        table.add_row(check.id, f"[{style}]{check.status}[/{style}]", escape(check.detail), escape(check.fix or ""))
    return table


@dataclass
class _Outcome:
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _ok(detail: str, **data: Any) -> _Outcome:
    return _Outcome("ok", detail, None, data)


def _warn(detail: str, fix: str, **data: Any) -> _Outcome:
    return _Outcome("warn", detail, fix, data)


def _fail(detail: str, fix: str, **data: Any) -> _Outcome:
    return _Outcome("fail", detail, fix, data)


class _Facts:
    """What several checks need, found once and only when first asked for."""

    def __init__(self, system: SystemRoot, run_path: Path | None) -> None:
        self.system = system
        self.run_path = run_path
        self._tensorrt: dict[str, TensorRT | BackendError | None] = {}

    @cached_property
    def device_tree_model(self) -> str | None:
        return self.system.read("proc/device-tree/model")

    @cached_property
    def release(self) -> dict[str, Any] | None:
        text = self.system.read("etc/nv_tegra_release")
        return None if text is None else parse_nv_tegra_release(text)

    @property
    def is_jetson(self) -> bool:
        return "jetson" in (self.device_tree_model or "").lower() or self.release is not None

    @property
    def jetson_label(self) -> str:
        release = self.release or {}
        jetpack = release.get("jetpack") or (f"{release['jetpack_major']}.x" if release.get("jetpack_major") else None)
        return f"JetPack {jetpack}" if jetpack else "this JetPack"

    @cached_property
    def driver_cuda(self) -> tuple[int, int] | None:
        """The CUDA version the driver supports: libcuda's own answer here; for another root (a Jetson's tree),
        the CUDA that its L4T ships, which is what its driver supports."""
        if self.system.live:
            return driver_cuda_version()
        toolkit = _cuda_toolkit_version(self.system) if self.is_jetson else None
        parts = (toolkit or "").split(".")
        return (int(parts[0]), int(parts[1])) if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() \
            else None

    @cached_property
    def gpu(self) -> GpuInfo | None:
        live = self.system.live
        return detect_gpu(nvidia_smi="nvidia-smi" if live else None, use_python_bindings=live,
                          jetson_model_file=self.system.path("proc/device-tree/model"))

    def tensorrt(self, backend: str) -> TensorRT | BackendError | None:
        """The loaded TensorRT of ``backend``, the error that stopped it loading, or None when not installed."""
        if backend not in self._tensorrt:
            found: TensorRT | BackendError | None = None
            if backend in available_tensorrt_backends():
                try:
                    found = load_tensorrt(backend)
                except BackendError as error:
                    found = error
            self._tensorrt[backend] = found
        return self._tensorrt[backend]


def _python_version() -> tuple[int, int, int]:
    return sys.version_info[:3]


def _check_platform(facts: _Facts) -> _Outcome:
    os_release = facts.system.read("etc/os-release") or ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release, re.MULTILINE)
    data = {"system": platform.system(), "machine": platform.machine(), "kernel": platform.release(),
            "os": pretty.group(1) if pretty else None}
    detail = f"{data['system']} {data['machine']}, kernel {data['kernel']}" + (f", {data['os']}" if data["os"] else "")
    if data["system"] not in ("Linux", "Windows"):
        return _warn(f"{detail}: TensorRT has no build for this system", "run engines on Linux (x86_64 or a "
                     "Jetson) or Windows with an NVIDIA GPU; --backend onnxruntime works here", **data)
    return _ok(detail, **data)


def _check_python(facts: _Facts) -> _Outcome:
    version = _python_version()
    text = ".".join(map(str, version))
    venv = sys.prefix != sys.base_prefix
    data = {"version": text, "executable": sys.executable, "venv": venv,
            "system_site_packages": _venv_sees_system_packages() if venv else None}
    if version[:2] < MIN_PYTHON:
        return _fail(f"Python {text}: mlic-edge needs {'.'.join(map(str, MIN_PYTHON))} or newer",
                     "install Python 3.10+ and make the venv with it (python3.10 -m venv VENV)", **data)
    system_python = JETPACK_PYTHON.get((facts.release or {}).get("jetpack_major")) if facts.is_jetson else None
    if system_python and system_python < MIN_PYTHON:
        return _warn(f"Python {text}; {facts.jetson_label}'s TensorRT, OpenCV and pycuda packages are built for "
                     f"its system Python {'.'.join(map(str, system_python))}, which is too old for mlic-edge",
                     UNSUPPORTED_JETPACK_FIX, **data)
    if system_python and version[:2] != system_python:
        return _warn(f"Python {text}; {facts.jetson_label}'s TensorRT, OpenCV and pycuda packages are built for "
                     f"its system Python {'.'.join(map(str, system_python))}",
                     "make the venv from the system Python: /usr/bin/python3 -m venv --system-site-packages VENV",
                     **data)
    where = "a venv" + (" with system site-packages" if data["system_site_packages"] else "") if venv else "no venv"
    return _ok(f"Python {text} ({where})", **data)


def _check_jetson(facts: _Facts) -> _Outcome:
    model = facts.device_tree_model
    if not facts.is_jetson:
        return _ok(f"not a Jetson ({model})" if model else "not a Jetson", is_jetson=False, model=None)
    if model is None or jetson_gpu_from_model(model) is None:
        return _warn(f"L4T found but the Jetson module is not recognised (device-tree model: {model or 'absent'})",
                     "cat /proc/device-tree/model and report it; checks below assume a generic Jetson",
                     is_jetson=True, model=model)
    return _ok(model, is_jetson=True, model=model)


def _check_l4t(facts: _Facts) -> _Outcome | None:
    if not facts.is_jetson:
        return None
    release = facts.release
    if release is None:
        return _warn("/etc/nv_tegra_release is missing: L4T and JetPack versions unknown",
                     "flash or update Jetson Linux with JetPack (SDK Manager), or sudo apt install nvidia-l4t-core",
                     l4t=None, jetpack=None, tensorrt=None)
    data = {key: release[key] for key in ("l4t", "jetpack", "tensorrt", "board")}
    if release["l4t"] is None:
        return _warn("/etc/nv_tegra_release cannot be parsed", "cat /etc/nv_tegra_release and report it", **data)
    if release["jetpack_major"] is not None and release["jetpack_major"] < 6:
        system_python = ".".join(map(str, JETPACK_PYTHON[release["jetpack_major"]]))
        return _fail(f"L4T {release['l4t']}, {facts.jetson_label} (ships TensorRT {release['tensorrt'] or 'unknown'}, "
                     f"Python {system_python}): not supported, mlic-edge runs on JetPack 6", UNSUPPORTED_JETPACK_FIX,
                     **data)
    if release["jetpack"] is None:
        return _ok(f"L4T {release['l4t']} (JetPack version not in mlic-edge's table; "
                   f"expected TensorRT {release['tensorrt'] or 'unknown'})", **data)
    return _ok(f"L4T {release['l4t']}, JetPack {release['jetpack']} (ships TensorRT {release['tensorrt']})", **data)


def _check_gpu(facts: _Facts) -> _Outcome:
    gpu = facts.gpu
    if gpu is None:
        if facts.is_jetson:
            return _warn("Jetson GPU not recognised from the device tree",
                         "cat /proc/device-tree/model and report it", gpu=None)
        return _warn(NO_GPU_DETAIL, "run engines on a machine with an NVIDIA GPU and driver (nvidia-smi must list "
                     "it), or use --backend onnxruntime here", gpu=None)
    memory = f"{gpu.memory_mb / 1024:.1f} GiB" if gpu.memory_mb else None
    if memory is None and facts.is_jetson:
        total_kb = re.search(r"MemTotal:\s*(\d+)", facts.system.read("proc/meminfo") or "")
        memory = f"{int(total_kb.group(1)) / 2**20:.1f} GiB shared with the CPU" if total_kb else "shared with the CPU"
    return _ok(f"{gpu.name}, compute capability {gpu.compute_capability}, {memory or 'memory unknown'} "
               f"(found by {gpu.source})", gpu=asdict(gpu), memory=memory)


def _check_cuda_driver(facts: _Facts) -> _Outcome:
    if facts.is_jetson:
        l4t = (facts.release or {}).get("l4t")
        toolkit = _cuda_toolkit_version(facts.system)
        owner = f"L4T {l4t}" if l4t else "L4T"
        if toolkit is None:
            return _warn(f"CUDA driver is part of {owner}; no CUDA toolkit at /usr/local/cuda",
                         "sudo apt install nvidia-jetpack (CUDA, cuDNN, TensorRT)", driver=owner, toolkit=None)
        return _ok(f"CUDA driver is part of {owner}; CUDA toolkit {toolkit} at /usr/local/cuda",
                   driver=owner, toolkit=toolkit)
    text = facts.system.read("proc/driver/nvidia/version")
    if text is None:
        return _warn("no NVIDIA kernel driver loaded (/proc/driver/nvidia/version is absent)",
                     "with an NVIDIA GPU: install its driver (sudo ubuntu-drivers install, then reboot); "
                     "without one, use --backend onnxruntime", driver=None)
    version = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    driver = version.group(1) if version else None
    return _ok(f"NVIDIA driver {driver or 'of unknown version'}", driver=driver)


def _check_cuda_python(facts: _Facts) -> _Outcome:
    from mlic_edge.runtime.inference.cuda import INSTALL_HINT

    found = _cuda_packages()
    needed = facts.is_jetson or facts.gpu is not None
    if not found:
        if needed:
            driver = facts.driver_cuda
            fix = (f"pip install '{cuda_python_requirement(driver)}' (matches this driver's CUDA "
                   f"{driver[0]}.{driver[1]})" if driver else INSTALL_HINT)
            return _fail("neither pycuda nor cuda-python is installed: the TensorRT backend cannot run", fix,
                         packages={})
        return _ok("neither pycuda nor cuda-python is installed (needed only to run TensorRT engines on a GPU)",
                   packages={})
    names = ", ".join(f"{name} {version or '(version unknown)'}" for name, version in found.items())
    driver = facts.driver_cuda
    driver_text = f"{driver[0]}.{driver[1]}" if driver else None
    wanted = cuda_python_requirement(driver) if driver else None
    data = {"packages": found, "driver_cuda": driver_text, "matching_cuda_python": wanted}
    installed = found.get("cuda-python")
    mismatch = cuda_python_mismatch(int(installed.split(".")[0]), driver) if installed else None
    if mismatch:
        return _fail(f"{names}: {mismatch}, so the TensorRT backend cannot use it",
                     f"pip install '{wanted}' (the cuda-python of this driver's CUDA), or update the NVIDIA driver",
                     **data)
    suffix = f"; the driver supports CUDA {driver_text} (matching: {wanted})" if driver else ""
    return _ok(names + suffix, **data)


def _check_tensorrt(facts: _Facts) -> _Outcome:
    found = facts.tensorrt("tensorrt")
    expected = (facts.release or {}).get("tensorrt") if facts.is_jetson else None
    expectation = f"{facts.jetson_label} ships TensorRT {expected}" if expected else None
    if isinstance(found, BackendError):
        return _fail(found.message, found.hint or JETPACK_TENSORRT_FIX, version=None, expected=expected)
    if found is None:
        if facts.is_jetson:
            return _fail("TensorRT Python package not found" + (f" ({expectation})" if expectation else ""),
                         JETPACK_TENSORRT_FIX + _venv_note(), version=None, expected=expected)
        if facts.gpu is not None:
            return _warn("TensorRT is not installed: --backend tensorrt is unavailable",
                         "pip install tensorrt (wheels from NVIDIA's index pypi.nvidia.com)", version=None)
        return _ok("not installed (not needed without an NVIDIA GPU; tensorrt-rtx builds engines on a CPU)",
                   version=None)
    data = {"version": found.version, "expected": expected, "dla": found.caps.dla,
            "strongly_typed": found.caps.strongly_typed}
    if expected and not _same_release(found.version, expected):
        return _warn(f"TensorRT {found.version} found, but {expectation}: it may not match this L4T's driver",
                     JETPACK_TENSORRT_FIX, **data)
    detail = f"TensorRT {found.version}" + (f" ({expectation})" if expectation else "")
    if not facts.is_jetson and facts.gpu is None:
        detail += "; builds engines, but no NVIDIA GPU here runs them"
    return _ok(detail, **data)


def _check_tensorrt_rtx(facts: _Facts) -> _Outcome | None:
    found = facts.tensorrt("tensorrt-rtx")
    if facts.is_jetson and found is None:
        return None  # TensorRT for RTX is for desktop GPUs; JetPack's TensorRT is the one that matters here
    if isinstance(found, BackendError):
        return _fail(found.message, found.hint or "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings",
                     version=None)
    if found is None:
        return _ok("not installed (optional: builds engines on a CPU, runs them on RTX GPUs; "
                   "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)", version=None)
    gpu = facts.gpu
    if gpu is None:
        return _ok(f"TensorRT for RTX {found.version}: builds engines; cannot run without an RTX-class GPU",
                   version=found.version, runs_here=False)
    if _rtx_runs_on(gpu.compute_capability):
        return _ok(f"TensorRT for RTX {found.version}: builds and runs engines on {gpu.name}",
                   version=found.version, runs_here=True)
    return _warn(f"TensorRT for RTX {found.version} builds engines but cannot run them on {gpu.name} (compute "
                 f"capability {gpu.compute_capability}; it runs on {', '.join(RTX_RUNNABLE)} and 12.0+)",
                 "run engines on this GPU with --backend tensorrt (full TensorRT) or --backend onnxruntime",
                 version=found.version, runs_here=False)


def _check_onnxruntime(facts: _Facts) -> _Outcome:
    try:
        import onnxruntime

        from mlic_edge.runtime.inference.backends.onnxruntime_backend import available_devices
    except ImportError as error:
        tensorrt = facts.tensorrt("tensorrt")
        outcome = _warn if isinstance(tensorrt, TensorRT) and (facts.gpu or facts.is_jetson) else _fail
        return outcome(f"ONNX Runtime does not import ({error}): --backend onnxruntime and parity are unavailable",
                       "pip install onnxruntime", version=None, providers=[])
    providers = list(onnxruntime.get_available_providers())
    devices = available_devices()
    data = {"version": onnxruntime.__version__, "providers": providers, "devices": devices}
    detail = f"ONNX Runtime {onnxruntime.__version__}: {', '.join(providers)}"
    if facts.gpu is not None and not facts.is_jetson and "cuda" not in devices:
        return _warn(detail + " (no CUDAExecutionProvider: runs on the CPU although a GPU is here)",
                     "pip uninstall -y onnxruntime && pip install onnxruntime-gpu", **data)
    return _ok(detail, **data)


def _check_dla(facts: _Facts) -> _Outcome | None:
    if not facts.is_jetson:
        return None
    cores = _dla_cores(facts.system)
    model = facts.device_tree_model or "this module"
    expected = _expected_dla_cores(model)
    data = {"cores": len(cores), "devices": cores, "expected": expected}
    if cores:
        return _ok(f"{len(cores)} DLA core{'s' if len(cores) > 1 else ''} ({', '.join(cores)})", **data)
    if expected == 0:
        return _ok(f"none: {model} has no DLA", **data)
    should = f"{model} has {expected}" if expected else f"{model} may have 1 or 2"
    return _warn(f"no DLA device nodes found; {should}",
                 "check the nvdla driver: ls /dev/nvhost-*nvdla*; sudo dmesg | grep -i nvdla; "
                 "in a container pass the devices through (docker run --runtime nvidia)", **data)


def _check_opencv(facts: _Facts) -> _Outcome:
    try:
        version, has_gstreamer = _opencv_info()
    except ImportError as error:
        return _fail(f"OpenCV does not import ({error}): images, videos and cameras cannot be read",
                     "pip install opencv-python (on a Jetson: sudo apt install python3-opencv)", version=None)
    data = {"version": version, "gstreamer": has_gstreamer}
    if has_gstreamer:
        return _ok(f"OpenCV {version} with GStreamer (csi:// and gst: sources work)", **data)
    if facts.is_jetson:
        return _warn(f"OpenCV {version} has no GStreamer (pip's opencv-python): csi:// and gst: sources cannot open",
                     "pip uninstall -y opencv-python opencv-python-headless; sudo apt install python3-opencv; "
                     "use a venv made with /usr/bin/python3 -m venv --system-site-packages VENV", **data)
    return _ok(f"OpenCV {version} without GStreamer: gst: pipelines unavailable; cameras, files and streams work",
               **data)


def _check_gstreamer_csi(facts: _Facts) -> _Outcome | None:
    if not facts.is_jetson:
        return None
    plugin = facts.system.path(NVARGUS_PLUGIN)
    data = {"plugin": f"/{NVARGUS_PLUGIN}", "present": plugin.is_file()}
    if plugin.is_file():
        return _ok("GStreamer nvarguscamerasrc plugin present (csi:// cameras)", **data)
    return _warn("GStreamer plugin nvarguscamerasrc is missing: csi:// cameras cannot open",
                 "sudo apt install nvidia-l4t-gstreamer; then check with gst-inspect-1.0 nvarguscamerasrc", **data)


def _check_cameras(facts: _Facts) -> _Outcome:
    nodes = sorted(facts.system.path("dev").glob("video*"), key=lambda node: _trailing_number(node.name))
    if not nodes:
        return _warn("no V4L2 camera (/dev/video*)", "plug in a USB camera and list it with v4l2-ctl --list-devices "
                     "(sudo apt install v4l-utils); files and streams work without one", devices=[])
    opening = _openable_cameras() if facts.system.live else None
    devices = []
    for node in nodes:
        name = facts.system.read(f"sys/class/video4linux/{node.name}/name")
        devices.append({"path": f"/dev/{node.name}", "name": name,
                        "opens": None if opening is None else f"/dev/{node.name}" in opening})
    listed = ", ".join(device["path"] + (f" ({device['name']})" if device["name"] else "") +
                       (" [does not open]" if device["opens"] is False else "") for device in devices)
    if opening is not None and not opening:
        return _warn(f"{listed}: none opens (busy, metadata-only, or no permission)",
                     "sudo usermod -aG video $USER and log in again, or close the program using the camera",
                     devices=devices)
    return _ok(listed, devices=devices)


def _check_disk(facts: _Facts) -> _Outcome:
    where = facts.run_path or Path.cwd()
    existing = next(path for path in (where, *where.absolute().parents) if path.exists())
    free = shutil.disk_usage(existing).free
    data = {"path": str(where), "free_bytes": free}
    detail = f"{free / 1e9:.1f} GB free at {where}"
    if free < LOW_DISK_BYTES:
        return _warn(f"{detail}: under {LOW_DISK_BYTES / 1e9:.0f} GB (engines, videos and reports need room)",
                     "free space (e.g. delete old runs/*/engines) or use --run on a larger disk", **data)
    return _ok(detail, **data)


def _check_deploy(facts: _Facts) -> _Outcome | None:
    """With --run on a bundle's run: what reports/deploy.md says held on this device (None elsewhere)."""
    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.deployment.deploy_report import FAILED, VERIFIED, deploy_report

    if facts.run_path is None:
        return None
    run = RunDir(facts.run_path)
    report = deploy_report(run)
    if report is None:
        return None
    data = {"status": report["status"], "problems": report["problems"], "report": str(run.reports / "deploy.md")}
    shipped = ", ".join(graph["file"] for graph in report["graphs"])
    if report["status"] == VERIFIED:
        checked = "; ".join(f"{r['backend']} {r['precision']} ΔmAP {r['delta_mAP_points']:+.3f}"
                            for r in report["device_parity"])
        return _ok(f"bundle {report['bundle']['name']}: {shipped} as shipped; parity here passed ({checked}); "
                   f"{len(report['engines'])} engine(s) from shipped graphs", **data)
    detail = f"bundle {report['bundle']['name']}: " + "; ".join(report["problems"])
    if report["status"] == FAILED:
        return _fail(detail, f"unpack the bundle again (mlic-edge build --bundle FILE --out {run.path}) and read "
                             f"{run.reports / 'deploy.md'}", **data)
    return _warn(detail, f"mlic-edge parity --run {run.path}, then mlic-edge bench --run {run.path}", **data)


def _check_installed(entry: BackendEntry) -> Callable[[_Facts], _Outcome]:
    """A backend doctor knows nothing particular about: whether its package is here (the registry's probe)."""

    def check(facts: _Facts) -> _Outcome:
        if entry.installed():
            return _ok(f"installed ({entry.description})", installed=True)
        return _ok(f"not installed (optional: {entry.description}; {entry.install_hint()})", installed=False)

    return check


Checks = tuple[tuple[str, str, Callable[[_Facts], "_Outcome | None"]], ...]
_SYSTEM_CHECKS: Checks = (
    ("platform", "Platform", _check_platform),
    ("python", "Python", _check_python),
    ("jetson", "Jetson module", _check_jetson),
    ("l4t", "L4T / JetPack", _check_l4t),
    ("gpu", "GPU", _check_gpu),
    ("cuda-driver", "CUDA driver", _check_cuda_driver),
    ("cuda-python", "CUDA Python bindings", _check_cuda_python),
)
# What doctor knows of a backend beyond its probe (the versions JetPack ships, the GPUs it runs on, the providers).
_BACKEND_CHECKS = {"tensorrt": _check_tensorrt, "tensorrt-rtx": _check_tensorrt_rtx, "onnxruntime": _check_onnxruntime}
_DEVICE_CHECKS: Checks = (
    ("dla", "DLA cores", _check_dla),
    ("opencv", "OpenCV", _check_opencv),
    ("gstreamer-csi", "GStreamer CSI plugin", _check_gstreamer_csi),
    ("cameras", "V4L2 cameras", _check_cameras),
    ("disk", "Free disk", _check_disk),
    ("deploy", "Deployed bundle", _check_deploy),
)


def all_checks() -> Checks:
    """(id, title, check) in doctor's order: the system, one row per registered backend (its id is the backend's
    name), then the device's cameras, disk and deployment."""
    backends = tuple((entry.name, entry.title, _BACKEND_CHECKS.get(entry.name) or _check_installed(entry))
                     for entry in list_backends())
    return _SYSTEM_CHECKS + backends + _DEVICE_CHECKS


def check_ids() -> tuple[str, ...]:
    return tuple(check_id for check_id, _, _ in all_checks())


def _opencv_info() -> tuple[str, bool]:
    """OpenCV's version and whether it was built with GStreamer."""
    import cv2

    from mlic_edge.runtime.inference.sources import gstreamer_available

    return cv2.__version__, gstreamer_available()


def _openable_cameras() -> set[str]:
    from mlic_edge.runtime.inference.sources import list_cameras

    return set(list_cameras())


def _dla_cores(system: SystemRoot) -> list[str]:
    """DLA names ("nvdla0", ...) from device nodes (JetPack 5: /dev/nvhost-nvdla0, JetPack 6: /dev/nvhost-ctrl-nvdla0)
    and platform devices (/sys/devices/platform[/bus@0]/15880000.nvdla0)."""
    candidates = [*system.path("dev").glob("nvhost-*nvdla*"),
                  *system.path("sys/devices/platform").glob("*.nvdla*"),
                  *system.path("sys/devices/platform").glob("*/*.nvdla*")]
    numbers = {match.group(1) for path in candidates if (match := re.search(r"nvdla(\d+)$", path.name))}
    return [f"nvdla{number}" for number in sorted(numbers, key=int)]


def _expected_dla_cores(model: str) -> int | None:
    lowered = model.lower()
    return next((cores for word, cores in DLA_CORES if word in lowered), None)


def _tensorrt_by_l4t(major: int, revision: list[str]) -> str | None:
    """The TensorRT an L4T release not in JETPACK_RELEASES most likely ships, by its major and revision."""
    if major == 35:
        return "8.5"
    if major == 36:
        return "10.3" if revision and revision[0].isdigit() and int(revision[0]) >= 4 else "8.6"
    return "10" if major >= 38 else None


def _same_release(version: str, expected: str) -> bool:
    """Whether ``version`` ("8.6.2.3") is of the ``expected`` release ("8.6", or "10" for any 10.x)."""
    return version.split(".")[:len(expected.split("."))] == expected.split(".")


def _rtx_runs_on(capability: str) -> bool:
    major = capability.split(".")[0]
    return capability in RTX_RUNNABLE or (major.isdigit() and int(major) >= 12)


def _cuda_toolkit_version(system: SystemRoot) -> str | None:
    text = system.read("usr/local/cuda/version.json")
    if text:
        try:
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            return None
    match = re.search(r"CUDA Version\s+([\d.]+)", system.read("usr/local/cuda/version.txt") or "")
    return match.group(1) if match else None


def _cuda_packages() -> dict[str, str | None]:
    """The CUDA bindings this interpreter has, with their versions: {"cuda-python": "12.9.0", "pycuda": ...}."""
    found = {}
    if _module_found("cuda.bindings") or _module_found("cuda.cudart"):
        found["cuda-python"] = _distribution_version("cuda-bindings", "cuda-python")
    if _module_found("pycuda"):
        found["pycuda"] = _distribution_version("pycuda")
    return found


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # the parent package is missing or broken
        return False


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _venv_sees_system_packages() -> bool | None:
    try:
        config = (Path(sys.prefix) / "pyvenv.cfg").read_text()
    except OSError:
        return None
    return re.search(r"^include-system-site-packages\s*=\s*true", config, re.MULTILINE | re.IGNORECASE) is not None


def _venv_note() -> str:
    if sys.prefix != sys.base_prefix and _venv_sees_system_packages() is False:
        return " (this venv does not see system site-packages: recreate it with --system-site-packages)"
    return ""


def _trailing_number(name: str) -> int:
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else -1


def _data(by_id: dict[str, Check], check_id: str) -> dict[str, Any]:
    check = by_id.get(check_id)
    return dict(check.data) if check else {}
