"""INT8 calibration sets and explicit Q/DQ quantization (onnx, onnxruntime, numpy — never torch)."""
