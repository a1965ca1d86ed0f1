"""`mlic-edge doctor` against fake /proc-style trees (Jetson Orin JP6, Xavier NX JP5, x86) and the real machine."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from mlic_edge.runtime.deployment import doctor
from mlic_edge.runtime.deployment.doctor import SystemRoot, parse_nv_tegra_release, run_checks, summarize
from mlic_edge.runtime.engines.gpu import GpuInfo
from mlic_edge.runtime.engines.api import TensorRT

ORIN_RELEASE = ("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64, "
                "DATE: Mon May  6 17:34:21 UTC 2024\n# KERNEL_VARIANT: oot\n")
XAVIER_RELEASE = ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                  "DATE: Tue Aug  1 19:57:35 UTC 2023\n")


def write_tree(root: Path, files: dict[str, str]) -> SystemRoot:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return SystemRoot(root)


def orin_tree(root: Path) -> SystemRoot:
    return write_tree(root, {
        "proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit\0",
        "etc/nv_tegra_release": ORIN_RELEASE,
        "proc/meminfo": "MemTotal:       64335836 kB\nMemFree:  1000 kB\n",
        "dev/nvhost-ctrl-nvdla0": "", "dev/nvhost-ctrl-nvdla1": "",
        "dev/video0": "", "sys/class/video4linux/video0/name": "vi-output, imx219 9-0010\n",
        doctor.NVARGUS_PLUGIN: "",
        "usr/local/cuda/version.json": json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.2.140"}}),
    })


def xavier_tree(root: Path) -> SystemRoot:
    return write_tree(root, {
        "proc/device-tree/model": "NVIDIA Jetson Xavier NX Developer Kit\0",
        "etc/nv_tegra_release": XAVIER_RELEASE,
        "sys/devices/platform/15880000.nvdla0/uevent": "", "sys/devices/platform/158c0000.nvdla1/uevent": "",
    })


def x86_tree(root: Path, driver: bool = False) -> SystemRoot:
    files = {"etc/os-release": 'NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n'}
    if driver:
        files["proc/driver/nvidia/version"] = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
                                               "550.54.14  Release Build  (dvs-builder@U16-I3-B03-4-3)\n")
    return write_tree(root, files)


@pytest.fixture
def environment(monkeypatch):
    """Make the interpreter-side facts deterministic: which TensorRT loads, Python, OpenCV, the GPU probe."""

    def configure(tensorrt: str | None = None, rtx: str | None = None, python=(3, 10, 12),
                  opencv=("4.8.0", False), gpu: GpuInfo | None | str = "probe",
                  cuda_packages: dict | None = None) -> None:
        versions = {"tensorrt": tensorrt, "tensorrt-rtx": rtx}
        monkeypatch.setattr(doctor, "_cuda_packages", lambda: dict(cuda_packages or {}))
        monkeypatch.setattr(doctor, "available_tensorrt_backends",
                            lambda: [backend for backend, version in versions.items() if version])
        monkeypatch.setattr(doctor, "load_tensorrt", lambda backend: TensorRT.from_module(
            SimpleNamespace(__version__=versions[backend]), backend))
        monkeypatch.setattr(doctor, "_python_version", lambda: python)
        monkeypatch.setattr(doctor, "_opencv_info", lambda: opencv)
        if gpu != "probe":  # otherwise the real detect_gpu runs, reading only the fake tree's device-tree model
            monkeypatch.setattr(doctor, "detect_gpu", lambda **_: gpu)

    return configure


def by_id(checks) -> dict:
    return {check.id: check for check in checks}


def test_parse_nv_tegra_release():
    assert parse_nv_tegra_release(ORIN_RELEASE) == {"l4t": "36.3.0", "jetpack": "6.0", "jetpack_major": 6,
                                                    "tensorrt": "8.6", "board": "generic"}
    xavier = parse_nv_tegra_release(XAVIER_RELEASE)
    assert (xavier["l4t"], xavier["jetpack"], xavier["tensorrt"]) == ("35.4.1", "5.1.2", "8.5")
    unknown = parse_nv_tegra_release("# R36 (release), REVISION: 9.1, BOARD: generic")
    assert (unknown["l4t"], unknown["jetpack"], unknown["jetpack_major"], unknown["tensorrt"]) == \
        ("36.9.1", None, 6, "10.3")
    assert parse_nv_tegra_release("garbage")["l4t"] is None


def test_orin_jetpack6(tmp_path, environment):
    environment(tensorrt="8.6.2.3", opencv=("4.8.0", True), cuda_packages={"cuda-python": "12.6.2"})
    checks = by_id(run_checks(tmp_path, orin_tree(tmp_path / "root")))
    assert checks["cuda-python"].status == "ok"
    assert checks["cuda-python"].detail == ("cuda-python 12.6.2; the driver supports CUDA 12.2 "
                                            "(matching: cuda-python>=12.8,<13)")
    assert checks["jetson"].status == "ok" and checks["jetson"].detail == "NVIDIA Jetson AGX Orin Developer Kit"
    assert checks["l4t"].status == "ok" and "L4T 36.3.0, JetPack 6.0" in checks["l4t"].detail
    assert checks["gpu"].status == "ok" and "compute capability 8.7" in checks["gpu"].detail
    assert "61.4 GiB shared with the CPU" in checks["gpu"].detail
    assert checks["cuda-driver"].status == "ok" and "12.2.140" in checks["cuda-driver"].detail
    assert checks["tensorrt"].status == "ok"
    assert checks["tensorrt"].detail == "TensorRT 8.6.2.3 (JetPack 6.0 ships TensorRT 8.6)"
    assert checks["dla"].status == "ok" and checks["dla"].data["cores"] == 2
    assert checks["dla"].detail == "2 DLA cores (nvdla0, nvdla1)"
    assert checks["cameras"].status == "ok" and checks["cameras"].detail == "/dev/video0 (vi-output, imx219 9-0010)"
    assert checks["gstreamer-csi"].status == "ok"
    assert checks["opencv"].status == "ok" and checks["python"].status == "ok"
    assert "tensorrt-rtx" not in checks  # not installed, and not for Jetsons
    summary = summarize(list(checks.values()))
    assert summary["jetson"] == {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.3.0", "jetpack": "6.0",
                                 "tensorrt": "8.6", "board": "generic", "dla_cores": 2}
    assert summary["warn"] == summary["fail"] == 0


def test_orin_problems_each_get_one_line_and_a_fix(tmp_path, environment):
    """TensorRT from the wrong JetPack, pip's OpenCV, the CSI plugin missing, a Python not JetPack's."""
    environment(tensorrt="10.3.0", python=(3, 12, 1))
    system = orin_tree(tmp_path / "root")
    (system.path(doctor.NVARGUS_PLUGIN)).unlink()
    checks = by_id(run_checks(tmp_path, system))
    expectations = {"tensorrt": "JetPack 6.0 ships TensorRT 8.6", "opencv": "no GStreamer",
                    "gstreamer-csi": "nvarguscamerasrc is missing", "python": "system Python 3.10"}
    for check_id, text in expectations.items():
        check = checks[check_id]
        assert check.status == "warn" and text in check.detail, check
        assert check.fix and "\n" not in check.detail + check.fix
    assert "nvidia-l4t-gstreamer" in checks["gstreamer-csi"].fix
    assert "python3-opencv" in checks["opencv"].fix and "--system-site-packages" in checks["opencv"].fix


def test_cuda_python_of_another_major_than_the_driver_is_named(tmp_path, environment):
    """`pip install cuda-python` gives 13.x, which needs a driver >= 580; JetPack 6's driver is CUDA 12.x."""
    system = orin_tree(tmp_path / "root")
    environment(tensorrt="8.6.2.3", cuda_packages={"cuda-python": "13.0.1"})
    check = by_id(run_checks(tmp_path, system))["cuda-python"]
    assert check.status == "fail" and "needs a driver for CUDA 13 (>= 580); this driver supports CUDA 12.2" in \
        check.detail
    assert check.fix.startswith("pip install 'cuda-python>=12.8,<13'") and check.data["matching_cuda_python"] == \
        "cuda-python>=12.8,<13"
    environment(tensorrt="8.6.2.3", cuda_packages={})
    check = by_id(run_checks(tmp_path, system))["cuda-python"]
    assert check.status == "fail" and check.fix.startswith("pip install 'cuda-python>=12.8,<13'")


def test_xavier_nx_jetpack5_without_tensorrt(tmp_path, environment):
    environment(tensorrt=None, python=(3, 10, 12))
    checks = by_id(run_checks(tmp_path, xavier_tree(tmp_path / "root")))
    assert checks["jetson"].detail == "NVIDIA Jetson Xavier NX Developer Kit"
    assert checks["l4t"].status == "fail" and checks["l4t"].detail == (
        "L4T 35.4.1, JetPack 5.1.2 (ships TensorRT 8.5, Python 3.8): not supported, mlic-edge runs on JetPack 6")
    assert "compute capability 7.2" in checks["gpu"].detail
    assert checks["dla"].data["cores"] == 2 and checks["dla"].status == "ok"
    assert checks["tensorrt"].status == "fail" and "JetPack 5.1.2 ships TensorRT 8.5" in checks["tensorrt"].detail
    assert "python3-libnvinfer" in checks["tensorrt"].fix
    assert checks["python"].status == "warn" and checks["python"].fix.startswith("flash JetPack 6")
    assert checks["cameras"].status == "warn" and checks["gstreamer-csi"].status == "warn"
    assert checks["cuda-driver"].status == "warn"  # no /usr/local/cuda in this tree


def test_jetson_without_dla_nodes_warns_only_where_dla_exists(tmp_path, environment):
    environment(tensorrt="8.6.2")
    orin = orin_tree(tmp_path / "orin")
    for node in orin.path("dev").glob("nvhost-*"):
        node.unlink()
    assert by_id(run_checks(tmp_path, orin))["dla"].status == "warn"
    nano = write_tree(tmp_path / "nano", {"proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\0",
                                          "etc/nv_tegra_release": ORIN_RELEASE})
    dla = by_id(run_checks(tmp_path, nano))["dla"]
    assert dla.status == "ok" and dla.data["cores"] == 0 and "no DLA" in dla.detail


def test_x86_without_gpu(tmp_path, environment):
    environment(rtx="1.7.1.116", gpu=None)
    checks = by_id(run_checks(tmp_path, x86_tree(tmp_path / "root")))
    assert checks["jetson"].detail == "not a Jetson"
    assert not {"l4t", "dla", "gstreamer-csi"} & set(checks)
    assert checks["gpu"].status == "warn" and checks["gpu"].detail == doctor.NO_GPU_DETAIL
    assert checks["tensorrt-rtx"].status == "ok"
    assert checks["tensorrt-rtx"].detail == "TensorRT for RTX 1.7.1.116: builds engines; cannot run without an RTX-class GPU"
    assert checks["tensorrt"].status == "ok" and "not installed" in checks["tensorrt"].detail
    assert checks["cuda-driver"].status == "warn"
    assert checks["platform"].data["os"] == "Ubuntu 22.04.4 LTS"
    assert summarize(list(checks.values()))["jetson"] is None


def test_x86_with_gpus(tmp_path, environment):
    system = x86_tree(tmp_path / "root", driver=True)
    environment(rtx="1.7.1.116", gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9", 24564, "nvidia-smi"))
    checks = by_id(run_checks(tmp_path, system))
    assert checks["cuda-driver"].status == "ok" and checks["cuda-driver"].data["driver"] == "550.54.14"
    assert checks["gpu"].detail == "NVIDIA GeForce RTX 4090, compute capability 8.9, 24.0 GiB (found by nvidia-smi)"
    assert checks["tensorrt-rtx"].status == "ok" and "builds and runs" in checks["tensorrt-rtx"].detail
    assert checks["tensorrt"].status == "warn" and "pypi.nvidia.com" in checks["tensorrt"].fix
    assert checks["onnxruntime"].status == "warn" and "onnxruntime-gpu" in checks["onnxruntime"].fix

    environment(rtx="1.7.1.116", gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 81559, "nvidia-smi"))
    rtx = by_id(run_checks(tmp_path, system))["tensorrt-rtx"]
    assert rtx.status == "warn" and "cannot run them on NVIDIA H100" in rtx.detail
    environment(rtx="1.7.1.116", gpu=GpuInfo("Tesla T4", "7.5", 15360, "nvidia-smi"))  # Turing: SM75 is a target
    assert "builds and runs engines on Tesla T4" in by_id(run_checks(tmp_path, system))["tensorrt-rtx"].detail


def test_low_disk_and_a_crashing_check(tmp_path, environment, monkeypatch):
    environment(gpu=None)
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: SimpleNamespace(free=500_000_000))

    def broken(system):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "_dla_cores", broken)
    checks = by_id(run_checks(tmp_path / "runs" / "not-yet", orin_tree(tmp_path / "root")))
    assert checks["disk"].status == "warn" and "0.5 GB free" in checks["disk"].detail
    assert checks["dla"].status == "warn" and "RuntimeError: boom" in checks["dla"].detail


def test_real_machine_is_reported_truthfully(tmp_path):
    checks = run_checks(tmp_path)
    ids = [check.id for check in checks]
    assert len(ids) == len(set(ids)) and set(ids) <= set(doctor.check_ids())
    assert all(check.status in ("ok", "warn", "fail") and check.detail for check in checks)
    assert all(check.fix for check in checks if check.status != "ok")
    summary = json.loads(json.dumps(summarize(checks)))
    assert summary["ok"] + summary["warn"] + summary["fail"] == len(checks)
    gpu = by_id(checks)["gpu"]
    if doctor.detect_gpu() is None:
        assert gpu.status == "warn" and gpu.detail == doctor.NO_GPU_DETAIL
    else:
        assert gpu.status == "ok"
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(doctor.doctor_table(checks))
    assert "gpu" in console.export_text()


def test_doctor_imports_no_heavy_module():
    from import_checks import packages_loaded_by

    assert not {"torch", "tensorrt_rtx_bindings", "onnxruntime", "cv2"} & packages_loaded_by("mlic_edge.runtime.deployment.doctor")
