"""`mlic-edge models` as a library: every model in the zoo with its paper, defaults, parameters and GFLOPs (builds
each model, so it needs PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlic_edge.spec import require_at_least

Progress = Callable[[str, int, int], None]  # (model being built, done, total)


@dataclass(frozen=True)
class ModelsRequest:
    classes: int = 80  # the label count the figures are computed for (COCO's)
    flops: bool = True  # count forward FLOPs at each model's default size


def list_zoo(request: ModelsRequest = ModelsRequest(), progress: Progress | None = None) -> list[dict[str, Any]]:
    """One summary per registered model, by name (``mlic_edge.models.summary.summarize``)."""
    require_at_least("--classes", request.classes, 1)
    from mlic_edge.models import list_models
    from mlic_edge.models.summary import summarize

    entries = list_models()
    rows = []
    for done, entry in enumerate(entries):
        if progress:
            progress(entry.name, done, len(entries))
        rows.append(summarize(entry, num_classes=request.classes, count_flops=request.flops))
    return rows


__all__ = ["ModelsRequest", "list_zoo"]
