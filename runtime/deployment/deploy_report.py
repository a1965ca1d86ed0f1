"""The deploy report of a run unpacked from a bundle (``reports/deploy.json`` and ``deploy.md``): what was verified
where. For every graph the bundle shipped: its sha256 as shipped and as it is now, the workstation's parity on those
bytes, the device's parity (``mlic-edge parity``) and whether it scored the same bytes, the engines built from it
(TensorRT version, GPU, DLA placement) and the latency ``mlic-edge bench`` measured.

``build``, ``parity`` and ``bench`` rewrite it after their own report; ``doctor --run`` shows its verdict. It reads
only reports and manifests, never runs anything: a figure that was not measured is absent, not guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlic_edge import __version__
from mlic_edge.export.lineage import file_sha256
from mlic_edge.io import atomic_files, json_text, read_json
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.deployment.bundle import bundle_manifest

DEPLOY_JSON = "deploy.json"
DEPLOY_MD = "deploy.md"
VERIFIED, INCOMPLETE, FAILED = "verified", "incomplete", "failed"


def deploy_report(run: RunDir) -> dict[str, Any] | None:
    """The report as the run's files say now; None for a run that was not unpacked from a bundle."""
    manifest = bundle_manifest(run)
    if manifest is None:
        return None
    made_here = run.spec().onnx_sha256
    graphs = [_graph_state(run, name, record, manifest["files"].get(name, {}), made_here.get(name))
              for name, record in (manifest.get("graphs") or {}).items()]
    by_sha = {graph["sha256_shipped"]: graph["file"] for graph in graphs}
    made_here_by_sha = {graph["sha256_now"]: graph["file"] for graph in graphs if graph["made_here"]}
    parity = _read_report(run, "parity.json")
    device_parity = [{**_device_result(result, by_sha),
                      "made_here_graph": made_here_by_sha.get((result.get("onnx") or {}).get("sha256"))}
                     for result in (parity or {}).get("results", [])]
    engines = [_engine_state(path, by_sha) for path in run.engine_manifests()]
    report = {
        "bundle": {key: manifest.get(key) for key in ("name", "format", "mlic_edge", "created", "model", "backbone")},
        "device": {"mlic_edge": __version__, "parity_machine": (parity or {}).get("machine"),
                   "parity_created": (parity or {}).get("created")},
        "graphs": graphs,
        "device_parity": device_parity,
        "engines": engines,
        "latency": _latency(run, by_sha),
    }
    report["status"], report["problems"] = _verdict(report)
    return report


def write_deploy_report(run: RunDir) -> dict[str, Any] | None:
    """Write reports/deploy.json and deploy.md together (nothing for a run made on this machine)."""
    report = deploy_report(run)
    if report is None:
        return None
    with atomic_files() as staged:
        staged.path(run.reports / DEPLOY_JSON).write_text(json_text(report))
        staged.path(run.reports / DEPLOY_MD).write_text(deploy_markdown(report))
    return report


def beside_workstation(run: RunDir, results: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Each device parity result beside the workstation's on the same graph (None off a bundle's run): the graph
    the bundle shipped under the result's file name, whether the device scored those very bytes, and the figures
    the bundle recorded for them."""
    manifest = bundle_manifest(run)
    if manifest is None:
        return None
    graphs = manifest.get("graphs") or {}
    rows = []
    for result in results:
        scored = result.get("onnx") or {}
        name = scored.get("file")
        record = graphs.get(name) or {}
        shipped_sha = (manifest["files"].get(name) or {}).get("sha256")
        same = [ws for ws in record.get("workstation_parity") or []
                if ws.get("precision") == result["precision"] and ws.get("graph") == result.get("graph")]
        rows.append({"backend": result["backend"], "device": result["device"], "precision": result["precision"],
                     "graph": result.get("graph"), "onnx": name, "same_bytes": bool(shipped_sha) and
                     scored.get("sha256") == shipped_sha,
                     "device_result": {key: result.get(key) for key in ("delta_mAP_points", "labelset_agreement",
                                                                         "max_abs_diff", "passed")},
                     "workstation": same or record.get("workstation_parity") or []})
    return rows


def _read_report(run: RunDir, name: str) -> dict[str, Any] | None:
    path = run.reports / name
    try:
        report = read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged report is a missing measurement here; the command that writes it says more
    return report if isinstance(report, dict) else None


def _graph_state(run: RunDir, name: str, record: dict[str, Any], shipped: dict[str, Any],
                 recorded_here: str | None) -> dict[str, Any]:
    path = run.path / name
    now = file_sha256(path) if path.is_file() else None
    expected = shipped.get("sha256") or record.get("sha256")
    identical = now is not None and now == expected
    return {"file": name, "precision": record.get("precision"), "graph": record.get("graph"),
            "sha256_shipped": expected, "sha256_now": now, "identical": identical,
            "made_here": not identical and now is not None and now == recorded_here,
            "workstation_parity": record.get("workstation_parity") or []}


def _device_result(result: dict[str, Any], shipped_by_sha: dict[str, str]) -> dict[str, Any]:
    scored = result.get("onnx") or {}
    return {"backend": result.get("backend"), "device": result.get("device"), "version": result.get("version"),
            "precision": result.get("precision"), "graph": result.get("graph"), "onnx": scored,
            "shipped_graph": shipped_by_sha.get(scored.get("sha256")),
            **{key: result.get(key) for key in ("mAP", "delta_mAP_points", "labelset_agreement", "max_abs_diff",
                                                "images", "passed", "failures")}}


def _engine_state(manifest_path: Path, shipped_by_sha: dict[str, str]) -> dict[str, Any]:
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError) as error:
        return {"manifest": manifest_path.name, "error": f"unreadable ({error})"}
    source = manifest.get("onnx") or {}
    return {"engine": f"{manifest_path.parent.name}/{manifest.get('engine')}", "backend": manifest.get("backend"),
            "tensorrt_version": manifest.get("tensorrt_version"), "precision": manifest.get("precision"),
            "gpu": manifest.get("gpu"), "device": manifest.get("device", "gpu"),
            "dla_layers": manifest.get("dla_layers"), "batch": manifest.get("batch"), "onnx": source,
            "shipped_graph": shipped_by_sha.get(source.get("sha256"))}


def _latency(run: RunDir, shipped_by_sha: dict[str, str]) -> dict[str, Any] | None:
    bench = _read_report(run, "bench.json")
    if not bench:
        return None
    scored = bench.get("onnx") or {}
    return {"backend": bench.get("backend"), "onnx": scored, "shipped_graph": shipped_by_sha.get(scored.get("sha256")),
            "results": [{"batch": row["batch"],
                         "backend_alone_p50_ms": row["backend_alone"]["latency"]["p50_ms"],
                         "backend_alone_images_per_s": row["backend_alone"]["images_per_s"],
                         "pipeline_images_per_s": row["pipeline"]["images_per_s"]}
                        for row in bench.get("results", [])]}


def _verdict(report: dict[str, Any]) -> tuple[str, list[str]]:
    """``verified`` when every shipped graph is byte-identical, the device's parity ran on shipped graphs and
    passed, and every engine was built from a shipped graph; ``failed`` on any contradiction; else ``incomplete``
    (something not measured yet), with one sentence per problem."""
    failed, missing = [], []
    for graph in report["graphs"]:
        if graph["made_here"]:
            missing.append(f"{graph['file']} was made on this device (--requantize), not shipped: only this device's "
                           "parity vouches for it")
        elif not graph["identical"]:
            failed.append(f"{graph['file']} is not the graph the bundle shipped"
                          + (" (missing)" if graph["sha256_now"] is None else " (its bytes changed)"))
    for result in report["device_parity"]:
        what = f"{result['backend']} {result['precision']}" + (f" ({result['graph']} graph)" if result["graph"] else "")
        if result["shipped_graph"] is None and result["made_here_graph"] is None:
            failed.append(f"device parity of {what} scored a graph the bundle did not ship")
        elif not result["passed"]:
            failed.append(f"device parity of {what} failed: {'; '.join(result.get('failures') or [])}")
    for engine in report["engines"]:
        if engine.get("error") or engine.get("shipped_graph") is None:
            failed.append(f"engine {engine.get('engine', engine.get('manifest'))} was not built from a shipped graph"
                          + (f" ({engine['error']})" if engine.get("error") else ""))
    if not report["device_parity"]:
        missing.append("parity has not run on this device: mlic-edge parity --run RUN")
    else:
        checked = {result["shipped_graph"] or result["made_here_graph"] for result in report["device_parity"]}
        for engine in report["engines"]:
            if engine.get("shipped_graph") and not any(r["backend"] == engine["backend"] and
                                                      r["precision"] == engine["precision"]
                                                      for r in report["device_parity"]):
                missing.append(f"engine {engine['engine']} has no device parity yet")
        missing += [f"{graph['file']} has no device parity" for graph in report["graphs"]
                    if graph["file"] not in checked and (graph["identical"] or graph["made_here"])]
    if report["latency"] is None:
        missing.append("no latency measured here: mlic-edge bench --run RUN")
    if failed:
        return FAILED, failed + missing
    return (INCOMPLETE, missing) if missing else (VERIFIED, [])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def deploy_markdown(report: dict[str, Any]) -> str:
    bundle = report["bundle"]
    lines = [f"# Deploy report: {bundle['name']}", "",
             f"**{report['status']}**" + (": " + "; ".join(report["problems"]) if report["problems"] else
                                          ": every shipped graph is byte-identical, parity on this device passed on "
                                          "them, and every engine was built from them."), "",
             f"Bundle packed {bundle.get('created')} by mlic-edge {bundle.get('mlic_edge')} (format "
             f"{bundle.get('format')}); this device runs mlic-edge {report['device']['mlic_edge']}"
             + (f", parity measured {report['device']['parity_created']} on {report['device']['parity_machine']}"
                if report["device"]["parity_created"] else "") + ".", "",
             "## Graphs: workstation against this device", "",
             "ΔmAP in points against the PyTorch reference; same: images with the reference's label set."
             + "".join(sorted({f" Workstation parity measured {ws.get('created')} on {ws.get('machine')}."
                               for graph in report["graphs"] for ws in graph["workstation_parity"]})), "",
             "| graph | sha256 shipped | identical here | workstation | ws ΔmAP | ws same | device | device ΔmAP | "
             "device same | device result |", "|---|---|---|---|---|---|---|---|---|---|"]
    for graph in report["graphs"]:
        workstation = graph["workstation_parity"] or [{}]
        device = [r for r in report["device_parity"] if r["shipped_graph"] == graph["file"]] or [{}]
        for ws, dev in zip(workstation + [{}] * (len(device) - len(workstation)),
                           device + [{}] * (len(workstation) - len(device))):
            lines.append(
                f"| {graph['file']} | {graph['sha256_shipped'][:12]}… | {'yes' if graph['identical'] else '**no**'} | "
                + (f"{ws['backend']}/{ws['device']}" if ws else "not measured") + f" | "
                f"{_delta(ws.get('delta_mAP_points'))} | {_pct(ws.get('labelset_agreement'))} | "
                + (f"{dev['backend']}/{dev['device']}" if dev else "not measured") + f" | "
                f"{_delta(dev.get('delta_mAP_points'))} | {_pct(dev.get('labelset_agreement'))} | "
                + ("-" if not dev else "PASS" if dev["passed"] else "FAIL") + " |")
    strays = [r for r in report["device_parity"] if r["shipped_graph"] is None]
    for result in strays:
        lines.append(f"\nDevice parity of {result['backend']} {result['precision']} scored "
                     f"{(result['onnx'] or {}).get('file')}, which the bundle did not ship.")
    lines += ["", "## Engines", ""]
    if not report["engines"]:
        lines.append("None built on this device.")
    else:
        lines += ["| engine | TensorRT | GPU | placement | built from | shipped graph |", "|---|---|---|---|---|---|"]
        for engine in report["engines"]:
            gpu = engine.get("gpu") or {}
            dla = engine.get("dla_layers")
            placement = engine.get("device", "gpu") + (f" ({dla['dla']} layers on DLA, {dla['gpu']} on the GPU)"
                                                       if dla else "")
            lines.append(f"| {engine.get('engine')} | {engine.get('backend')} {engine.get('tensorrt_version')} | "
                         f"{gpu.get('name') or 'none (ahead of time)'} | {placement} | "
                         f"{(engine.get('onnx') or {}).get('file')} | {'yes' if engine.get('shipped_graph') else '**no**'} |")
    lines += ["", "## Latency (mlic-edge bench)", ""]
    latency = report["latency"]
    if latency is None:
        lines.append("Not measured on this device.")
    else:
        ran = latency["backend"] or {}
        lines += [f"{ran.get('backend')} {ran.get('precision')} on {ran.get('device')}, graph "
                  f"{(latency['onnx'] or {}).get('file')} ({'shipped' if latency['shipped_graph'] else 'not shipped'}).",
                  "", "| batch | backend alone p50 ms | backend alone img/s | pipeline img/s |", "|---|---|---|---|"]
        lines += [f"| {row['batch']} | {row['backend_alone_p50_ms']:.2f} | {row['backend_alone_images_per_s']:.1f} | "
                  f"{row['pipeline_images_per_s']:.1f} |" for row in latency["results"]]
    return "\n".join(lines) + "\n"
