"""Run ``mlic-edge run`` as a systemd service: the unit file, a logrotate config for its JSON lines, install/uninstall.

The unit restarts the run on failure, sends its stderr (the ``--stats-every`` line) to the journal and writes records
to ``<out_dir>/predictions.jsonl`` (several sources: one run batching them, ``<out_dir>/<stream>.jsonl`` each), which
logrotate rotates by size with ``copytruncate`` (see ``render_logrotate``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlic_edge.errors import MlicError, RunDirError
from mlic_edge.io import atomic_path, require_writable
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends import registry as backend_registry
from mlic_edge.runtime.inference.streams import STREAM_FIELD, StreamSpec, output_paths, parse_streams
from mlic_edge.spec import DEFAULT_BACKEND, rebuild_command, require_at_least, require_fraction, require_seconds

UNIT_DIR = Path("/etc/systemd/system")
LOGROTATE_DIR = Path("/etc/logrotate.d")
JSONL_NAME = "predictions.jsonl"
NO_SYSTEMD_HINT = "use `mlic-edge service install ... --print` and start the printed ExecStart= command with your init system"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]*")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def default_executable() -> Path:
    """The ``mlic-edge`` entry point of the running environment (its venv's bin folder first, then ``PATH``)."""
    beside_python = Path(sys.executable).parent / "mlic-edge"  # not resolved: a venv's python is a symlink
    if beside_python.is_file():
        return beside_python.absolute()
    found = shutil.which("mlic-edge")
    if found:
        return Path(found).absolute()
    raise MlicError("the mlic-edge command is not installed in this Python environment",
                    hint="install mlic-edge (its wheel or source tree) into the venv the service should use, or pass "
                         "its path")


@dataclass(kw_only=True)
class ServiceSpec:
    """What the service runs: ``<executable> run <source> --run <run_dir> … --out <out_dir>/predictions.jsonl``;
    with several sources ``run SRC1 SRC2 … --out <out_dir>/{stream}.jsonl``, one file per stream."""

    run_dir: Path
    out_dir: Path
    name: str = "mlic-edge"
    sources: tuple[str, ...] = ("csi://0",)  # NAME=SOURCE names a stream (its records and file)
    backend: str = DEFAULT_BACKEND
    precision: str = "fp16"
    rotate_mb: int = 50
    keep: int = 10
    stats_every: float = 60
    user: str | None = None  # None: the service runs as root
    threshold: float | None = None
    batch_timeout_ms: float | None = None  # ms, `run --batch-timeout` (None: run's default)
    thresholds: Path | None = None
    smoothing: float | None = None
    only_changes: bool = False
    append: bool = True  # `run --append`: restarts keep earlier records, copytruncate rotation stays safe
    extra_args: list[str] = field(default_factory=list)
    executable: Path = field(default_factory=default_executable)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.name.endswith((".service", ".")):
            raise MlicError(f"service name {self.name!r} is not a valid systemd unit name",
                            hint="use letters, digits, '-', '_' or '.', e.g. mlic-edge-door")
        if self.user is not None and not _USER.fullmatch(self.user):
            raise MlicError(f"user {self.user!r} is not a valid user name", hint="give an existing login name")
        if self.rotate_mb < 1 or self.keep < 0:
            raise MlicError("rotate size must be >= 1 MB and kept files >= 0", hint="for example --rotate-mb 50 --keep 10")
        require_seconds("--stats-every", self.stats_every, hint="for example --stats-every 60")
        if self.threshold is not None:
            require_fraction("--threshold", self.threshold)
        require_at_least("--batch-timeout", self.batch_timeout_ms, 0,
                         hint="milliseconds, for example --batch-timeout 5")
        self.sources = tuple(self.sources)
        for value in (*self.sources, self.name, *self.extra_args):
            if any(char in value for char in "\n\r\0"):
                raise MlicError(f"{value!r} contains a line break or NUL, which a unit file cannot hold",
                                hint="pass the value on one line")
        # systemd needs absolute paths, and the service's working directory is not the caller's.
        self.run_dir = Path(self.run_dir).absolute()
        self.out_dir = Path(self.out_dir).absolute()
        self.executable = Path(self.executable).absolute()
        self.thresholds = Path(self.thresholds).absolute() if self.thresholds else None
        self.streams()  # refuses a bad or repeated name, a repeated source, no source: `run` would at every start

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    def streams(self) -> list[StreamSpec]:
        """The sources as `run` names them (NAME=SOURCE, or a name made from the source)."""
        return parse_streams(self.sources)

    @property
    def jsonl_path(self) -> Path:
        """``--out``: predictions.jsonl, or with several sources the ``{stream}`` template of one file each."""
        return self.out_dir / (JSONL_NAME if len(self.sources) == 1 else f"{STREAM_FIELD}.jsonl")

    def jsonl_paths(self) -> dict[str, Path]:
        """Each stream's JSON lines file, by stream name."""
        return output_paths(self.jsonl_path, [stream.name for stream in self.streams()], "--out")

    def argv(self) -> list[str]:
        """The command the service runs, one argument per item."""
        args = [str(self.executable), "run", *self.sources, "--run", str(self.run_dir),
                "--backend", self.backend, "--precision", self.precision]
        if self.batch_timeout_ms is not None:
            args += ["--batch-timeout", _number(self.batch_timeout_ms)]
        if self.threshold is not None:
            args += ["--threshold", _number(self.threshold)]
        if self.thresholds is not None:
            args += ["--thresholds", str(self.thresholds)]
        if self.smoothing:
            args += ["--smoothing", _number(self.smoothing)]
        if self.only_changes:
            args.append("--only-changes")
        if self.append:
            args.append("--append")
        args += ["--out", str(self.jsonl_path), "--stats-every", _number(self.stats_every)]
        return args + list(self.extra_args)


def _number(value: float) -> str:
    return f"{value:g}"


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument, quoted by systemd's rules (systemd.service "Command lines"), not the shell's.

    ``%`` starts a specifier and ``$`` a variable in systemd whether quoted or not, so they are doubled; inside
    double quotes systemd reads C escapes, so backslash and quote are escaped; a lone ``;`` separates commands.
    """
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN_WORD.fullmatch(arg):
        return escaped
    if arg == ";":
        return "\\;"
    return '"' + "".join(_ESCAPES.get(char, char) for char in escaped) + '"'


def _setting(value: str | Path) -> str:
    """A whole-line setting (paths, descriptions): only specifiers need escaping."""
    return str(value).replace("%", "%%")


def render_unit(spec: ServiceSpec) -> str:
    """The systemd unit that runs ``spec.argv()``, restarts it on failure and logs to the journal."""
    streams = spec.streams()
    after = ["network-online.target"]
    if any(stream.source.startswith("csi://") for stream in streams):
        after.append("nvargus-daemon.service")  # Jetson's camera daemon; ordering only, harmless where absent
    reads = (streams[0].source if len(streams) == 1 else
             f"{len(streams)} streams ({', '.join(stream.name for stream in streams)})")
    lines = [
        "# Written by `mlic-edge service install`; `mlic-edge service uninstall` removes it.",
        "[Unit]",
        f"Description={_setting(f'mlic-edge: {reads} with {spec.run_dir.name} ({spec.precision})')}",
        "Wants=network-online.target",
        f"After={' '.join(after)}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(systemd_quote(arg) for arg in spec.argv())}",
        f"WorkingDirectory={_setting(spec.out_dir)}",
        "Environment=PYTHONUNBUFFERED=1",
        *([f"User={spec.user}"] if spec.user else []),
        "Restart=on-failure",
        "RestartSec=5",
        # run finishes what is in flight and closes its outputs on SIGTERM; 20 s covers a slow engine or camera.
        "KillSignal=SIGTERM",
        "TimeoutStopSec=20",
        # ... then exits 143 (130 after SIGINT), which systemd would otherwise count as a failure of `systemctl stop`
        "SuccessExitStatus=130 143",
        "StandardOutput=journal",
        "StandardError=journal",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_logrotate(spec: ServiceSpec) -> str:
    """A logrotate config that rotates the service's JSON lines (a file per stream) by size and keeps ``spec.keep``
    compressed files of each."""
    paths = " ".join('"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
                     for path in spec.jsonl_paths().values())
    return (
        f"# Written by `mlic-edge service install` for {spec.unit_name}.\n"
        "# copytruncate: `mlic-edge run` keeps the file open while the service runs. Renaming it (logrotate's\n"
        "# default) would leave the process writing into the rotated file until a restart; copying then truncating\n"
        "# in place needs no signal. The lines written between the copy and the truncation (milliseconds) are lost,\n"
        "# and the writer must have opened the file for appending, or its next line lands at its old offset behind\n"
        "# a run of NUL bytes. logrotate checks `size` when it runs (daily by default).\n"
        f"{paths} {{\n"
        f"    size {spec.rotate_mb}M\n"
        f"    rotate {spec.keep}\n"
        "    compress\n"
        "    copytruncate\n"
        "    missingok\n"
        "    notifempty\n"
        "}\n"
    )


def check_runnable(spec: ServiceSpec) -> None:
    """Refuse a service that could only fail: no run directory, or nothing to run at the precision."""
    run = RunDir(spec.run_dir)
    run.read()
    onnx = run.onnx(spec.precision)
    engines = list((spec.run_dir / "engines").glob(f"*/model.{spec.precision}.engine"))
    if spec.backend in backend_registry.ENGINE_BACKENDS:
        if not engines:
            raise RunDirError(f"{spec.run_dir} has no {spec.precision} engine",
                              hint="build it on this device: "
                                   + rebuild_command(spec.run_dir, spec.precision, spec.backend))
    elif not onnx.is_file() and not engines:
        made_by = ("mlic-edge export" if spec.precision == "fp32"
                   else rebuild_command(spec.run_dir, spec.precision))
        raise RunDirError(f"{spec.run_dir} has no {onnx.name} and no {spec.precision} engine", hint=f"run `{made_by}`")
    if not (spec.executable.is_file() and os.access(spec.executable, os.X_OK)):
        raise MlicError(f"{spec.executable} is not an executable", hint="pass the mlic-edge of the service's venv")


def install(spec: ServiceSpec, *, unit_dir: Path = UNIT_DIR, logrotate_dir: Path | None = LOGROTATE_DIR,
            dry_run: bool = False, systemctl: str = "systemctl",
            on_step: Callable[[str], None] | None = None) -> list[str]:
    """Write the unit (and the logrotate config unless ``logrotate_dir`` is None), reload systemd, enable and start.

    Every check runs before anything is written. Returns the steps taken (``dry_run``: the steps it would take).
    """
    check_runnable(spec)
    unit_path = Path(unit_dir) / spec.unit_name
    rotate_path = Path(logrotate_dir) / spec.name if logrotate_dir is not None else None
    for folder in (unit_dir, logrotate_dir):
        if folder is not None:
            _require_writable(Path(folder))
    _require_user(spec.user)
    systemctl_path = None if dry_run else _find_systemctl(systemctl)
    steps: list[str] = []

    def step(text: str) -> None:
        steps.append(text)
        if on_step:
            on_step(text)

    prefix = "would " if dry_run else ""
    files = [(unit_path, render_unit(spec))] + ([(rotate_path, render_logrotate(spec))] if rotate_path else [])
    if not dry_run:
        _prepare_out_dir(spec)
        for path, text in files:
            _write_config(path, text)
    step(f"{prefix}create {spec.out_dir}" + (f" (owner {spec.user})" if spec.user else ""))
    for path, _ in files:
        step(f"{prefix}write {path}")
    for args in (["daemon-reload"], ["enable", "--now", spec.unit_name]):
        if systemctl_path:
            _systemctl(systemctl_path, args, spec.name)
        step(f"{prefix}run systemctl {' '.join(args)}")
    return steps


def uninstall(name: str, *, unit_dir: Path = UNIT_DIR, logrotate_dir: Path | None = LOGROTATE_DIR,
              dry_run: bool = False, systemctl: str = "systemctl",
              on_step: Callable[[str], None] | None = None) -> list[str]:
    """Stop and disable the service, remove its unit and logrotate files; its JSON lines are kept."""
    unit_path = Path(unit_dir) / f"{name}.service"
    rotate_path = Path(logrotate_dir) / name if logrotate_dir is not None else None
    if not unit_path.is_file():
        raise MlicError(f"no service {name!r}: {unit_path} does not exist",
                        hint="`systemctl list-unit-files 'mlic-edge*'` lists the installed ones")
    for folder in (unit_dir, logrotate_dir if rotate_path and rotate_path.exists() else None):
        if folder is not None:
            _require_writable(Path(folder))
    systemctl_path = None if dry_run else shutil.which(systemctl)
    steps: list[str] = []
    prefix = "would " if dry_run else ""

    def step(text: str) -> None:
        steps.append(text)
        if on_step:
            on_step(text)

    if systemctl_path:
        _systemctl(systemctl_path, ["disable", "--now", unit_path.name], name)
    step(f"{prefix}run systemctl disable --now {unit_path.name}")
    for path in (unit_path, rotate_path):
        if path is not None and path.exists():
            if not dry_run:
                path.unlink()
            step(f"{prefix}remove {path}")
    if systemctl_path:
        _systemctl(systemctl_path, ["daemon-reload"], name)
    step(f"{prefix}run systemctl daemon-reload")
    return steps


def _require_writable(folder: Path) -> None:
    if not folder.is_dir():
        raise MlicError(f"cannot write {folder}: it does not exist",
                        hint="is this a systemd system with logrotate installed? pass --print to write the unit yourself")
    require_writable(folder, create=False, what=f"cannot write {folder}",
                     hint="run with sudo, or pass --print to write the unit yourself")


def _require_user(user: str | None) -> None:
    if user is None:
        return
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        raise MlicError(f"user {user!r} does not exist on this system",
                        hint=f"create it (sudo useradd -r -G video {user}) or pass an existing --user") from None


def _find_systemctl(systemctl: str) -> str:
    found = shutil.which(systemctl)
    if not found:
        raise MlicError(f"{systemctl} not found: this system does not run systemd", hint=NO_SYSTEMD_HINT)
    return found


def _systemctl(systemctl: str, args: list[str], name: str) -> None:
    done = subprocess.run([systemctl, *args], capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise MlicError(f"systemctl {' '.join(args)} failed: {why[-1] if why else f'exit {done.returncode}'}",
                        hint=f"see `systemctl status {name}` and `journalctl -u {name}`")


def _prepare_out_dir(spec: ServiceSpec) -> None:
    """The output folder, owned by the service's user (install runs as root, the service may not)."""
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    if spec.user and os.geteuid() == 0:
        shutil.chown(spec.out_dir, user=spec.user)


def _write_config(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, 0o644)  # logrotate skips group/world-writable configs, systemd warns on them
