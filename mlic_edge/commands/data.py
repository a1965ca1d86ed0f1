"""`mlic-edge data stats` as a library: what a dataset holds (images, labels per image, per-class counts with
head/middle/tail groups) and its label co-occurrence heatmap. ``data synth`` is ``synth``
(mlic_edge/data/synth.py generates)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlic_edge.data.synth import SynthConfig, generate


@dataclass(frozen=True)
class StatsRequest:
    split: str | None = None  # default: the train split
    heatmap: Path | None = None  # default: beside the data, <data>/cooccurrence_<split>.png


def data_stats(data: str, request: StatsRequest = StatsRequest()) -> dict[str, Any]:
    """The statistics of ``data`` (a path or voc:/coco:/csv: spec), with ``heatmap``: the co-occurrence PNG written."""
    from mlic_edge.data import dataset_files, open_dataset
    from mlic_edge.data.stats import dataset_stats, save_cooccurrence_heatmap
    from mlic_edge.errors import MlicError
    from mlic_edge.io import refuse_output_onto_inputs

    dataset = open_dataset(data, role="train", split=request.split)
    target = request.heatmap or (dataset.root / f"cooccurrence_{dataset.split}.png")
    refuse_output_onto_inputs({"--heatmap": target}, dataset_files(dataset))
    stats = dataset_stats(dataset)
    try:
        stats["heatmap"] = str(save_cooccurrence_heatmap(dataset, target))
    except OSError as error:
        raise MlicError(f"cannot write the heatmap {target}: {error.strerror}", hint="pass --heatmap PATH") from error
    return stats


def synth(out: Path, config: SynthConfig = SynthConfig(),
          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """``mlic-edge data synth``: the synthetic dataset ``config`` describes, written to ``out`` (VOC layout); its
    summary."""
    return generate(out, config, progress=progress)


def stats_table(stats: dict[str, Any]) -> Any:
    """The rich table ``data stats`` prints."""
    from mlic_edge.data.stats import format_stats_table

    return format_stats_table(stats)


__all__ = ["StatsRequest", "SynthConfig", "data_stats", "stats_table", "synth"]
