"""TensorRT (and TensorRT for RTX): the API in hand, the engine builder, engine manifests."""
