"""Whether a backbone's ImageNet weights can be had, decided without PyTorch or timm: the hub is off
(HF_HUB_OFFLINE) or does not answer one quick connection check, and no local copy may exist. ``mlic-edge train``
asks this before it imports PyTorch, so that a machine without network hears it in one line within seconds; the
exact lookup of the weights (timm's config, the cached file) is models/backbone.py's."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from mlic_edge.errors import MlicError
from mlic_edge.models.recipe import WEIGHTS_FILE_FORMATS

HUB_CHECK_TIMEOUT_S = 2.0  # the connection check before a download: one attempt, no retries


def hub_off() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it (its constant, or the variable set after it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or (
        os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES)


def why_unavailable(url: str) -> str | None:
    """Why weights cannot be downloaded from ``url`` now (the hub off, its host not answering), None where they
    can."""
    if hub_off():
        return "the Hugging Face hub is off here (HF_HUB_OFFLINE)"
    host, port = _endpoint(url)
    unreachable = _connection_failure(host, port, HUB_CHECK_TIMEOUT_S)
    return None if unreachable is None else f"{host}:{port} cannot be reached ({unreachable})"


def refuse_without_weights(name: str, why: str, hub_id: str | None) -> MlicError:
    """The one-line refusal of a backbone whose weights are neither here nor downloadable, with every way on."""
    return MlicError(f"no ImageNet weights for backbone {name!r}: they are not in the local cache and {why}",
                     hint=no_weights_hint(hub_id))


def no_weights_hint(hub_id: str | None) -> str:
    """Every way to ImageNet weights without network; ``hub_id``: their Hugging Face repository, where known."""
    from huggingface_hub import constants

    fetch = f" with `hf download {hub_id}` where there is network" if hub_id else ""
    return (f"pass --pretrained-file FILE ({WEIGHTS_FILE_FORMATS}); or fill the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}, under HF_HOME){fetch}; or train from scratch: --recipe quick (or "
            "--no-pretrained)")


def check_weights_obtainable(name: str, hub_id: str | None = None) -> None:
    """Refuse (``refuse_without_weights``) where no copy of timm backbone ``name``'s weights can be here and the hub
    cannot give them; pass wherever a copy might be (the exact lookup then decides). ``hub_id``: the Hugging Face
    repository of its default weights where known (timm's pretrained config), named in the hint."""
    if _maybe_cached(name, hub_id):
        return
    from huggingface_hub import constants

    why = why_unavailable(constants.ENDPOINT)
    if why is not None:
        raise refuse_without_weights(name, why, hub_id)


def _maybe_cached(name: str, hub_id: str | None) -> bool:
    """A Hugging Face cache folder of timm's repository for ``name`` (any pretrained tag where ``name`` has none),
    or any checkpoint in the torch hub cache (where timm kept downloads from URLs: their file names do not say
    which architecture they hold)."""
    from huggingface_hub import constants

    repos = [f"models--{hub_id.replace('/', '--')}"] if hub_id else []
    architecture, _, tag = name.partition(".")
    patterns = [*repos, f"models--timm--{name}"] + ([] if tag else [f"models--timm--{architecture}.*"])
    hub_cache = Path(constants.HF_HUB_CACHE)
    if any(folder.is_dir() for pattern in patterns for folder in hub_cache.glob(pattern)):
        return True
    checkpoints = _torch_hub_dir() / "checkpoints"
    return checkpoints.is_dir() and any(path.is_file() for path in checkpoints.iterdir())


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without PyTorch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def _endpoint(url: str) -> tuple[str, int]:
    """The host and port a download from ``url`` connects to first: the HTTPS proxy where one is set for it."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host = parsed.hostname or ""
    return host, parsed.port or (443 if parsed.scheme == "https" else 80)


def _connection_failure(host: str, port: int, timeout: float) -> str | None:
    """Why one connection attempt to ``host:port`` failed, None where it succeeded; given up after ``timeout``
    seconds, name lookup included (a lookup with no reachable name server can hang for longer than the connection's
    own timeout, so the attempt runs in a thread)."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(getattr(error, "strerror", None) or str(error) or type(error).__name__)

    thread = threading.Thread(target=attempt, name="hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


__all__ = ["HUB_CHECK_TIMEOUT_S", "check_weights_obtainable", "hub_off", "no_weights_hint",
           "refuse_without_weights", "why_unavailable"]
