"""The systemd service: unit and logrotate text, systemd's quoting, install/uninstall against a fake systemctl."""

import configparser
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mlic_edge.errors import MlicError, RunDirError
from mlic_edge.io import write_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment import systemd as service
from mlic_edge.runtime.deployment.systemd import (ServiceSpec, install, render_logrotate, render_unit, systemd_quote,
                                       uninstall)


@pytest.fixture
def spec(tmp_path):
    """A service over a minimal run directory (run.json + model.fp16.onnx); every path holds a space."""
    run_dir = tmp_path / "my runs" / "door cam"
    run_dir.mkdir(parents=True)
    write_json(run_dir / "run.json", {"model": "baseline"})
    (run_dir / "model.fp16.onnx").write_bytes(b"onnx")
    executable = tmp_path / "my venv" / "bin" / "mlic-edge"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    return ServiceSpec(run_dir=run_dir, out_dir=tmp_path / "out dir", executable=executable, name="door",
                       smoothing=0.8, only_changes=True, threshold=0.4, extra_args=["--fps", "15"])


@pytest.fixture
def fake_systemctl(tmp_path):
    """A systemctl that appends its arguments to calls.txt, one call per line."""
    log = tmp_path / "calls.txt"
    script = tmp_path / "bin" / "systemctl"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    script.chmod(0o755)
    return script, log


def dirs(tmp_path):
    unit_dir, rotate_dir = tmp_path / "systemd", tmp_path / "logrotate.d"
    unit_dir.mkdir()
    rotate_dir.mkdir()
    return unit_dir, rotate_dir


def parse_unit(text):
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_unit_runs_the_expected_command_and_restarts_on_failure(spec):
    text = render_unit(spec)
    unit = parse_unit(text)
    assert unit.sections() == ["Unit", "Service", "Install"]
    service_section = unit["Service"]
    assert service_section["Type"] == "simple"
    assert service_section["Restart"] == "on-failure"
    assert service_section["RestartSec"] == "5"
    assert service_section["KillSignal"] == "SIGTERM"
    assert service_section["SuccessExitStatus"].split() == ["130", "143"]  # run's exit after a stop signal
    assert service_section["StandardError"] == "journal"
    assert service_section["Environment"] == "PYTHONUNBUFFERED=1"
    assert service_section["WorkingDirectory"] == str(spec.out_dir)
    assert "User" not in service_section
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # After= may be repeated in systemd (values accumulate): written once here, with every unit in it.
    assert sum(line.startswith("After=") for line in text.splitlines()) == 1
    assert unit["Unit"]["After"].split() == ["network-online.target", "nvargus-daemon.service"]
    expected = [str(spec.executable), "run", "csi://0", "--run", str(spec.run_dir), "--backend", "auto",
                "--precision", "fp16", "--threshold", "0.4", "--smoothing", "0.8", "--only-changes", "--append",
                "--out", str(spec.out_dir / "predictions.jsonl"), "--stats-every", "60", "--fps", "15"]
    assert " " in str(spec.run_dir)
    assert shlex.split(service_section["ExecStart"]) == expected == spec.argv()


def test_unit_user_and_relative_paths(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    relative = ServiceSpec(run_dir=Path("my runs/door cam"), out_dir=Path("out"), executable=spec.executable,
                           user="jetson", sources=("camera0",), backend="tensorrt", precision="int8")
    unit = parse_unit(render_unit(relative))
    assert unit["Service"]["User"] == "jetson"
    assert unit["Unit"]["After"] == "network-online.target"  # no CSI: no nvargus ordering
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[argv.index("--run") + 1] == str(tmp_path / "my runs" / "door cam")
    assert argv[argv.index("--out") + 1] == str(tmp_path / "out" / "predictions.jsonl")


def test_several_sources_run_as_one_batched_run_with_a_file_per_stream(spec):
    spec.sources = ("door=rtsp://cam1/stream", "rtsp://cam2.local/live", "csi://0")
    spec.batch_timeout_ms = 5
    text = render_unit(spec)
    unit = parse_unit(text)
    out = spec.out_dir
    assert shlex.split(unit["Service"]["ExecStart"]) == spec.argv() == [
        str(spec.executable), "run", "door=rtsp://cam1/stream", "rtsp://cam2.local/live", "csi://0",
        "--run", str(spec.run_dir), "--backend", "auto", "--precision", "fp16", "--batch-timeout", "5",
        "--threshold", "0.4", "--smoothing", "0.8", "--only-changes", "--append", "--out", str(out / "{stream}.jsonl"),
        "--stats-every", "60", "--fps", "15"]
    assert unit["Unit"]["After"].split() == ["network-online.target", "nvargus-daemon.service"]  # csi://0 among them
    assert "3 streams (door, cam2.local-live, csi0)" in unit["Unit"]["Description"]
    rotated = render_logrotate(spec).splitlines()
    assert shlex.split(next(line for line in rotated if line.endswith("{")))[:-1] == [
        str(out / "door.jsonl"), str(out / "cam2.local-live.jsonl"), str(out / "csi0.jsonl")]


def test_install_service_checks_every_stream_and_names_its_file(spec, tmp_path):
    from mlic_edge.commands.service import ServiceRequest, install_service

    run = RunDir(spec.run_dir)
    clip = tmp_path / "yard.mp4"
    clip.write_bytes(b"video")
    request = ServiceRequest(sources=("door=rtsp://cam1/stream", str(clip)), out_dir=tmp_path / "out",
                             batch_timeout_ms=2.5, print_only=True)
    installed = install_service(run, request)
    assert installed["predictions"] == str(tmp_path / "out" / "{stream}.jsonl") and installed["steps"] == []
    assert "--batch-timeout 2.5" in installed["unit"] and '"' + str(tmp_path / "out" / "yard.jsonl") + '"' in (
        installed["logrotate"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "door.jsonl").symlink_to(clip)  # door's records would overwrite yard's video
    with pytest.raises(MlicError, match=r"--out-dir \(door\) .*door.jsonl"):
        install_service(run, request)
    assert clip.read_bytes() == b"video"


@pytest.mark.parametrize("arg, quoted", [
    ("csi://0", "csi://0"),
    ("/opt/my venv/bin/mlic-edge", '"/opt/my venv/bin/mlic-edge"'),
    ("50%", "50%%"),
    ("$HOME", '"$$HOME"'),
    ('say "hi"\\now', '"say \\"hi\\"\\\\now"'),
    ("", '""'),
    (";", "\\;"),
    ("gst:nvarguscamerasrc ! video/x-raw(memory:NVMM)", '"gst:nvarguscamerasrc ! video/x-raw(memory:NVMM)"'),
])
def test_systemd_quoting(arg, quoted):
    assert systemd_quote(arg) == quoted


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("sources", [("csi://0",), ("door=rtsp://cam1/stream", "csi://0", "rtsp://x/50%?a=$b")])
def test_systemd_analyze_accepts_the_unit(spec, tmp_path, sources):
    spec.sources = sources
    spec.out_dir.mkdir()
    spec.extra_args += ["--thresholds-note", "50% of $USER"]
    unit_path = tmp_path / "door.service"
    unit_path.write_text(render_unit(spec))
    done = subprocess.run(["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "door.service" not in done.stderr, done.stderr  # no warning about our unit (others' may appear)


def test_logrotate_rotates_by_size_with_copytruncate(spec):
    spec.rotate_mb, spec.keep = 20, 3
    text = render_logrotate(spec)
    body = [line.strip() for line in text.splitlines() if line and not line.startswith("#")]
    assert body[0] == f'"{spec.out_dir / "predictions.jsonl"}" {{'
    assert {"size 20M", "rotate 3", "compress", "copytruncate", "missingok", "notifempty"} <= set(body)
    assert body[-1] == "}"


def test_install_writes_files_and_enables(spec, tmp_path, fake_systemctl):
    script, log = fake_systemctl
    unit_dir, rotate_dir = dirs(tmp_path)
    seen = []
    steps = install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script), on_step=seen.append)
    unit_file, rotate_file = unit_dir / "door.service", rotate_dir / "door"
    assert unit_file.read_text() == render_unit(spec)
    assert rotate_file.read_text() == render_logrotate(spec)
    assert stat.S_IMODE(unit_file.stat().st_mode) == stat.S_IMODE(rotate_file.stat().st_mode) == 0o644
    assert spec.out_dir.is_dir()
    assert log.read_text().splitlines() == ["daemon-reload", "enable --now door.service"]
    assert steps == seen and steps[-1] == "run systemctl enable --now door.service"
    assert sorted(p.name for p in unit_dir.iterdir()) == ["door.service"]  # no temporary file left


def test_install_refuses_unwritable_unit_dir_before_writing(spec, tmp_path, fake_systemctl, monkeypatch):
    script, log = fake_systemctl
    unit_dir, rotate_dir = dirs(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != unit_dir and real_access(path, mode))
    with pytest.raises(MlicError, match="cannot write .*systemd") as error:
        install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    assert "sudo" in error.value.hint and "--print" in error.value.hint
    assert not any(unit_dir.iterdir()) and not any(rotate_dir.iterdir())
    assert not spec.out_dir.exists() and not log.exists()


def test_dry_run_writes_nothing(spec, tmp_path, fake_systemctl):
    script, log = fake_systemctl
    unit_dir, rotate_dir = dirs(tmp_path)
    steps = install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script), dry_run=True)
    assert all(step.startswith("would ") for step in steps)
    assert f"would write {unit_dir / 'door.service'}" in steps
    assert not any(unit_dir.iterdir()) and not any(rotate_dir.iterdir())
    assert not spec.out_dir.exists() and not log.exists()


def test_install_refuses_a_run_without_the_precision(spec, tmp_path, fake_systemctl):
    script, _ = fake_systemctl
    unit_dir, rotate_dir = dirs(tmp_path)
    spec.precision = "int8"
    with pytest.raises(RunDirError, match="no model.int8.onnx") as error:
        install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    assert "mlic-edge build --run" in error.value.hint and "--precision int8" in error.value.hint
    spec.precision, spec.backend = "fp16", "tensorrt"
    with pytest.raises(RunDirError, match="no fp16 engine") as error:
        install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    assert "--backend tensorrt" in error.value.hint
    engine = spec.run_dir / "engines" / "orin-trt10.3.0" / "model.fp16.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"plan")
    install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script), dry_run=True)
    assert not any(unit_dir.iterdir())


def test_install_without_systemd_says_to_print_the_unit(spec, tmp_path):
    unit_dir, rotate_dir = dirs(tmp_path)
    with pytest.raises(MlicError, match="not found: this system does not run systemd") as error:
        install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(tmp_path / "no-systemctl"))
    assert "--print" in error.value.hint
    assert not any(unit_dir.iterdir())


def test_install_reports_a_failing_systemctl(spec, tmp_path):
    unit_dir, rotate_dir = dirs(tmp_path)
    script = tmp_path / "systemctl"
    script.write_text("#!/bin/sh\necho 'System has not been booted with systemd as init system' >&2\nexit 1\n")
    script.chmod(0o755)
    with pytest.raises(MlicError, match="daemon-reload failed: System has not been booted") as error:
        install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    assert "journalctl -u door" in error.value.hint


def test_uninstall_disables_and_removes(spec, tmp_path, fake_systemctl):
    script, log = fake_systemctl
    unit_dir, rotate_dir = dirs(tmp_path)
    install(spec, unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    (spec.out_dir / "predictions.jsonl").write_text("{}\n")
    uninstall("door", unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))
    assert not any(unit_dir.iterdir()) and not any(rotate_dir.iterdir())
    assert (spec.out_dir / "predictions.jsonl").exists()  # the records are the user's
    assert log.read_text().splitlines()[2:] == ["disable --now door.service", "daemon-reload"]
    with pytest.raises(MlicError, match="no service 'door'"):
        uninstall("door", unit_dir=unit_dir, logrotate_dir=rotate_dir, systemctl=str(script))


@pytest.mark.parametrize("fields, message", [
    ({"name": "my service"}, "not a valid systemd unit name"),
    ({"name": "door.service"}, "not a valid systemd unit name"),
    ({"user": "root; rm"}, "not a valid user name"),
    ({"stats_every": 0}, "--stats-every 0 is not a positive number of seconds"),
    ({"sources": ("csi://0\nExecStartPre=/bin/evil",)}, "line break"),
    ({"sources": ("rtsp://a/x", "front door=rtsp://b/x")}, "stream name 'front door' .* may hold only letters"),
    ({"sources": ("door=rtsp://a/x", "door=rtsp://b/x")}, "stream name door given more than once"),
    ({"sources": ("rtsp://a/x", "rtsp://a/x")}, "source rtsp://a/x given more than once"),
    ({"sources": ()}, "no source given"),
    ({"batch_timeout_ms": -1}, "--batch-timeout"),
])
def test_bad_specs_are_refused(tmp_path, fields, message):
    with pytest.raises(MlicError, match=message):
        ServiceSpec(run_dir=tmp_path, out_dir=tmp_path, executable=tmp_path / "mlic-edge", **fields)


def test_default_executable_is_this_venvs_entry_point():
    assert service.default_executable().name == "mlic-edge"
