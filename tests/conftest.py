"""Shared fixtures: real demo assets, real ZeroMQ endpoints, condition waits (never sleeps)."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from edge.tools import assets as edge_assets
from edge.wire.client import Subscriber
from edge.wire.publisher import Publisher
from tests.support import fake_cuda, fake_tensorrt


def _has_gpu() -> bool:
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # noqa: BLE001 - any import or driver failure means: no usable GPU
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_jetson = Path("/etc/nv_tegra_release").exists()
    gpu = None
    for item in items:
        if item.get_closest_marker("jetson") and not on_jetson:
            item.add_marker(pytest.mark.skip(reason="needs a Jetson (no /etc/nv_tegra_release here)"))
        if item.get_closest_marker("gpu"):
            gpu = _has_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU and pycuda"))


@pytest.fixture(scope="session")
def demo() -> edge_assets.DemoAssets:
    """The real demo assets (fetched and verified by scripts/test.sh before pytest runs)."""
    return edge_assets.fetch(say=lambda line: None)


# A peer's connection, handshake (the gate thread's ZAP answer) and subscription cross three threads of the daemon:
# in a full run on a loaded 2-core machine (four CPU hogs beside the tests) one took longer than 10 s.
PEER_S = float(os.environ.get("EDGE_TEST_PEER_S", "60"))    # scripts/mutation.sh sets 5 s: mutants, not load


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Poll `condition` until truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def ipc_endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/results.sock"


@pytest.fixture(autouse=True)
def _isolated_runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default endpoints land in a private runtime dir, never in the machine's /run/edge."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))
    monkeypatch.setattr("edge.config.wire.RUN_DIR", Path("/nonexistent/edge"))
    os.environ.pop("EDGE_RESULTS_ENDPOINT", None)
    os.environ.pop("EDGE_LOG_LEVEL", None)


@pytest.fixture(autouse=True)
def _edge_logging_restored() -> Iterator[None]:
    """A test that runs `edge` in this process (cli.main, setup_logging) pointed the edge logger at that test's
    captured stderr, closed once it ended: later lines failed with "I/O operation on closed file"."""
    logger = logging.getLogger("edge")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _fresh_device_key() -> Iterator[None]:
    """device_key() is read once per process; tests that install a stand-in TensorRT need it read again."""
    from edge.engines.tensorrt.plan import device_key

    device_key.cache_clear()
    yield
    device_key.cache_clear()


@pytest.fixture
def results(ctx: zmq.Context, ipc_endpoint: str) -> Iterator[tuple[Publisher, Subscriber]]:
    """A started publisher and a subscriber to its `det.` topics, connected."""
    publisher = Publisher(ipc_endpoint, context=ctx)
    publisher.start()
    subscriber = Subscriber(ipc_endpoint, topics=["det."], context=ctx)
    assert publisher.wait_for_subscriber(PEER_S), "subscription did not arrive"
    yield publisher, subscriber
    subscriber.close()
    publisher.stop(5)


def _has_pycuda() -> bool:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return False
    return True


def _stand_in_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr("edge.engines.repository.read_board", lambda root=Path("/"): fake_tensorrt.BOARD)
    monkeypatch.setattr("edge.engines.repository.read_l4t", lambda root=Path("/"): "36.4.3")


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    """The stand-in TensorRT, on real CUDA where pycuda is installed, else on the CUDA stand-in."""
    _stand_in_tensorrt(monkeypatch)
    if not _has_pycuda():
        fake_cuda.install(monkeypatch)
    return fake_tensorrt


@pytest.fixture
def trt_ledger(monkeypatch: pytest.MonkeyPatch) -> fake_cuda.Ledger:
    """The stand-in TensorRT on the CUDA stand-in, pycuda or not: the stand-in's ledger."""
    _stand_in_tensorrt(monkeypatch)
    return fake_cuda.install(monkeypatch)
