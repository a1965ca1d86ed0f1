"""Bundles: pack a trained run, unpack it on a "device" without its dataset, and refuse anything altered."""

from __future__ import annotations

import dataclasses
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

from cli_helpers import assert_one_line_error, invoke
from mlic_edge.errors import DataError, RunDirError
from mlic_edge.io import read_json, sha256_file, write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment.bundle import BUNDLE_FORMAT, MANIFEST, inspect_bundle, pack, unpack

STALE_RECORD = "calibration/0000stale0000/record.json"
# The tiny fixture model's int8 misses the default targets (0.2 points / 98.5 %) on 40 eval images: parity here
# checks what the bundle carries, so int8 is held to issue 15's limits.
RELAXED_INT8 = ("--tolerance", "int8=1.5", "--min-same", "int8=0.9")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, trained_run, synth_data) -> dict:
    """A run with fp16/int8 built on a private copy of the dataset (int8 with its first quantized layer kept in
    float, as the accuracy search may keep one), packed as `mlic-edge pack` does (parity measured on the graphs it
    ships); then that dataset is deleted."""
    import onnx

    from mlic_edge.calibration import quantized_node_names
    from mlic_edge.commands.build import BuildRequest, build
    from mlic_edge.commands.pack import pack as pack_command

    root = tmp_path_factory.mktemp("bundle")
    dataset = root / "dataset"
    shutil.copytree(synth_data, dataset)
    run = RunDir(root / "runs" / "baseline")
    shutil.copytree(trained_run, run.path)
    _repoint_dataset(run, f"voc:{dataset}")
    build(run, BuildRequest(precision="fp16", backend="onnxruntime", evaluate=False))
    every_layer = BuildRequest(precision="int8", backend="onnxruntime", evaluate=False, qat_epochs=0,
                               max_fp_layers=0)
    build(run, every_layer)
    kept = quantized_node_names(onnx.load(str(run.onnx("int8"))))[:1]
    build(run, dataclasses.replace(every_layer, keep_fp=kept))
    (run.path / "engines" / "cpu-x").mkdir(parents=True)
    (run.path / "engines" / "cpu-x" / "model.fp32.engine").write_bytes(b"device specific")
    write_json(run.path / STALE_RECORD, {"fp32_onnx_sha256": "0" * 64})
    bundle = Path(pack_command(run, root / "baseline.mlic.tar.gz")["bundle"])
    shutil.rmtree(dataset)  # the device has no dataset: everything must come from the bundle
    return {"run": run, "bundle": bundle, "root": root, "kept_fp": kept}


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


def test_device_requantize_reuses_the_calibration_record_and_says_the_graph_is_new(packed, tmp_path, capsys):
    from mlic_edge.commands.build import BuildRequest, build

    device = unpack(packed["bundle"], tmp_path / "baseline")
    entry = build(device, BuildRequest(precision="int8", backend="onnxruntime", requantize=True))
    assert entry["int8"]["reused"] is True and entry["int8"].get("source") != "bundle"  # the record, not the graph
    assert entry["accuracy"]["images"] == 40  # mAP measured on the bundled images
    assert "workstation's parity figures no longer apply" in capsys.readouterr().err
    # the kept-float layer was the workstation's decision; the record alone cannot repeat it
    assert device.onnx("int8").read_bytes() != packed["run"].onnx("int8").read_bytes()


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
    assert_one_line_error(result, f"--model MODEL --data DATA --out {tmp_path / 'elsewhere'}",
                          f"mlic-edge import ml-gcn|msrn|q2l FILE --out {tmp_path / 'elsewhere'}")


def _int8_result(results: list[dict], graph: str = "tensorrt") -> dict:
    return next(r for r in results if r["backend"] == "onnxruntime" and r["precision"] == "int8"
                and r["graph"] == graph)


def test_round_trip_deploys_the_verified_int8_graph_byte_for_byte(packed, tmp_path, capsys):
    """pack → build --bundle → parity → bench: the int8 graph checked on the workstation (one layer kept in float)
    is the one the device runs, its parity sits beside the workstation's, and reports/deploy.md says what held."""
    import onnx

    from mlic_edge.calibration import quantized_node_names

    workstation = packed["run"]
    graph = inspect_bundle(packed["bundle"])["graphs"]["model.int8.onnx"]
    measured_here = _int8_result(read_json(workstation.reports / "parity.json")["results"])
    assert graph["sha256"] == sha256_file(workstation.onnx("int8"))
    assert [(r["backend"], r["precision"], r["graph"]) for r in graph["workstation_parity"]] == [
        ("onnxruntime", "int8", "tensorrt")]
    assert graph["workstation_parity"][0]["labelset_agreement"] == measured_here["labelset_agreement"]

    device = tmp_path / "device"
    built = invoke(capsys, "build", "--bundle", packed["bundle"], "--out", device, "-p", "int8", "-b",
                   "onnxruntime", "--json")
    assert built.code == 0, built.err
    assert json.loads(built.out)["int8"]["source"] == "bundle"
    assert (device / "model.int8.onnx").read_bytes() == workstation.onnx("int8").read_bytes()
    assert packed["kept_fp"][0] not in quantized_node_names(onnx.load(str(device / "model.int8.onnx")))
    assert read_json(device / "reports" / "deploy.json")["status"] == "incomplete"  # no parity here yet

    checked = invoke(capsys, "parity", "--run", device, "--json", *RELAXED_INT8)
    assert checked.code == 0, checked.err
    report = json.loads(checked.out)
    beside = next(row for row in report["workstation"] if row["precision"] == "int8" and row["graph"] == "tensorrt")
    assert beside["same_bytes"] and beside["onnx"] == "model.int8.onnx"
    assert beside["workstation"] == graph["workstation_parity"]
    # the same bytes on the same ONNX Runtime: the device's figures are the workstation's
    assert beside["device_result"]["labelset_agreement"] == measured_here["labelset_agreement"]
    assert "Workstation (as the bundle recorded) beside this device" in (device / "reports" / "parity.md").read_text()

    deploy = read_json(device / "reports" / "deploy.json")
    assert deploy["status"] == "incomplete" and deploy["problems"] == [
        "no latency measured here: mlic-edge bench --run RUN"]
    timed = invoke(capsys, "bench", "--run", device, "-b", "onnxruntime", "-p", "int8", "--batch", "1",
                   "--iterations", "2", "--warmup", "1", "--frames", "4", "--rounds", "1", "--json")
    assert timed.code == 0, timed.err
    deploy = read_json(device / "reports" / "deploy.json")
    assert deploy["status"] == "verified", deploy["problems"]
    int8 = next(g for g in deploy["graphs"] if g["file"] == "model.int8.onnx")
    assert int8["identical"] and int8["sha256_now"] == graph["sha256"]
    # ONNX Runtime on a CPU runs int8 as the CPU graph, which the bundle shipped too
    assert deploy["latency"]["shipped_graph"] == "model.int8.cpu.onnx" and deploy["latency"]["results"][0]["batch"] == 1
    text = (device / "reports" / "deploy.md").read_text()
    assert "**verified**" in text and f"| model.int8.onnx | {graph['sha256'][:12]}… | yes |" in text

    doctor = invoke(capsys, "doctor", "--run", device, "--json")
    check = next(c for c in json.loads(doctor.out)["checks"] if c["id"] == "deploy")
    assert check["status"] == "ok" and "model.int8.onnx" in check["detail"]


def test_a_graph_changed_on_the_device_is_refused_and_the_deploy_report_fails(packed, tmp_path, capsys):
    from mlic_edge.runtime.deployment.deploy_report import deploy_report
    from model_checks import change_one_weight

    device = unpack(packed["bundle"], tmp_path / "device")
    change_one_weight(device.onnx("int8"))  # still a valid graph, no longer the verified one
    for command in (("build", "--run", device.path, "-p", "int8", "-b", "onnxruntime"),
                    ("run", device.path / "images" / "JPEGImages", "--run", device.path, "-p", "int8",
                     "--max-frames", "2"),
                    ("parity", "--run", device.path, "-p", "int8"),
                    ("bench", "--run", device.path, "-p", "int8", "--iterations", "2", "--frames", "2")):
        result = invoke(capsys, *command)
        assert_one_line_error(result, "model.int8.onnx differs from the one the bundle shipped",
                              "not the graph verified on the workstation", "unpack the bundle again", "--requantize")
    report = deploy_report(device)
    assert report["status"] == "failed"
    assert "model.int8.onnx is not the graph the bundle shipped (its bytes changed)" in report["problems"]
    doctor = invoke(capsys, "doctor", "--run", device.path, "--json")
    assert doctor.code == 1
    assert next(c for c in json.loads(doctor.out)["checks"] if c["id"] == "deploy")["status"] == "fail"


def test_a_requantized_graph_is_the_devices_own_and_the_report_says_so(packed, tmp_path, capsys):
    from mlic_edge.runtime.deployment.deploy_report import deploy_report

    device = unpack(packed["bundle"], tmp_path / "device")
    assert invoke(capsys, "build", "--run", device.path, "-p", "int8", "-b", "onnxruntime", "--requantize").code == 0
    again = invoke(capsys, "build", "--run", device.path, "-p", "int8", "-b", "onnxruntime", "--no-evaluate")
    assert again.code == 0, again.err  # made here: built again as any graph made here is, not refused
    assert invoke(capsys, "parity", "--run", device.path, *RELAXED_INT8).code == 0
    report = deploy_report(device)
    int8 = next(g for g in report["graphs"] if g["file"] == "model.int8.onnx")
    assert int8["made_here"] and not int8["identical"]
    assert report["status"] == "incomplete" and any("made on this device (--requantize)" in p
                                                    for p in report["problems"])


def test_a_shipped_graph_deleted_on_the_device_is_not_silently_remade(packed, tmp_path, capsys):
    device = unpack(packed["bundle"], tmp_path / "device")
    device.onnx("fp16").unlink()
    result = invoke(capsys, "build", "--run", device.path, "-p", "fp16", "-b", "onnxruntime")
    assert_one_line_error(result, "model.fp16.onnx is missing: bundle baseline shipped it", "--requantize")


def test_requantize_is_refused_on_a_run_made_here(run_copy):
    from mlic_edge.commands.build import BuildRequest, build
    from mlic_edge.errors import BuildError

    with pytest.raises(BuildError, match="--requantize is for a run unpacked from a bundle"):
        build(RunDir(run_copy), BuildRequest(precision="fp16", backend="onnxruntime", requantize=True))
