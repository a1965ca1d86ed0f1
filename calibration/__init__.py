"""INT8 calibration sets and explicit Q/DQ quantization (onnx, onnxruntime, numpy — never torch).

``select_calibration_set`` picks training images covering every class; ``quantize_int8`` writes
``model.int8.onnx`` with symmetric, TensorRT-fusable Q/DQ and keeps what was used under ``<run>/calibration/``;
``cpu_int8_scheme`` makes the variant ONNX Runtime's CPU kernels fuse (uint8 activations, QDQ or QOperator);
``layer_sensitivity`` names the quantized layers that hurt most, and ``search_keep_fp`` keeps the worst in float
until the int8 model meets an accuracy target on the run's validation images (``validation_holdout``; held-out
training images, ``split_holdout``, for a run without a validation split: an optimistic judgement). ``Int8Plan``
(plan.py) decides, for a build, which int8 graphs to make from these pieces and what stays float, and says why.
"""

from mlic_edge.calibration.accuracy import AccuracyTarget, KeepFpSearch, search_keep_fp
from mlic_edge.calibration.images import (CalibrationSet, first_images, select_calibration_set, split_holdout,
                                          validation_holdout)
from mlic_edge.calibration.int8 import (CPU_FORMATS, CPU_GRAPH, METHODS, TENSORRT_GRAPH, TENSORRT_INT8, Int8Report,
                                        Int8Scheme, calibration_key, cpu_int8_scheme, has_record, quantizable_nodes, quantize_int8,
                                        quantized_node_names, residual_add_inputs)
from mlic_edge.calibration.plan import ClassMix, CpuTarget, FloatLayer, Int8Decision, Int8Files, Int8Inputs, Int8Plan
from mlic_edge.calibration.sensitivity import layer_sensitivity

__all__ = ["CPU_FORMATS", "CPU_GRAPH", "METHODS", "TENSORRT_GRAPH", "TENSORRT_INT8", "AccuracyTarget", "CalibrationSet",
           "ClassMix", "CpuTarget", "FloatLayer", "Int8Decision", "Int8Files", "Int8Inputs", "Int8Plan", "KeepFpSearch",
           "Int8Report", "Int8Scheme", "calibration_key", "cpu_int8_scheme", "first_images", "has_record",
           "layer_sensitivity", "quantizable_nodes", "quantize_int8", "quantized_node_names", "residual_add_inputs",
           "search_keep_fp", "select_calibration_set", "split_holdout", "validation_holdout"]
