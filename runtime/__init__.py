"""Everything after training and export, never PyTorch (but the torch reference backend, lazily), in four rooms
that follow the flow (docs/design.md, "Layout"): ``engines`` (TensorRT: API detection, builder, manifests, GPU
detection), ``inference`` (backends, CUDA, sources, pipeline, postprocess, sinks, latency), ``checks`` (parity, bench)
and ``deployment`` (bundles, systemd service, Triton/DeepStream configs, doctor)."""
