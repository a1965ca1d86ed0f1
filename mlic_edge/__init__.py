"""mlic-edge: multi-label image classifiers from the papers to edge GPUs."""

__version__ = "0.1.0"
