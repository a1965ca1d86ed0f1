"""The model registry, timm-style: each method registers a builder under a fixed name."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from mlic_edge.errors import MlicError
from mlic_edge.models.recipe import Recipe, recipes_of


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    paper: str
    default_backbone: str
    default_img_size: int
    summary: str
    needs_label_graph: bool = False
    """The builder takes ``label_graph=LabelGraph`` (word vectors + co-occurrence of the training split)."""
    recipes: dict[str, Recipe] | None = None
    """How to train it, by name (mlic_edge/models/recipe.py): ``paper`` and ``quick``."""


_MODELS: dict[str, ModelEntry] = {}


def register_model(*, name: str, paper: str, default_backbone: str, default_img_size: int, recipe: Recipe,
                   needs_label_graph: bool = False, quick: Recipe | None = None) -> Callable:
    """Class or function decorator: ``builder(num_classes, backbone, pretrained, pretrained_file,
    [label_graph,] **hyperparameters) -> MultiLabelModel``.

    ``recipe``: how the paper trains it (``--recipe paper``, the default); ``quick``: the shared ``QUICK`` unless the
    model needs its own (``QUICK.with_changes(...)``, saying why in its ``source``).
    A builder with ``needs_label_graph`` gets ``label_graph=None`` when rebuilt from a checkpoint: it must then
    allocate its label buffers from its hyperparameters and let ``load_state_dict`` fill them.
    """

    def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        summary = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        _MODELS[name] = ModelEntry(name, builder, paper, default_backbone, default_img_size, summary,
                                   needs_label_graph, recipes_of(recipe, quick))
        return builder

    return decorate


def _load_zoo() -> None:
    # Importing the package runs every method file's @register_model.
    import mlic_edge.models.zoo  # noqa: F401


def list_models() -> list[ModelEntry]:
    _load_zoo()
    return sorted(_MODELS.values(), key=lambda entry: entry.name)


def get_model_entry(name: str) -> ModelEntry:
    _load_zoo()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MlicError(f"unknown model {name!r}", hint=f"{hint}available: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def create_model(
    name: str,
    num_classes: int,
    backbone: str | None = None,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    label_graph: Any = None,
    **hyperparameters: Any,
):
    """Build a registered model; ``backbone`` defaults to the method's paper default."""
    entry = get_model_entry(name)
    options = model_options(name)
    unknown = sorted(set(hyperparameters) - set(options))
    if unknown:
        listed = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise MlicError(f"unknown option {unknown[0]} for model {name!r}", hint=f"valid options (defaults): {listed}")
    if entry.needs_label_graph:
        hyperparameters["label_graph"] = label_graph
    try:
        return entry.builder(
            num_classes=num_classes,
            backbone=backbone or entry.default_backbone,
            pretrained=pretrained,
            pretrained_file=pretrained_file,
            **hyperparameters,
        )
    except ValueError as error:  # a hyperparameter out of range, said by the method's own check
        raise MlicError(f"model {name!r}: {error}", hint="check --model-kwargs") from error


_BUILDER_ARGUMENTS = {"self", "num_classes", "backbone", "pretrained", "pretrained_file", "label_graph"}


def model_options(name: str) -> dict[str, Any]:
    """The method's hyperparameters and their defaults, read from its builder's signature."""
    import inspect

    builder = get_model_entry(name).builder
    signature = inspect.signature(builder.__init__ if inspect.isclass(builder) else builder)
    return {key: param.default for key, param in signature.parameters.items()
            if key not in _BUILDER_ARGUMENTS and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)}
