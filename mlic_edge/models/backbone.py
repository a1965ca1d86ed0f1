"""timm backbones with the errors a user can act on (unknown name, no weights offline, weights of another
architecture), and ImageNet weights found without waiting on a network: a local file, the local Hugging Face or torch
hub cache, or the hub itself once it has answered a quick connection check."""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import timm
import torch.nn as nn

from mlic_edge.data.images import IMAGENET_MEAN, IMAGENET_STD
from mlic_edge.errors import MlicError
from mlic_edge.models.hub import no_weights_hint, refuse_without_weights, why_unavailable
from mlic_edge.models.recipe import WEIGHTS_FILE_FORMATS

SHOWN_KEYS = 3  # mismatching keys named in a refusal


def create_backbone(
    name: str, pretrained: bool = False, pretrained_file: str | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): ``forward`` gives pooled features.

    ``pretrained``: ImageNet weights from the local cache, else downloaded once the hub answers
    (``locate_pretrained_weights``); ``pretrained_file``: from a local file (``WEIGHTS_FILE_FORMATS``), its keys
    mapped by timm as for its own weights (the model's checkpoint filter, the classifier dropped).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for names"
        raise MlicError(f"unknown timm backbone {name!r}", hint=hint)
    if pretrained and not pretrained_file:
        pretrained_file = locate_pretrained_weights(name)
    if pretrained_file:
        return _create_from_file(name, Path(pretrained_file), **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:
        if not pretrained:
            raise
        raise MlicError(f"could not download ImageNet weights for {name!r}: {_first_line(error)}",
                        hint=_no_weights_hint(name)) from error


def locate_pretrained_weights(name: str) -> str | None:
    """Where the ImageNet weights of timm backbone ``name`` come from, decided without a download's retries: the
    path of a copy in the local Hugging Face cache (HF_HOME) or torch hub cache, used with no network; None where the
    hub answered a connection check (timm downloads them). Refused in one line where the hub is off
    (HF_HUB_OFFLINE) or does not answer within ``HUB_CHECK_TIMEOUT_S`` (models/hub.py)."""
    from huggingface_hub import constants

    cfg = _pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None  # timm says that it has no weights for it
    cached = _cached_weights(cfg)
    if cached is not None:
        return cached
    why = why_unavailable(constants.ENDPOINT if cfg.hf_hub_id else cfg.url)
    if why is None:
        return None
    raise refuse_without_weights(name, why, cfg.hf_hub_id)


def _no_weights_hint(name: str) -> str:
    cfg = _pretrained_cfg(name)
    return no_weights_hint(cfg.hf_hub_id if cfg else None)


def _pretrained_cfg(name: str) -> Any:
    """timm's pretrained config of ``name`` (its default tag's without one); None for an unknown tag, which timm
    then refuses itself."""
    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return None


def _cached_weights(cfg: Any) -> str | None:
    """A copy of these weights already on this machine: the Hugging Face cache (timm's source), else the torch hub
    cache timm used before it (a file named as the URL's)."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        # timm's order: the file the config names, else safetensors before the pickle (timm.models._hub)
        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
    if cfg.url:
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def _create_from_file(name: str, path: Path, **kwargs: Any) -> nn.Module:
    """timm's own loading of a local file (``pretrained_cfg_overlay=dict(file=...)``: wrapped state dicts unwrapped,
    the model's checkpoint filter, the ImageNet classifier dropped), refusing weights of another architecture."""
    from safetensors import SafetensorError

    if not path.is_file():
        raise MlicError(f"pretrained weights file {path} does not exist",
                        hint=f"pass --pretrained-file FILE: {WEIGHTS_FILE_FORMATS}")
    try:
        with _refusing_other_architectures(name, path):
            return timm.create_model(name, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except (OSError, RuntimeError, ValueError, AttributeError, KeyError, EOFError, SafetensorError) as error:
        raise MlicError(f"could not load ImageNet weights for {name!r} from {path}: {_first_line(error)}",
                        hint=f"--pretrained-file takes {WEIGHTS_FILE_FORMATS}") from error


@contextlib.contextmanager
def _refusing_other_architectures(name: str, path: Path) -> Iterator[None]:
    """While timm builds the model, check the state dict its loader hands to ``load_state_dict``. That loader drops
    the ImageNet classifier and then loads non-strictly, so a file of another architecture would leave the backbone
    random without a word; build_model_with_cfg calls ``load_pretrained`` through its module, where this wraps it."""
    from timm.models import _builder

    load_pretrained = _builder.load_pretrained

    def load_checked(model: nn.Module, *args: Any, **kwargs: Any) -> None:
        def check(module: nn.Module, state_dict: dict[str, Any], *_: Any) -> None:
            _require_same_weights(module, state_dict, name, path)

        hook = model.register_load_state_dict_pre_hook(check)
        try:
            load_pretrained(model, *args, **kwargs)
        finally:
            hook.remove()

    _builder.load_pretrained = load_checked
    try:
        yield
    finally:
        _builder.load_pretrained = load_pretrained


def _require_same_weights(model: nn.Module, state_dict: dict[str, Any], name: str, path: Path) -> None:
    """Every weight of ``model`` in ``state_dict`` with its shape, and nothing else (a BatchNorm's batch counter may
    be absent: PyTorch starts it at 0)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
    unknown = [key for key in state_dict if key not in expected]
    reshaped = [key for key, tensor in expected.items()
                if key in state_dict and tuple(state_dict[key].shape) != tuple(tensor.shape)]
    found = [f"{what} {_first_keys(keys)}" for what, keys in (("lacks", missing), ("has unknown", unknown),
                                                              ("has other shapes for", reshaped)) if keys]
    if found:
        raise MlicError(f"{path} holds weights of another architecture than backbone {name!r}: it {'; '.join(found)}",
                        hint=f"pass {name}'s own ImageNet weights ({WEIGHTS_FILE_FORMATS}), or --backbone the "
                        "architecture the file is for")


def _first_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features: timm models with a head block (MobileNetV3, ...) output ``head_hidden_size``
    rather than ``num_features`` when built with ``num_classes=0``."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def backbone_data_config(backbone: nn.Module) -> dict[str, Any]:
    """Mean/std the backbone expects (its pretrained config), falling back to ImageNet's."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return {
        "mean": [float(v) for v in cfg.get("mean", IMAGENET_MEAN)],
        "std": [float(v) for v in cfg.get("std", IMAGENET_STD)],
    }
