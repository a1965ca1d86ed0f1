"""The inference backends there are, as the CLI's help and choices name them: the runtime's backend registry
(runtime/inference/backends/registry.py), which lists them without importing any backend's library."""

from __future__ import annotations

from mlic_edge.runtime.inference.backends.registry import AUTO_ORDER, BACKENDS, BUILD_BACKENDS, ENGINE_BACKENDS

__all__ = ["AUTO_ORDER", "BACKENDS", "BUILD_BACKENDS", "ENGINE_BACKENDS"]
