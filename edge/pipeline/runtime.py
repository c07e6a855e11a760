"""A TaskRuntime per task: its loaded precision variants, the active one and why, and the one place a
switch happens. Cameras are shared and reference-counted: one opens when the first running task needs
it and closes when the last one stops; its reader is chosen by its `decode` (Decoding: the CPU, NVDEC through
PyNvVideoCodec on a discrete GPU, or GStreamer on a Jetson).

A switch is a reference change: lanes read `active()` at each frame boundary (edge/pipeline/lanes.py), so no
frame is lost or processed twice, and frames already in flight finish on the variant they started on.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.config.cameras import CameraURI
from edge.config.precision import PREFERENCE
from edge.config.schema import Config, TaskConfig
from edge.engines.base import Engine
from edge.errors import EdgeError, EngineError, SourceError, UsageError
from edge.log import get_logger
from edge.pipeline.cameras import Camera
from edge.pipeline.gstreamer import JETSON_ELEMENTS, describe, has_jetson_elements
from edge.pipeline.gstreamer_reader import GstReader, open_gstreamer_reader
from edge.pipeline.nvdec import SCHEMES, NvdecReader, open_nvdec_reader
from edge.pipeline.readers import Reader, open_reader
from edge.pipeline.sources import Refused
from edge.tasks import Task, build_task

if TYPE_CHECKING:
    from edge.engines.factory import Variants

log = get_logger("runtime")
EventSink = Callable[[str, dict[str, Any]], None]


class TaskRuntime:
    """The variants of one task. `load()` activates them (all, or with `preload: active` the first one; others
    load when first chosen, or ahead with `load_variant()`), `choose()` switches, `unload()` frees them."""

    def __init__(self, config: TaskConfig, variants: Variants, on_event: EventSink) -> None:
        self.config = config
        self.variants = variants
        self.on_event = on_event
        self.unavailable = dict(variants.unavailable)      # precision -> why it cannot run
        self.rate_scale = 1.0                              # the supervisor's CRITICAL action; 0 pauses
        self.mode = config.precision                       # auto, or the pinned precision (precision.set)
        self.task: Task
        self._lock = threading.Lock()
        self._loading = threading.Lock()                  # one load_variant() or unload() at a time
        self._unloaded = False
        self._precision = self._initial()
        self.reason = self._initial_reason()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def precision(self) -> str:
        return self._precision

    def available(self) -> list[str]:
        """Precisions this task can switch to."""
        return [p for p in self.variants.engines if p not in self.unavailable]

    def _initial(self) -> str:
        wanted = self.config.precision
        if wanted != "auto" and wanted in self.variants.engines:
            return wanted
        precision = self.variants.first(PREFERENCE)
        if precision is None:
            raise EngineError(f"task {self.name}: nothing to run", note=str(self.unavailable))
        return precision

    def _initial_reason(self) -> str:
        wanted = self.config.precision
        if wanted == "auto":
            return f"auto: {self._precision} until the supervisor decides"
        if wanted == self._precision:
            return f"pinned to {wanted} by the config"
        return f"pinned to {wanted} by the config, which cannot run ({self.unavailable.get(wanted, 'not present')})"

    def load(self) -> None:
        """Activate the variants to preload and build the task from them; on failure free what was loaded.
        A variant that fails to load is refused (with an event) and the next one in PREFERENCE runs instead; the
        load fails only when none does."""
        try:
            first = self._load_first()
            self.task = build_task(self.config, first)
            if self.config.preload == "all":
                for precision in self.available():
                    if precision != self._precision:
                        self.load_variant(precision)
        except BaseException:
            self.unload()
            raise
        pinned_elsewhere = self.config.precision not in ("auto", self._precision)
        log.log(logging.WARNING if pinned_elsewhere else logging.INFO, "task %s: running %s (%s); loaded %s",
                self.name, self.active().name, self.reason,
                ", ".join(e.precision for e in self.variants.engines.values() if e.is_active))

    def _load_first(self) -> Engine:
        while True:
            try:
                return self._activate(self._precision)
            except EngineError as exc:
                failed = self._precision
                self._refuse(failed, exc)
                following = next((p for p in PREFERENCE if p in self.available()), None)
                if following is None:
                    raise
                self._precision = following
                self.reason = f"{failed} failed to load ({exc.what}): {following}"

    def _activate(self, precision: str) -> Engine:
        engine = self.variants.engines[precision]
        if not engine.is_active:
            log.info("task %s: loading %s", self.name, engine.name)
            engine.activate()
            engine.warmup()
        return engine

    def needs_load(self, precision: str) -> bool:
        """Whether `precision` can run but is not loaded yet (`preload: active`), so choosing it would load it."""
        engine = self.variants.engines.get(precision)
        return (engine is not None and not engine.is_active and precision not in self.unavailable
                and not self._unloaded)

    def load_variant(self, precision: str) -> bool:
        """Load and warm up one more variant, if it is not loaded; one that fails to load or does not fit the task
        is refused. Loads of one task run one at a time, so a caller may wait for another thread's load of this
        task: call it holding no lock that others wait on. False when the variant cannot run, or the task was
        unloaded (nothing is loaded after `unload()`)."""
        with self._loading:
            if self._unloaded or precision not in self.variants.engines or precision in self.unavailable:
                return False
            try:
                engine = self._activate(precision)
                _check_same_io(self.name, self.active(), engine)
            except EngineError as exc:
                self._refuse(precision, exc)
                return False
            if self._unloaded:                            # unload() gave up waiting for this load: free all here
                self._free()
                return False
            return True

    def _refuse(self, precision: str, exc: EngineError) -> None:
        self.variants.engines[precision].deactivate()
        self.unavailable[precision] = f"failed to load: {exc.what}"
        log.warning("task %s: the %s variant cannot be used: %s", self.name, precision, exc)
        self.on_event("engine.refused", {"task": self.name, "precision": precision, "reason": exc.what})

    def active(self) -> Engine:
        with self._lock:
            return self.variants.engines[self._precision]

    def choose(self, precision: str, reason: str, *, cause: str | None = None) -> bool:
        """Make `precision` the active variant, loading it first when it is not (`preload: active`; a caller that
        holds a lock others wait on loads it with `load_variant()` first). `reason` is why it runs now, as status
        shows it; `cause` the whole story of a switch, for its log line and its precision.switch
        event (default `reason`): the history stays in the events, status shows the present. True when it
        switched; False when it already ran, or cannot (then why is logged and kept in `unavailable`)."""
        if precision == self._precision:
            with self._lock:
                self.reason = reason
            return False
        if precision not in self.variants.engines or precision in self.unavailable:
            log.warning("task %s: cannot switch to %s: %s", self.name, precision,
                        self.unavailable.get(precision, "no such variant"))
            return False
        if not self.variants.engines[precision].is_active and not self.load_variant(precision):
            return False
        with self._lock:
            before = self.variants.engines[self._precision]
            self._precision, self.reason = precision, reason
            after = self.variants.engines[precision]
        log.info("task %s: %s -> %s: %s", self.name, before.precision, after.precision, cause or reason)
        self.on_event("precision.switch", {"task": self.name, "from": before.precision, "to": after.precision,
                                           "engine": after.name, "reason": cause or reason})
        return True

    def unload(self, timeout: float | None = None) -> bool:
        """Free every variant, for good; no load starts after. A load running on another thread ends first,
        waited for up to `timeout` seconds (None: until it ends); past that, the load frees its own engine
        when it ends (an engine is never freed while its native load runs) and False is returned."""
        self._unloaded = True
        if not self._loading.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("task %s: a variant is still loading after %.1f s; the task's engines are freed when"
                        " that load ends", self.name, timeout)
            return False
        try:
            self._free()
        finally:
            self._loading.release()
        return True

    def _free(self) -> None:
        for engine in self.variants.engines.values():
            engine.deactivate()
        _give_memory_back()

    def status(self) -> dict[str, Any]:
        with self._lock:
            engine = self.variants.engines[self._precision]
            return {"task": self.name, "precision": engine.precision, "engine": engine.name, "reason": self.reason,
                    "mode": self.mode, "priority": self.config.priority, "rate_scale": self.rate_scale,
                    "loaded": [e.precision for e in self.variants.engines.values() if e.is_active],
                    "unavailable": dict(self.unavailable)}


def _check_same_io(task: str, reference: Engine, other: Engine) -> None:
    """Variants of one task take the same input and give the same outputs (one pre/postprocessing)."""
    shapes = lambda e: ([(s.name, s.shape) for s in e.inputs], [(s.name, s.shape) for s in e.outputs])  # noqa: E731
    if shapes(reference) != shapes(other):
        raise EngineError(f"task {task}: {other.name} does not have the tensors of {reference.name}",
                          note=f"{shapes(other)} vs {shapes(reference)}",
                          hint="make every variant from the same source model")


class Cameras:
    """The open cameras, reference-counted. A camera is made ahead (`make`, then opened by the caller), takes its
    id with `install` once the camera it replaces is closed, and closes when its last user lets go."""

    def __init__(self, on_event: EventSink) -> None:
        self.on_event = on_event
        self.open: dict[str, Camera] = {}
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()             # the status snapshot reads while a change runs

    def make(self, camera_id: str, config: Config) -> Camera:
        """A camera of `config`, not opened and not counted among the open ones."""
        camera = config.camera(camera_id)
        return Camera(camera_id, camera.parsed, on_event=self.on_event, max_frame=camera.max_frame,
                      opener=Decoding(camera_id, camera.decode, config.frames_in_flight(camera_id)))

    def install(self, camera: Camera) -> None:
        with self._lock:
            if camera.id in self.open:
                raise EdgeError(f"camera {camera.id} is open already", note="a prepared camera cannot replace it")
            self.open[camera.id] = camera
            self._users[camera.id] = 0

    def acquire(self, camera_id: str) -> Camera:
        """One more user of an open camera (one just installed, or one a running task reads)."""
        with self._lock:
            if camera_id not in self.open:
                raise UsageError(f"camera {camera_id} acquired but not open", hint="install the prepared camera first")
            self._users[camera_id] += 1
            return self.open[camera_id]

    def start(self) -> None:
        """Start the capture of every acquired camera not yet started."""
        for camera in self.snapshot():
            if not camera.started:
                camera.start()

    def snapshot(self) -> list[Camera]:
        with self._lock:
            return list(self.open.values())

    def release(self, camera_id: str, timeout: float) -> None:
        with self._lock:
            if camera_id not in self._users:
                raise EdgeError(f"camera {camera_id} released but not acquired")
            self._users[camera_id] -= 1
            if self._users[camera_id]:
                return
            del self._users[camera_id]
            camera = self.open.pop(camera_id)
        camera.stop(timeout)
        log.info("camera %s closed: no running task uses it", camera_id)


class Decoding:
    """The reader opener of one camera for its `decode` setting, a Camera's `opener`. `cpu` opens the CPU reader
    (open_reader). `nvdec` and `auto` open a hardware reader: on a Jetson (GStreamer has NVIDIA's nvv4l2decoder
    and nvvidconv) GStreamer's, for file://, rtsp:// and csi:// (edge/pipeline/gstreamer_reader.py); elsewhere
    NVDEC's through PyNvVideoCodec, for file:// and rtsp:// (edge/pipeline/nvdec.py). `auto` takes the CPU reader
    for another scheme, and where the hardware reader is Refused (no library, GPU or element, a stream it does
    not take); `nvdec` fails then. The first open that succeeds fixes the choice for the camera's reconnects and
    logs it, with the path and why; an open that fails for the source itself (a camera not reachable yet)
    chooses nothing. Surfaces: the readers' in_flight + 2 (the latest frame and the one being written)."""

    def __init__(self, camera_id: str, decode: str, in_flight: int) -> None:
        self.camera_id = camera_id
        self.decode = decode
        self.surfaces = in_flight + 2
        self.chosen: str | None = None
        self._jetson: bool | None = None

    def __call__(self, uri: CameraURI, max_frame: tuple[int, int]) -> Reader:
        if self.chosen == "cpu" or (self.chosen is None and self.decode == "cpu"):
            return self._chose("cpu", open_reader(uri, max_frame), "the config says so")
        if self._jetson is None:
            self._jetson = has_jetson_elements()
        if self.chosen == "nvdec":
            return self._hardware(uri, max_frame)
        schemes = tuple(JETSON_ELEMENTS) if self._jetson else SCHEMES
        if uri.scheme not in schemes:
            path = "a Jetson's GStreamer decode" if self._jetson else "NVDEC"
            shown = [f"{scheme}://" for scheme in schemes]
            why = f"{path} reads {', '.join(shown[:-1])} and {shown[-1]} cameras, not {uri.scheme}://"
            if self.decode == "nvdec":          # csi:// off a Jetson: the config takes it for a Jetson
                raise SourceError(f"{describe(uri)}: decode: nvdec, but {why}; GStreamer here has no NVIDIA"
                                  f" {' and '.join(JETSON_ELEMENTS['file'])}, so this is no Jetson",
                                  hint="run this camera on the Jetson it is attached to (JetPack's"
                                       " nvidia-l4t-gstreamer brings those elements), or set decode: cpu to read"
                                       " it through OpenCV's GStreamer")
            return self._chose("cpu", open_reader(uri, max_frame), why)
        if self.decode == "nvdec":
            reader = self._hardware(uri, max_frame)
            return self._chose("nvdec", reader, f"the config says so; {reader.description}")
        try:
            reader = self._hardware(uri, max_frame)
        except Refused as exc:
            return self._chose("cpu", open_reader(uri, max_frame), f"auto: {exc.summary()}")
        return self._chose("nvdec", reader, f"auto: {reader.description}")

    def _hardware(self, uri: CameraURI, max_frame: tuple[int, int]) -> GstReader | NvdecReader:
        opener = open_gstreamer_reader if self._jetson else open_nvdec_reader
        return opener(uri, max_frame, surfaces=self.surfaces, camera_id=self.camera_id)

    def _chose(self, chosen: str, reader: Reader, why: str) -> Reader:
        if self.chosen is None:
            self.chosen = chosen
            log.info("%s: decode %s (%s)", self.camera_id, chosen, why)
        return reader


def _give_memory_back() -> None:
    """Return the heap freed by unloaded engines to the system. glibc keeps a model's freed weights in its heap
    (its mmap threshold grows with each large free), so each reload left the daemon holding more than it used
    (benchmarks/reload_memory.py; docs/reliability.md). Elsewhere than glibc there is nothing to call."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


_LIBC = ctypes.CDLL(None)
