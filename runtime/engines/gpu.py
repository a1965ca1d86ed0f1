"""Which NVIDIA GPU is here: name, compute capability, memory — or None, quickly, when there is none."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NVIDIA_SMI_QUERY = ("--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits")
JETSON_MODEL_FILE = Path("/proc/device-tree/model")
# Jetson module families by the word in /proc/device-tree/model, most specific first ("Orin Nano" is an Orin).
# Thor is sm_110 from CUDA 13 on (CUDA 12.8/12.9 called it sm_101).
JETSON_COMPUTE_CAPABILITY = (("thor", "11.0"), ("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"),
                             ("nano", "5.3"), ("tx1", "5.3"))
PROBE_TIMEOUT_S = 5.0
# The driver library every CUDA binding loads: asked directly, its version needs no binding and no GPU.
LIBCUDA = "libcuda.so.1"
# cuda-python's major is the CUDA major it needs from the driver; the minimum Linux driver of each (CUDA's release
# notes, "minor version compatibility": any driver of the same CUDA major runs it).
CUDA_MAJOR_MIN_DRIVER = {11: "450.80", 12: "525.60", 13: "580"}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    memory_mb: int | None
    source: str  # which probe found it: cuda-python, pycuda, nvidia-smi, device-tree


def detect_gpu(*, nvidia_smi: str | None = "nvidia-smi", jetson_model_file: Path = JETSON_MODEL_FILE,
               use_python_bindings: bool = True) -> GpuInfo | None:
    """The first GPU found by cuda-python, pycuda, nvidia-smi, then a Jetson's device tree; None if none is.

    Never raises for a missing driver or GPU (a bug in a probe, such as a TypeError from a wrong call, does raise) and
    never waits more than a few seconds (nvidia-smi runs with a timeout).
    """
    probes: list[Callable[[], GpuInfo | None]] = []
    if use_python_bindings:
        probes += [_probe_cuda_python, _probe_pycuda]
    if nvidia_smi:
        probes.append(lambda: _probe_nvidia_smi(nvidia_smi))
    probes.append(lambda: _probe_jetson(jetson_model_file))
    for probe in probes:
        found = probe()
        if found is not None:
            return found
    return None


def driver_cuda_version(library: str = LIBCUDA) -> tuple[int, int] | None:
    """(major, minor) of the CUDA version the installed NVIDIA driver supports (``cuDriverGetVersion``), read from
    libcuda itself so that it works whichever cuda-python is installed, or none; None without a driver."""
    try:
        libcuda = ctypes.CDLL(library)
        version = ctypes.c_int(0)
        status = libcuda.cuDriverGetVersion(ctypes.byref(version))
    except (OSError, AttributeError):
        return None
    if status != 0 or version.value <= 0:
        return None
    return version.value // 1000, version.value % 1000 // 10


def cuda_python_requirement(driver: tuple[int, int]) -> str:
    """The pip requirement of the cuda-python that this driver runs: the same CUDA major (JetPack 6: 12, JetPack 5:
    11.8, drivers >= 580: 13)."""
    major = driver[0]
    if major <= 11:
        return "cuda-python==11.8.*"
    # before 12.8, cuda-python wheels carry cuda.bindings themselves: pip puts them beside a newer cuda-bindings that
    # torch pulled in (13.x for PyPI's torch >= 2.11) and reports no conflict; from 12.8 on it is refused
    return "cuda-python>=12.8,<13" if major == 12 else f"cuda-python=={major}.*"


def cuda_python_mismatch(installed_major: int | None, driver: tuple[int, int] | None) -> str | None:
    """Why the installed cuda-python cannot run on this driver (its CUDA major is newer), or None when it can."""
    if installed_major is None or driver is None or installed_major <= driver[0]:
        return None
    needs = CUDA_MAJOR_MIN_DRIVER.get(installed_major)
    return (f"cuda-python {installed_major}.x needs a driver for CUDA {installed_major}"
            + (f" (>= {needs})" if needs else "") + f"; this driver supports CUDA {driver[0]}.{driver[1]}")


def parse_nvidia_smi(text: str) -> GpuInfo | None:
    """First GPU of ``nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader[,nounits]``."""
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 3 or not fields[0]:
            continue
        name, capability, memory = fields[0], fields[1], fields[2]
        if not _is_compute_capability(capability):  # "[N/A]" on some Jetson drivers, or an older driver
            return None
        return GpuInfo(name=name, compute_capability=capability, memory_mb=_parse_mib(memory), source="nvidia-smi")
    return None


def jetson_gpu_from_model(model: str) -> GpuInfo | None:
    """A Jetson's GPU from its device-tree model string, e.g. "NVIDIA Jetson AGX Orin Developer Kit"."""
    name = model.replace("\x00", "").strip()
    lowered = name.lower()
    if "jetson" not in lowered:  # other boards (a Raspberry Pi) have a device tree too
        return None
    for word, capability in JETSON_COMPUTE_CAPABILITY:
        if word in lowered:
            return GpuInfo(name=name, compute_capability=capability, memory_mb=None, source="device-tree")
    return None


def _probe_cuda_python() -> GpuInfo | None:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python before 12.6
        except ImportError:
            return None
    try:
        return _query_cuda_driver(driver)
    except RuntimeError:  # no libcuda: 11.x's loader raises it, 12.9+ cuda-pathfinder's DynamicLibNotFoundError too
        return None


class _NoDevice(Exception):
    """A driver call returned an error status."""


def _query_cuda_driver(driver) -> GpuInfo | None:
    """The first device through the driver API; None when any call returns an error status (no driver or device)."""
    attribute = driver.CUdevice_attribute

    def call(function, *args):
        status, *values = function(*args)
        if status != driver.CUresult.CUDA_SUCCESS:
            raise _NoDevice
        return values[0] if values else None

    try:
        call(driver.cuInit, 0)
        if call(driver.cuDeviceGetCount) < 1:
            return None
        device = call(driver.cuDeviceGet, 0)
        raw_name = call(driver.cuDeviceGetName, 256, device)
        major = call(driver.cuDeviceGetAttribute, attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        minor = call(driver.cuDeviceGetAttribute, attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        memory = call(driver.cuDeviceTotalMem, device)
    except _NoDevice:
        return None
    name = raw_name.split(b"\x00", 1)[0].decode(errors="replace").strip()
    return GpuInfo(name=name, compute_capability=f"{major}.{minor}", memory_mb=int(memory) >> 20, source="cuda-python")


def _probe_pycuda() -> GpuInfo | None:
    try:
        import pycuda.driver as cuda_driver
    except ImportError:  # also what loading pycuda's extension without libcuda raises
        return None
    try:
        cuda_driver.init()
        if cuda_driver.Device.count() < 1:
            return None
        device = cuda_driver.Device(0)
        major, minor = device.compute_capability()
        return GpuInfo(name=device.name(), compute_capability=f"{major}.{minor}",
                       memory_mb=device.total_memory() >> 20, source="pycuda")
    except cuda_driver.Error:  # pycuda's driver errors: no driver or device (cuInit fails)
        return None


def _probe_nvidia_smi(executable: str) -> GpuInfo | None:
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        completed = subprocess.run([path, *NVIDIA_SMI_QUERY], capture_output=True, text=True,
                                   timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(completed.stdout) if completed.returncode == 0 else None


def _probe_jetson(model_file: Path) -> GpuInfo | None:
    try:
        return jetson_gpu_from_model(model_file.read_text(errors="replace"))
    except OSError:
        return None


def _is_compute_capability(text: str) -> bool:
    major, _, minor = text.partition(".")
    return major.isdigit() and minor.isdigit()


def _parse_mib(text: str) -> int | None:
    number = text.split()[0] if text.split() else ""
    return int(number) if number.isdigit() else None
