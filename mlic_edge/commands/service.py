"""`mlic-edge service install` / `uninstall` as a library: ``mlic-edge run`` as a systemd service
(runtime/deployment/systemd.py writes the unit and the logrotate rule)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment.systemd import LOGROTATE_DIR, ServiceSpec

OnStep = Callable[[str], None]


@dataclass(frozen=True)
class ServiceRequest:
    sources: tuple[str, ...] = ServiceSpec.sources  # what `run` reads (camera0, csi://0, rtsp://...); NAME=SOURCE
    backend: str = ServiceSpec.backend
    precision: str = ServiceSpec.precision
    out_dir: Path = Path("/var/lib/mlic-edge")  # the folder of predictions.jsonl
    name: str = ServiceSpec.name  # the systemd unit's name
    user: str | None = None  # default: $SUDO_USER, else root
    stats_every: float = ServiceSpec.stats_every  # a latency line in the journal every N s
    rotate_mb: int = ServiceSpec.rotate_mb
    keep: int = ServiceSpec.keep  # rotated files kept
    threshold: float | None = None
    thresholds: Path | None = None
    smoothing: float | None = None
    only_changes: bool = False
    batch_timeout_ms: float | None = None  # ms: `run --batch-timeout` (several sources batched together)
    logrotate: bool = True  # install the logrotate rule
    dry_run: bool = False  # say what would be done; change nothing
    print_only: bool = False  # return the unit and logrotate texts; install nothing
    extra: tuple[str, ...] = ()  # more `mlic-edge run` options


@dataclass(frozen=True)
class UninstallRequest:
    name: str = ServiceSpec.name
    dry_run: bool = False


def install_service(run: RunDir, request: ServiceRequest = ServiceRequest(),
                    on_step: OnStep | None = None) -> dict[str, Any]:
    """Install and start the service running ``run`` (needs root): its unit in /etc/systemd/system and its rule in
    /etc/logrotate.d. Several sources run as one `run` batching them, each stream's records in its own file. Returns
    the unit's name, both texts, the predictions file (several sources: its ``{stream}`` template) and the steps
    taken (none with ``print_only``; ``dry_run``: the steps it would take)."""
    from mlic_edge.commands.predict import PredictRequest, check_outputs
    from mlic_edge.runtime.deployment.systemd import install, render_logrotate, render_unit

    spec = ServiceSpec(run_dir=run.path, out_dir=request.out_dir, name=request.name, sources=request.sources,
                       backend=request.backend, precision=request.precision,
                       user=request.user or os.environ.get("SUDO_USER"), stats_every=request.stats_every,
                       rotate_mb=request.rotate_mb, keep=request.keep, threshold=request.threshold,
                       batch_timeout_ms=request.batch_timeout_ms, thresholds=request.thresholds,
                       smoothing=request.smoothing, only_changes=request.only_changes, extra_args=list(request.extra))
    check_outputs(RunDir(spec.run_dir), spec.streams(), PredictRequest(thresholds=spec.thresholds),
                  {"--out-dir": spec.jsonl_path})  # the service's `run` would refuse it at every start
    result: dict[str, Any] = {"unit_name": spec.unit_name, "unit": render_unit(spec),
                              "logrotate": render_logrotate(spec), "predictions": str(spec.jsonl_path), "steps": []}
    if not request.print_only:
        result["steps"] = install(spec, logrotate_dir=LOGROTATE_DIR if request.logrotate else None,
                                  dry_run=request.dry_run, on_step=on_step)
    return result


def uninstall_service(request: UninstallRequest = UninstallRequest(), on_step: OnStep | None = None) -> list[str]:
    """Stop and remove the service (its predictions are kept); the steps taken."""
    from mlic_edge.runtime.deployment.systemd import uninstall

    return uninstall(request.name, dry_run=request.dry_run, on_step=on_step)


__all__ = ["ServiceRequest", "UninstallRequest", "install_service", "uninstall_service"]
