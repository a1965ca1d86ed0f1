"""`mlic-edge models` as a library: every model in the zoo with its paper, defaults, parameters and GFLOPs.

Counting builds each model (PyTorch, a minute or two for the zoo on a laptop CPU), so listings are kept under a key of
what they depend on (the zoo's source, the timm and PyTorch versions, the label count) and read without importing
PyTorch: the package ships the listing of its own source at the default label count (``PACKAGED_LISTING``, written by
``python -m mlic_edge.commands.models``; a test fails when it no longer matches the source), and others are kept in
the user's cache (``$XDG_CACHE_HOME/mlic-edge/models.json``)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mlic_edge.errors import MlicError
from mlic_edge.io import json_text, read_json, write_json
from mlic_edge.spec import require_at_least

Progress = Callable[[str, int, int], None]  # (model being built, done, total)

FLOP_FIELDS = ("GFLOPs", "GMACs")
CACHE_DIR_VARIABLE = "MLIC_EDGE_CACHE_DIR"  # overrides $XDG_CACHE_HOME/mlic-edge (tests keep theirs apart)
CACHED_LISTINGS = 8  # label counts and versions kept side by side; older ones are dropped
ZOO_SOURCE = Path(__file__).resolve().parents[1] / "models"  # what the counts depend on: zoo, layers, recipes, registry
PACKAGED_LISTING = ZOO_SOURCE / "listing.json"


@dataclass(frozen=True)
class ModelsRequest:
    classes: int = 80  # the label count the figures are computed for (COCO's)
    flops: bool = True  # count forward FLOPs at each model's default size


def list_zoo(request: ModelsRequest = ModelsRequest(), progress: Progress | None = None) -> list[dict[str, Any]]:
    """One summary per registered model, by name (``mlic_edge.models.summary.summarize``), from the cache where it
    holds them for this source, these versions and this label count."""
    require_at_least("--classes", request.classes, 1)
    rows = listed_zoo(request)
    if rows is None:
        rows = json.loads(json_text(_count_zoo(request, progress)))  # as the cache gives them back: JSON values
        _user_cache(request.classes).write(rows, with_flops=request.flops)
    return rows if request.flops else [_without_flops(row) for row in rows]


def listed_zoo(request: ModelsRequest = ModelsRequest()) -> list[dict[str, Any]] | None:
    """The zoo's rows where the packaged listing or the user's cache holds them for this source, these versions
    and this label count; None where they would have to be counted (nothing is built here)."""
    key = listing_key(request.classes)
    return (ListingCache(PACKAGED_LISTING, key).read(with_flops=request.flops)
            or _user_cache(request.classes).read(with_flops=request.flops))


def _user_cache(classes: int) -> "ListingCache":
    return ListingCache(cache_dir() / "models.json", listing_key(classes))


def _count_zoo(request: ModelsRequest, progress: Progress | None) -> list[dict[str, Any]]:
    from mlic_edge.models import list_models
    from mlic_edge.models.summary import summarize

    entries = list_models()
    rows = []
    for done, entry in enumerate(entries):
        if progress:
            progress(entry.name, done, len(entries))
        rows.append(summarize(entry, num_classes=request.classes, count_flops=request.flops))
    return rows


def _without_flops(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in FLOP_FIELDS}


def cache_dir() -> Path:
    """Where mlic-edge keeps what it can compute again: ``$MLIC_EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlic-edge``,
    else ``~/.cache/mlic-edge``."""
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlic-edge"


def listing_key(classes: int) -> dict[str, Any]:
    """What a listing depends on, read without importing PyTorch: the source of the zoo (``mlic_edge/models``: the
    models, their layers, recipes and the registry, not the importers; an edited checkout counts again), the timm and PyTorch versions,
    the label count."""
    from importlib.metadata import PackageNotFoundError, version

    from mlic_edge import __version__

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    source = hashlib.sha256()
    for path in sorted(ZOO_SOURCE.rglob("*.py")):
        if path.parent.name == "official":  # the importers of released checkpoints build no model of the zoo
            continue
        source.update(path.relative_to(ZOO_SOURCE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"mlic_edge": __version__, "source_sha256": source.hexdigest(), "timm": installed("timm"),
            "torch": installed("torch"), "classes": classes}


@dataclass(frozen=True)
class ListingCache:
    """One JSON file of listings, each under its key; a file that cannot be read or written is passed over (the
    listing is then counted again), never an error: the cache only saves time."""

    path: Path
    key: dict[str, Any]

    def read(self, with_flops: bool) -> list[dict[str, Any]] | None:
        try:
            listings = read_json(self.path)["listings"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for listing in listings if isinstance(listings, list) else []:
            if isinstance(listing, dict) and listing.get("key") == self.key and (listing.get("flops") or not with_flops):
                rows = listing.get("rows")
                return rows if isinstance(rows, list) else None
        return None

    def write(self, rows: list[dict[str, Any]], with_flops: bool) -> None:
        try:
            kept = [listing for listing in read_json(self.path)["listings"]
                    if isinstance(listing, dict) and listing.get("key") != self.key]
        except (OSError, ValueError, KeyError, TypeError):
            kept = []
        try:
            listing = {"key": self.key, "flops": with_flops, "rows": rows}
            write_json(self.path, {"listings": [*kept, listing][-CACHED_LISTINGS:]})
        except (OSError, MlicError):  # an unwritable cache (read-only home, full disk) costs time, not the listing
            pass


def write_packaged_listing() -> Path:
    """Count the zoo at the default label count, with FLOPs, into ``PACKAGED_LISTING`` (run after changing a model)."""
    request = ModelsRequest()
    rows = json.loads(json_text(_count_zoo(request, None)))
    write_json(PACKAGED_LISTING, {"listings": [{"key": listing_key(request.classes), "flops": True, "rows": rows}]})
    return PACKAGED_LISTING


__all__ = ["ModelsRequest", "PACKAGED_LISTING", "cache_dir", "list_zoo", "listed_zoo", "listing_key",
           "write_packaged_listing"]


if __name__ == "__main__":
    print(f"wrote {write_packaged_listing()}")
