"""`mlic-edge export triton` and `export deepstream` as a library: serving configurations of a run's model
(runtime/deployment/serving_configs.py writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlic_edge.rundir import RunDir
from mlic_edge.spec import DEFAULT_PRECISION, DEFAULT_THRESHOLD


@dataclass(frozen=True)
class TritonRequest:
    precision: str = DEFAULT_PRECISION
    platform: str = "onnx"  # onnx (ONNX Runtime backend) | tensorrt (the engine built for the serving GPU)
    name: str | None = None  # the model's name; default RUN_PRECISION_PLATFORM
    max_batch: int | None = None  # max_batch_size; default 8, or --streams if more (tensorrt: the engine's profile max)
    preferred: tuple[int, ...] | None = None  # dynamic batching's preferred sizes; default --streams, one stream 4,8
    streams: int = 1  # sources sending a frame each (mlic-edge run SRC SRC ...): the batch to form
    batch_timeout_ms: float = 0.0  # ms a request waits for others: max_queue_delay_microseconds (0: what queued)
    instances: int = 1
    instance_kind: str = "gpu"  # gpu | cpu (onnx only): instance_group kind
    engine: Path | None = None  # default: the run's, by precision


@dataclass(frozen=True)
class DeepStreamRequest:
    precision: str = DEFAULT_PRECISION
    mode: str = "secondary"  # secondary (on a detector's objects) | primary (whole frames)
    engine: Path | None = None  # also point nvinfer at this engine
    gie_id: int = 2  # gie-unique-id
    operate_on_gie_id: int = 1  # the detector whose objects are classified
    batch_size: int | None = None  # nvinfer batch-size; default --streams (secondary: objects per batch)
    streams: int = 1  # sources the muxer batches: nvstreammux and (primary) nvinfer batch-size
    batch_timeout_ms: float = 0.0  # ms: nvstreammux batched-push-timeout (0: DeepStream samples' 40 ms; see the file)
    threshold: float = DEFAULT_THRESHOLD  # classifier-threshold


def export_triton(run: RunDir, out: Path, request: TritonRequest = TritonRequest()) -> Path:
    """A Triton model repository under ``out`` (config.pbtxt, the ONNX or engine, labels); returns the model's
    folder, ``out/NAME``."""
    from mlic_edge.runtime.deployment.serving_configs import write_triton_repository

    return write_triton_repository(run, Path(out), precision=request.precision, platform=request.platform,
                                   model_name=request.name, max_batch_size=request.max_batch,
                                   preferred_batch_sizes=request.preferred, streams=request.streams,
                                   batch_timeout_ms=request.batch_timeout_ms, instances=request.instances,
                                   device=request.instance_kind, engine=request.engine)


def export_deepstream(run: RunDir, out: Path, request: DeepStreamRequest = DeepStreamRequest()) -> Path:
    """A DeepStream nvinfer configuration (with labels and the model) and the deepstream-app groups that run it on
    ``request.streams`` sources (nvstreammux, the GIE) in ``out``; returns the nvinfer config file."""
    from mlic_edge.runtime.deployment.serving_configs import write_deepstream_config

    return write_deepstream_config(run, Path(out), precision=request.precision, mode=request.mode,
                                   engine=request.engine, gie_unique_id=request.gie_id,
                                   operate_on_gie_id=request.operate_on_gie_id, batch_size=request.batch_size,
                                   streams=request.streams, batch_timeout_ms=request.batch_timeout_ms,
                                   classifier_threshold=request.threshold)


def deepstream_app_name(mode: str) -> str:
    """The deepstream-app file written beside the nvinfer config (its muxer and GIE groups)."""
    from mlic_edge.runtime.deployment.serving_configs import deepstream_app_name as name

    return name(mode)


__all__ = ["DeepStreamRequest", "TritonRequest", "deepstream_app_name", "export_deepstream", "export_triton"]
