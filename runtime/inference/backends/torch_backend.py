"""PyTorch: the reference. The one runtime module allowed to import torch, and only when it is chosen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlic_edge.errors import BackendError
from mlic_edge.rundir import RunDir
from mlic_edge.runtime.inference.backends.base import Backend, BackendInfo
from mlic_edge.runtime.inference.backends.registry import OpenOptions, package_installed, register_backend

if TYPE_CHECKING:  # the registry imports this module to list it (every --help): numpy loads when a backend opens
    import numpy as np


class TorchBackend(Backend):
    def __init__(self, checkpoint: Path, device: str = "cpu",
                 normalization: tuple[list[float], list[float]] | None = None, threads: int | None = None) -> None:
        """``normalization`` (mean, std) lets the reference take the uint8 frames a folded-input run feeds;
        ``threads``: PyTorch's intra-op threads (process-wide: ``torch.set_num_threads``)."""
        try:
            import torch

            from mlic_edge.models.checkpoint import load_model
        except ImportError as error:
            raise BackendError("the torch backend needs PyTorch and timm",
                               hint="install mlic-edge with its [train] extra (PyTorch: pip install '.[train]' in "
                                    "the source tree), or use --backend onnxruntime") from error
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("--device cuda asked for, but PyTorch sees no CUDA GPU", hint="use --device cpu")
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.graph = load_model(checkpoint).for_export().to(self.device)
        self.normalization = normalization
        self.info = BackendInfo(backend="torch", device=device, precision="fp32", version=torch.__version__,
                                details={"checkpoint": str(checkpoint)})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        if batch.dtype == np.uint8:  # resized BGR frames of a run exported with --uint8-input
            from mlic_edge.data.images import normalize

            if self.normalization is None:
                raise BackendError("uint8 frames given to the torch reference without mean/std",
                                   hint="open it through create_backend, which reads them from run.json")
            batch = np.stack([normalize(frame, *self.normalization) for frame in batch])
        with self._torch.no_grad():
            return self.graph(self._torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)).cpu().numpy()

    def close(self) -> None:
        self.graph = None


def _parity_graphs(run: RunDir, precision: str, asked: bool) -> list[str]:
    """fp32 when asked for by name; never by default, as it made the reference parity compares with."""
    return ["auto"] if asked and precision == "fp32" else []


@register_backend(name="torch", title="PyTorch", installed=package_installed("torch"), extras=("train",),
                  description="the checkpoint on PyTorch, fp32: the reference parity compares with",
                  made_from_onnx=False, parity_graphs=_parity_graphs)
def open_torch(run: RunDir, precision: str, device: str, options: OpenOptions) -> TorchBackend:
    """The run's checkpoint, fp32 only, on CUDA with --device cuda, else the CPU."""
    if precision != "fp32":
        raise BackendError("the torch backend is the fp32 reference", hint="use --precision fp32")
    spec = run.spec()
    device = "cuda" if device == "cuda" else "cpu"
    budget = options.thread_budget(device)
    backend = TorchBackend(run.require_checkpoint(), device=device,
                           normalization=(spec.mean, spec.std), threads=budget.inference)
    backend.thread_budget = budget
    return backend
