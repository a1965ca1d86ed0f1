"""Options shared by the commands: one name, one meaning, declared once (the choices come from mlic_edge.spec and,
for backends, from the backend registry).

``--batch`` is the images per inference everywhere; the engine's batch range is ``--batch-range`` (build) and the
sizes bench sweeps ``--batches`` (both still accept ``--batch`` as the name they had before).
"""

from __future__ import annotations

from typing import Any

import typer

from mlic_edge.commands import backends as backend_registry
from mlic_edge.spec import DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION, PRECISIONS

RunOpt = typer.Option(None, "--run", "-r", help="Run directory (default: runs/MODEL).", show_default=False)
ModelNameOpt = typer.Option(None, "--model", "-m", help="Model name; --model NAME means --run runs/NAME.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
DataOpt = typer.Option(None, "--data", "-d", help="Dataset: a path (format detected) or voc:PATH, coco:PATH, "
                                                   "csv:PATH. Default: the run's dataset.")
BackendOpt = typer.Option(DEFAULT_BACKEND, "--backend", "-b", help="auto (the first of "
                          f"{', '.join(backend_registry.AUTO_ORDER)} that can run the run here; it says which) or "
                          f"{', '.join(backend_registry.BACKENDS[1:])}.")
BuildBackendOpt = typer.Option(DEFAULT_BACKEND, "--backend", "-b", help="auto (TensorRT if installed, else ONNX Runtime) or "
                               f"{', '.join(backend_registry.BUILD_BACKENDS[1:])} (onnxruntime's artefact is the "
                               "precision's ONNX; int8 adds the graph ONNX Runtime's CPU kernels fuse, in the form "
                               "timed fastest here).")
DeviceOpt = typer.Option(DEFAULT_DEVICE, "--device", help="auto, cpu or cuda.")
Fp16FallbackOpt = typer.Option(False, "--fp16-fallback", help="fp16 asked of a CPU backend without fp16 "
                               "arithmetic (ONNX Runtime on x86): run the fp32 graph instead, saying so.")
TrustPickleOpt = typer.Option(False, "--trust-pickle", help="Fully unpickle the pickles this command reads, which "
                              "can run code from them: only for files from a source you trust (without it, a pickle "
                              "of anything but plain data and numpy arrays is refused).")
ThreadsOpt = typer.Option(None, "--threads", help="Inference threads (the feed gets the other cores); default: "
                          "from the cores present and the backend; 0: the libraries' own defaults.")


def precision_option(default: str = DEFAULT_PRECISION, what: str = "the ONNX file it reads") -> Any:
    return typer.Option(default, "--precision", "-p", help=f"{', '.join(PRECISIONS)} ({what}).")


PrecisionOpt = precision_option()
BatchRangeOpt = typer.Option(None, "--batch-range", "--batch", help="Engine batch range MIN,OPT,MAX (default "
                                                                     "1,1,8; with --dla-core one size, N,N,N, default "
                                                                     "1,1,1).")
BatchesOpt = typer.Option("1", "--batches", "--batch", help="Batch sizes to measure, comma-separated (e.g. 1,4,8).")


def streams_option(default: int, what: str) -> Any:
    """``--streams N``: the sources a serving config is written for, as ``mlic-edge run SRC [SRC ...]`` batches them."""
    return typer.Option(default, "--streams", help=f"Streams served, a frame each (as `mlic-edge run SRC SRC ...`): "
                                                   f"{what}.")


def batch_timeout_option(default: float | None, what: str) -> Any:
    """``--batch-timeout MS``: how long a batch waits for the other streams' frames (``run``'s, and what it maps to)."""
    return typer.Option(default, "--batch-timeout", metavar="MS", show_default=default is not None,
                        help=f"Milliseconds a batch waits for the other streams' frames after its first: {what}.")
