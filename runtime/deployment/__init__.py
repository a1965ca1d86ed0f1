"""Deployment: bundles for a device, the systemd service, Triton and DeepStream configs, and ``doctor``."""
