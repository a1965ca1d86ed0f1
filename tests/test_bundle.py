"""Bundles: pack a trained run, unpack it on a "device" without its dataset, and refuse anything altered."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import invoke
from mlic_edge.errors import DataError, RunDirError
from mlic_edge.io import read_json, sha256_file, write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment.bundle import BUNDLE_FORMAT, MANIFEST, inspect_bundle, pack, unpack

STALE_RECORD = "calibration/0000stale0000/record.json"


@pytest.fixture(scope="module")
def packed(tmp_path_factory, trained_run, synth_data) -> dict:
    """A run with fp16/int8 built on a private copy of the dataset, packed; then that dataset is deleted."""
    from mlic_edge.commands.build import BuildRequest, build

    root = tmp_path_factory.mktemp("bundle")
    dataset = root / "dataset"
    shutil.copytree(synth_data, dataset)
    run = RunDir(root / "runs" / "baseline")
    shutil.copytree(trained_run, run.path)
    _repoint_dataset(run, f"voc:{dataset}")
    for precision in ("fp16", "int8"):
        build(run, BuildRequest(precision=precision, backend="onnxruntime", evaluate=False, qat_epochs=0))
    (run.path / "engines" / "cpu-x").mkdir(parents=True)
    (run.path / "engines" / "cpu-x" / "model.fp32.engine").write_bytes(b"device specific")
    write_json(run.path / STALE_RECORD, {"fp32_onnx_sha256": "0" * 64})
    bundle = pack(run, root / "baseline.mlic.tar.gz")
    shutil.rmtree(dataset)  # the device has no dataset: everything must come from the bundle
    return {"run": run, "bundle": bundle, "root": root}


def _repoint_dataset(run: RunDir, spec: str) -> None:
    meta = run.read()
    meta["dataset"]["spec"] = spec
    write_json(run.run_json, meta)
    with np.load(run.reference) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["spec"] = np.array(spec)
    np.savez_compressed(run.reference, **arrays)


def _rewrite(bundle: Path, out: Path, replace: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of ``bundle`` with members replaced, added or dropped (bundle.json kept as packed)."""
    replace = dict(replace or {})
    with tarfile.open(bundle, "r:gz") as source, tarfile.open(out, "w:gz", compresslevel=1) as target:
        for member in source.getmembers():
            if member.name in drop:
                continue
            data = replace.pop(member.name, None)
            data = source.extractfile(member).read() if data is None else data
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
        for name, data in replace.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    return out


def test_pack_holds_what_the_device_needs_and_nothing_else(packed):
    bundle, run = packed["bundle"], packed["run"]
    with tarfile.open(bundle, "r:gz") as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    names = set(contents)
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "reference.npz", "run.json", MANIFEST} <= names
    assert not {n for n in names if n.endswith(".pt") or n.startswith(("engines", "reports")) or "label_graph" in n}
    assert STALE_RECORD not in names  # a record of another model.onnx is of no use on the device
    assert any(n.startswith("calibration/") and n.endswith("/ranges.json") for n in names)
    manifest = json.loads(contents[MANIFEST])
    assert manifest == inspect_bundle(bundle)
    assert manifest["format"] == BUNDLE_FORMAT and manifest["name"] == "baseline"
    assert manifest["precisions"] == ["fp32", "fp16", "int8"]
    assert manifest["labels"] == run.read()["labels"] and manifest["preprocessing"]["img_size"] == 64
    assert set(manifest["files"]) == names - {MANIFEST}
    for name, facts in manifest["files"].items():
        assert facts == {"sha256": hashlib.sha256(contents[name]).hexdigest(), "size": len(contents[name])}
    assert contents["model.int8.onnx"] == run.onnx("int8").read_bytes()
    device_meta = json.loads(contents["run.json"])
    assert "train" not in device_meta and "train" in json.loads(contents["origin/run.json"])
    image_members = [n for n in names if n.startswith("images/") and n.endswith(".jpg")]
    assert len(image_members) == manifest["images"]["count"] == 40


def test_unpacked_run_checks_parity_without_the_dataset(packed, tmp_path):
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.runtime.checks.parity import compute_parity

    device = unpack(packed["bundle"], tmp_path / "device" / "baseline")
    assert device.read()["labels"] == packed["run"].read()["labels"]
    for precision in ("fp32", "fp16", "int8"):
        assert device.onnx(precision).read_bytes() == packed["run"].onnx(precision).read_bytes()
    assert not (packed["root"] / "dataset").exists()
    with create_backend("onnxruntime", device, "fp32", "cpu") as backend:
        result = compute_parity(device, backend)
    assert result["images"] == 40 and result["passed"] and result["max_abs_diff"] < 1e-4
    assert not list(device.path.parent.glob(".*"))  # no temporary folder left beside it


def test_device_int8_build_reuses_the_calibration_record(packed, tmp_path):
    from mlic_edge.commands.build import BuildRequest, build

    device = unpack(packed["bundle"], tmp_path / "baseline")
    entry = build(device, BuildRequest(precision="int8", backend="onnxruntime"))
    assert entry["int8"]["reused"] is True
    assert entry["accuracy"]["images"] == 40  # mAP measured on the bundled images


def test_cli_runs_the_unpacked_model(packed, tmp_path, capsys):
    device = unpack(packed["bundle"], tmp_path / "baseline")
    result = invoke(capsys, "run", device.path / "images" / "JPEGImages", "--run", device.path, "--backend",
                    "onnxruntime", "--device", "cpu", "--max-frames", "3")
    assert result.code == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    assert len(records) == 3


def test_pack_and_unpack_need_no_torch(packed, tmp_path):
    script = (f"import sys; sys.modules['torch'] = None\n"
              f"from pathlib import Path\nfrom mlic_edge.rundir import RunDir\n"
              f"from mlic_edge.runtime.deployment.bundle import pack, unpack\n"
              f"run = unpack(Path({str(packed['bundle'])!r}), Path({str(tmp_path / 'a')!r}))\n"
              f"unpack(pack(run, Path({str(tmp_path / 'b.mlic.tar.gz')!r})), Path({str(tmp_path / 'b')!r}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b" / "images" / "test.csv").is_file()


def test_altered_member_is_refused_naming_it(packed, tmp_path):
    altered = _rewrite(packed["bundle"], tmp_path / "altered.tar.gz", {"model.int8.onnx": b"not the model"})
    with pytest.raises(DataError, match=r"altered after packing: model\.int8\.onnx differs") as error:
        unpack(altered, tmp_path / "out")
    assert "re-pack" in error.value.hint
    assert list(tmp_path.iterdir()) == [altered]  # nothing left behind


def test_extra_member_is_refused(packed, tmp_path):
    extra = _rewrite(packed["bundle"], tmp_path / "extra.tar.gz", {"model.evil.onnx": b"x"})
    with pytest.raises(DataError, match=r"altered after packing: model\.evil\.onnx"):
        unpack(extra, tmp_path / "out")


@pytest.mark.parametrize("drop", ["reference.npz", MANIFEST])
def test_missing_member_is_incomplete(packed, tmp_path, drop):
    incomplete = _rewrite(packed["bundle"], tmp_path / "incomplete.tar.gz", drop=(drop,))
    with pytest.raises(DataError, match=rf"incomplete: {drop}"):
        unpack(incomplete, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_unreadable_archive_is_refused(packed, tmp_path, content):
    data = packed["bundle"].read_bytes()
    broken = tmp_path / "broken.mlic.tar.gz"
    broken.write_bytes(data[:len(data) // 2] if content == "truncated" else b"hello, not a tarball\n")
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        unpack(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_path_traversal_member_is_refused(packed, tmp_path):
    evil = _rewrite(packed["bundle"], tmp_path / "evil.tar.gz", {"../evil.txt": b"escape"})
    with pytest.raises(DataError, match="unsafe path '../evil.txt'"):
        unpack(evil, tmp_path / "deep" / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep").exists()


def test_read_only_install_folder_is_refused_before_extracting(packed, tmp_path, monkeypatch):
    install = tmp_path / "install"
    install.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == install
                        else real_access(path, mode, **kw))
    with pytest.raises(RunDirError, match="read-only install folder") as error:
        unpack(packed["bundle"], install / "baseline")
    assert "--out" in error.value.hint
    assert list(install.iterdir()) == []


def test_unpacking_twice_keeps_device_files_and_other_targets_are_refused(packed, tmp_path):
    target = tmp_path / "baseline"
    unpack(packed["bundle"], target)
    (target / "engines").mkdir()
    (target / "engines" / "model.fp32.engine").write_bytes(b"built here")
    (target / "model.onnx").write_bytes(b"damaged")
    again = unpack(packed["bundle"], target)
    assert sha256_file(again.onnx("fp32")) == sha256_file(packed["run"].onnx("fp32"))
    assert (target / "engines" / "model.fp32.engine").read_bytes() == b"built here"
    assert read_json(target / "run.json")["dataset"]["spec"] == f"csv:{target.resolve() / 'images'}"

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an unpack of this bundle") as error:
        unpack(packed["bundle"], other)
    assert "--out" in error.value.hint


def test_pack_refuses_a_run_without_export(run_copy, tmp_path):
    run = RunDir(run_copy)
    run.reference.unlink()
    with pytest.raises(RunDirError, match="reference.npz is missing") as error:
        pack(run, tmp_path / "x.mlic.tar.gz")
    assert "mlic-edge export" in error.value.hint
    assert not (tmp_path / "x.mlic.tar.gz").exists()


def test_pack_without_images_keeps_the_dataset_spec(packed, tmp_path):
    run = packed["run"]
    bundle = pack(run, tmp_path, with_images=False)
    assert bundle == tmp_path / "baseline.mlic.tar.gz"
    manifest = inspect_bundle(bundle)
    assert manifest["images"] is None and not [n for n in manifest["files"] if n.startswith("images/")]
    device = unpack(bundle, tmp_path / "device")
    assert device.read()["dataset"]["spec"] == run.read()["dataset"]["spec"]


def test_build_bundle_checks_the_backend_before_unpacking(packed, tmp_path, capsys):
    """`build --bundle --backend tensorrt` on a machine without TensorRT: refused before anything is written."""
    from cli_helpers import assert_one_line_error, invoke
    from mlic_edge.runtime.engines.api import available_tensorrt_backends

    if "tensorrt" in available_tensorrt_backends():
        pytest.skip("full TensorRT is installed here")
    out = tmp_path / "unpacked"
    result = invoke(capsys, "build", "--bundle", packed["bundle"], "--out", out, "-p", "int8", "-b", "tensorrt")
    assert_one_line_error(result, "tensorrt")
    assert not out.exists()


def test_a_missing_run_suggests_training_that_model(capsys, tmp_path):
    from cli_helpers import assert_one_line_error, invoke

    result = invoke(capsys, "build", "--model", "msrn-absent", "-p", "fp16")
    assert_one_line_error(result, "mlic-edge train --model msrn-absent --data DATA")
    result = invoke(capsys, "parity", "--run", tmp_path / "elsewhere")
    assert_one_line_error(result, f"--model elsewhere --data DATA --out {tmp_path / 'elsewhere'}")
