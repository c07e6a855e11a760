"""Model toolchain (demo model converter; later FP16/INT8 variants, evaluation, TensorRT build)."""
