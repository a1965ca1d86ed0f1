"""`mlic-edge export triton` and `export deepstream` as a library: serving configurations of a run's model
(runtime/deployment/serving_configs.py writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlic_edge.rundir import RunDir


@dataclass(frozen=True)
class TritonRequest:
    precision: str = "fp32"
    platform: str = "onnx"  # onnx (ONNX Runtime backend) | tensorrt (the engine built for the serving GPU)
    name: str | None = None  # the model's name; default RUN_PRECISION_PLATFORM
    max_batch: int = 8  # max_batch_size (tensorrt: the engine's profile max)
    preferred: tuple[int, ...] = (4, 8)  # dynamic batching's preferred sizes
    queue_delay_us: int = 100  # dynamic batching's max queue delay
    instances: int = 1
    instance_kind: str = "gpu"  # gpu | cpu (onnx only): instance_group kind
    engine: Path | None = None  # default: the run's, by precision


@dataclass(frozen=True)
class DeepStreamRequest:
    precision: str = "fp32"
    mode: str = "secondary"  # secondary (on a detector's objects) | primary (whole frames)
    engine: Path | None = None  # also point nvinfer at this engine
    gie_id: int = 2  # gie-unique-id
    operate_on_gie_id: int = 1  # the detector whose objects are classified
    batch_size: int = 1
    threshold: float = 0.5  # classifier-threshold


def export_triton(run: RunDir, out: Path, request: TritonRequest = TritonRequest()) -> Path:
    """A Triton model repository under ``out`` (config.pbtxt, the ONNX or engine, labels); returns the model's
    folder, ``out/NAME``."""
    from mlic_edge.runtime.deployment.serving_configs import write_triton_repository

    return write_triton_repository(run, Path(out), precision=request.precision, platform=request.platform,
                                   model_name=request.name, max_batch_size=request.max_batch,
                                   preferred_batch_sizes=request.preferred, max_queue_delay_us=request.queue_delay_us,
                                   instances=request.instances, device=request.instance_kind, engine=request.engine)


def export_deepstream(run: RunDir, out: Path, request: DeepStreamRequest = DeepStreamRequest()) -> Path:
    """A DeepStream nvinfer configuration (with labels and the model) in ``out``; returns the config file."""
    from mlic_edge.runtime.deployment.serving_configs import write_deepstream_config

    return write_deepstream_config(run, Path(out), precision=request.precision, mode=request.mode,
                                   engine=request.engine, gie_unique_id=request.gie_id,
                                   operate_on_gie_id=request.operate_on_gie_id, batch_size=request.batch_size,
                                   classifier_threshold=request.threshold)


__all__ = ["DeepStreamRequest", "TritonRequest", "export_deepstream", "export_triton"]
