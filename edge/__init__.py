"""edge: perception runtime for NVIDIA Jetson in vehicles."""

__version__ = "0.1.0"
