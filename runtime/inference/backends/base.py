"""The one small interface every inference backend implements (docs/design.md, "Backends")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # listing the backends (every --help) loads no numpy
    import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    """What ran — every report carries this."""

    backend: str
    device: str
    precision: str
    version: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.backend} {self.version} on {self.device}, {self.precision}"


class Backend(ABC):
    """Load once, then ``infer`` float32 NCHW batches into (N, C) sigmoid scores. Resources are released by
    ``close`` (or the ``with`` block), in one place."""

    info: BackendInfo
    thread_budget: Any = None
    """The ``ThreadBudget`` it was opened with (runtime/inference/threads.py); the pipeline gives the feed the rest."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release sessions, engines and device memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
