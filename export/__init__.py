"""PyTorch -> ONNX export and the PyTorch reference scores."""
