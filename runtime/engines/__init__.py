"""TensorRT (and TensorRT for RTX): the API in hand, the engine builder, engine manifests.

Importing this package imports no TensorRT; ``load_tensorrt`` does, when asked.
"""

from mlic_edge.runtime.engines.api import (Capabilities, TensorRT, available_tensorrt_backends, capabilities,
                                            load_tensorrt)
from mlic_edge.runtime.engines.builder import (BuildOptions, BuildPlan, EngineResult, build_engine,
                                                plan_build)
from mlic_edge.runtime.engines.manifest import (check_manifest, engine_paths, engine_target_name, find_engines,
                                                 read_manifest, write_manifest)

__all__ = ["BuildOptions", "BuildPlan", "Capabilities", "EngineResult", "TensorRT", "available_tensorrt_backends",
           "build_engine", "capabilities", "check_manifest", "engine_paths", "engine_target_name", "find_engines",
           "load_tensorrt", "plan_build", "read_manifest", "write_manifest"]
