"""The daemon: builds everything from config, starts and stops in bounded steps, heartbeats; tasks
start and stop at run time (cameras follow them); a reload (SIGHUP, or the control socket's `reload`)
applies a changed config file without stopping the tasks it leaves unchanged (edge/daemon/reload.py)."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import __version__
from edge.config.schema import Config, TaskConfig
from edge.config.supervisor import SupervisorSection
from edge.daemon import reload
from edge.daemon.metrics import MetricsServer
from edge.daemon.systemd import Notifier, Stalls
from edge.engines import factory
from edge.errors import EdgeError
from edge.log import get_logger, setup_logging
from edge.pipeline.batched import BatchedLane, BatchMember
from edge.pipeline.cameras import Camera
from edge.pipeline.lanes import Lane
from edge.pipeline.runtime import Cameras, TaskRuntime
from edge.supervisor.loop import Supervisor, open_telemetry
from edge.tasks import preprocessing_of
from edge.wire import peers, protocol
from edge.wire.control import ControlServer
from edge.wire.peers import Curve
from edge.wire.publisher import Publisher

log = get_logger("service")
STOP_TIMEOUT_S = 5.0


class Service:
    """`start()` acquires (socket, engines, cameras, lanes), `stop()` releases, `run()` waits in between.
    `enable_task()` / `disable_task()` start and stop one task while it runs, `reload()` applies a changed config.
    Every change is prepared, then switched in one step (docs/architecture.md, "A config change's path")."""

    def __init__(self, config: Config, *, max_frames: int | None = None, wait_subscriber_s: float = 0.0,
                 load_config: Callable[[], Config] | None = None,
                 reload_requested: threading.Event | None = None) -> None:
        self.config = config
        self.load_config = load_config                  # reads the config file again (None: no reload)
        # SIGHUP: the run loop reloads on a thread of its own; one asked for while starting waits until READY=1
        self.reload_requested = reload_requested or threading.Event()
        self.max_frames = max_frames
        self.wait_subscriber_s = wait_subscriber_s
        curve = config.output.curve
        self.publisher = Publisher(config.output.results, sndhwm=config.output.sndhwm,
                                   queue_size=config.output.queue_size,
                                   curve=Curve.load(Path(curve.secret_key), Path(curve.clients)) if curve else None)
        self.cameras = Cameras(self.publisher.event)
        self.tasks: dict[str, TaskRuntime] = {}
        self._lanes: dict[str, list[Lane] | list[BatchMember]] = {}
        self.supervisor: Supervisor | None = None
        self.control = ControlServer(config.control.endpoint, self.handle)
        self.metrics = MetricsServer(config.metrics.address, self) if config.metrics.enabled else None
        self.notifier = Notifier()
        self._stalls = Stalls()
        self._lock = threading.RLock()               # tasks, lanes, config: read by the status snapshot
        self._changes = threading.Lock()             # one change of what runs at a time
        self._switching = threading.Lock()           # a switch, or the stop
        self._stopping = threading.Event()
        self._reloader: threading.Thread | None = None
        self._started_ns = time.monotonic_ns()

    @property
    def lanes(self) -> list[Lane | BatchMember]:
        with self._lock:
            return [lane for lanes in self._lanes.values() for lane in lanes]

    def start(self, stop: threading.Event | None = None) -> None:
        """Start everything; on any failure, stop what was started and raise. A `stop` set while starting (SIGTERM,
        or while waiting for the first subscriber) ends the start early and `run` then returns 0."""
        stop = stop or threading.Event()
        try:
            started = self._start(stop)
        except BaseException:
            self.stop(STOP_TIMEOUT_S)
            raise
        if started:
            self.notifier.ready(summary(self.status()))

    def _start(self, stop: threading.Event) -> bool:
        peers.raise_open_files_limit()
        self.publisher.start()
        self.control.start()
        if self.metrics is not None:
            self.metrics.start()
        enabled = tuple(t.name for t in self.config.tasks if t.enabled)
        if not enabled:
            raise EdgeError("no task is enabled", hint="set `enabled: true` on at least one task")
        with self._changes:
            change = reload.ReloadPlan(stop=(), start=enabled, keep=())
            prepared = self._prepare(self.config, change, stop)
            if prepared is None:
                return False
            if self.wait_subscriber_s > 0 and not self._wait_for_subscriber(stop):
                prepared.close()
                if stop.is_set():
                    log.info("stopping while waiting for the first subscriber")
                    return False
                raise EdgeError(f"no subscriber connected to {self.publisher.endpoint} within"
                                f" {self.wait_subscriber_s} s", hint="start the subscriber first, or drop"
                                " --wait-subscriber")
            self._switch(self.config, change, prepared)
        if self.config.supervisor.enabled:
            self.supervisor = self._supervisor(self.config.supervisor)
            self.supervisor.start()
            log.info("supervisor on: telemetry from %s every %.1f s", self.supervisor.reader.name,
                     self.config.supervisor.interval_s)
        log.info("running %d lane(s) on %d camera(s): %s", len(self.lanes), len(self.cameras.open),
                 ", ".join(lane.name for lane in self.lanes))
        return True

    def _prepare(self, config: Config, change: reload.ReloadPlan,
                 cancel: threading.Event | None = None) -> _Prepared | None:
        """Load the engines of the tasks `change` starts and open the cameras they need that are not open with
        these settings now, touching nothing that runs. Raises (having closed what it prepared) when a step fails;
        None when `cancel` (or the stop) comes first."""
        prepared = _Prepared()
        starting = [task for task in config.tasks if task.name in change.start]
        total_lanes = sum(len(task.cameras) for task in config.tasks if task.enabled)
        try:
            for number, task in enumerate(starting, 1):
                if self._cancelled(cancel):
                    prepared.close()
                    return None
                prepared.runtimes[task.name] = self._load_runtime(task, total_lanes)
                if task.batch:
                    BatchedLane.check(prepared.runtimes[task.name], len(task.cameras))
                self.notifier.progress(f"starting: task {task.name} loaded ({number} of {len(starting)})")
            shared = {c.id for c in self.cameras.snapshot()} - change.reopen
            needed = [camera.id for camera in config.cameras if any(camera.id in task.cameras for task in starting)]
            for camera_id in needed:                 # those of a task the file disables too (task.enable)
                if camera_id in shared:
                    continue
                if self._cancelled(cancel):
                    prepared.close()
                    return None
                camera = prepared.cameras[camera_id] = self.cameras.make(camera_id, config)
                camera.open()
                self.notifier.progress(f"starting: camera {camera_id} open")
        except BaseException:
            prepared.close()
            raise
        return prepared

    def _cancelled(self, cancel: threading.Event | None) -> bool:
        return self._stopping.is_set() or (cancel is not None and cancel.is_set())

    def _load_runtime(self, task: TaskConfig, total_lanes: int) -> TaskRuntime:
        variants = factory.variants_for(task, threads=factory.default_threads(task, total_lanes),
                                         preprocessing=preprocessing_of(task), progress=self.notifier.progress)
        runtime = TaskRuntime(task, variants, self.publisher.event)
        runtime.load()
        return runtime

    def _switch(self, config: Config, change: reload.ReloadPlan, prepared: _Prepared) -> None:
        """Make `change` what runs, with what `_prepare` made: the tasks it stops stop (cameras no task uses any
        more close), the prepared cameras take their ids, the tasks it starts start. Refused, with the prepared
        things closed, once the daemon is stopping."""
        with self._switching:
            if self._stopping.is_set():
                prepared.close()
                raise EdgeError("the daemon is stopping", note="the change was not applied")
            starting = [runtime.config for runtime in prepared.runtimes.values()]     # in config order
            with self._lock:
                stopping = [(name, self._lanes.pop(name, []), self.tasks.pop(name)) for name in change.stop]
                self.config = config
            held = {task.name: {camera_id: self.cameras.acquire(camera_id) for camera_id in task.cameras
                                if camera_id not in prepared.cameras}
                    for task in starting}                      # open cameras the new lanes share stay open
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for name, lanes, runtime in stopping:
                if self.supervisor is not None:
                    self.supervisor.remove(name)
                self._stop_lanes(lanes, runtime, deadline)
            for camera in prepared.cameras.values():
                self.cameras.install(camera)
            for task in starting:
                cameras = held[task.name] | {camera_id: self.cameras.acquire(camera_id) for camera_id in task.cameras
                                             if camera_id in prepared.cameras}
                self._start_lanes(prepared.runtimes[task.name], [cameras[camera_id] for camera_id in task.cameras])
                if self.supervisor is not None:
                    self.supervisor.add(prepared.runtimes[task.name])
            self.cameras.start()

    def _start_lanes(self, runtime: TaskRuntime, cameras: list[Camera]) -> None:
        """A lane per camera, or with `batch: true` one batched lane over them all (`_prepare` checked that a loaded
        variant can run that batch); the service sees a lane per camera either way. The task and its lanes appear
        in the status snapshot together."""
        options: dict[str, Any] = {"max_frames": self.max_frames, "include_labels": self.config.output.labels}
        lanes: list[Lane] | list[BatchMember]
        if runtime.config.batch:
            lanes = BatchedLane(runtime, cameras, self.publisher, **options).members
        else:
            lanes = [Lane(runtime, camera, self.publisher, **options) for camera in cameras]
        with self._lock:
            self.tasks[runtime.name] = runtime
            self._lanes[runtime.name] = lanes
        for lane in lanes:
            lane.start()

    def _stop_lanes(self, lanes: list[Lane] | list[BatchMember], runtime: TaskRuntime, deadline: float) -> None:
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        for lane in lanes:
            lane.stop(left())
            self.cameras.release(lane.camera.id, left())
        runtime.unload(left())

    def _wait_for_subscriber(self, stop: threading.Event) -> bool:
        log.info("waiting up to %s s for a first subscriber on %s", self.wait_subscriber_s, self.publisher.endpoint)
        deadline = time.monotonic() + self.wait_subscriber_s
        while not stop.is_set() and time.monotonic() < deadline:
            if self.publisher.wait_for_subscriber(min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
        return False

    def enable_task(self, name: str) -> None:
        """Load a configured task and start its lanes; its cameras open if no running task had them. Refused as a
        whole (nothing started) when an engine or a camera cannot be opened."""
        with self._changes:
            task = self._task_config(name)
            if name in self.tasks:
                raise EdgeError(f"task {name} is running already")
            change = reload.ReloadPlan(stop=(), start=(name,), keep=())
            prepared = self._prepare(self.config, change)
            if prepared is None:
                raise EdgeError("the daemon is stopping", note=f"task {name} was not enabled")
            self._switch(self.config, change, prepared)
        self.publisher.event("task.enabled", {"task": name, "cameras": ",".join(task.cameras)})

    def disable_task(self, name: str) -> None:
        """Stop a task's lanes, free its engines, and close the cameras no running task uses any more."""
        with self._changes:
            self._task_config(name)
            if name not in self.tasks:
                raise EdgeError(f"task {name} is not running", note=f"running: {', '.join(self.tasks) or 'none'}",
                                hint=f"edge task enable {name} starts it")
            self._switch(self.config, reload.ReloadPlan(stop=(name,), start=(), keep=()), _Prepared())
        self.publisher.event("task.disabled", {"task": name})

    def _task_config(self, name: str) -> TaskConfig:
        for task in self.config.tasks:
            if task.name == name:
                return task
        raise EdgeError(f"no task named {name!r} in the config",
                        note=f"tasks: {', '.join(t.name for t in self.config.tasks)}",
                        hint="`edge status` lists the tasks; a task is added to the config file, then `edge reload`")

    def run(self, stop: threading.Event) -> int:
        """Heartbeat until `stop` is set, every lane has finished, or one failed (then 1: systemd restarts us).
        Under a systemd watchdog, ping it at half its interval while no lane is stalled. A reload asked for by
        SIGHUP runs on a thread of its own, so the heartbeats and pings go on while it loads engines."""
        period = 1.0 / self.config.output.heartbeat_hz
        next_beat = next_ping = time.monotonic()
        while not stop.is_set():
            lanes = self.lanes
            if (lanes and all(lane.finished.is_set() for lane in lanes)) or any(lane.error for lane in lanes):
                break
            if self.reload_requested.is_set() and not (self._reloader and self._reloader.is_alive()):
                self.reload_requested.clear()
                self._reloader = threading.Thread(target=self._reload_logged, name="reload", daemon=True)
                self._reloader.start()
            now = time.monotonic()
            if now >= next_beat:
                self.notifier.status(summary(self.publish_heartbeat()))
                next_beat = max(next_beat + period, now + period / 2)    # after a stall: no burst of beats
            if self.notifier.watchdog_s is not None and now >= next_ping:
                self._ping_watchdog(now, self.notifier.watchdog_s)
                next_ping = now + self.notifier.watchdog_s / 2
            stop.wait(min(0.05, max(0.0, next_beat - time.monotonic())))
        self.publish_heartbeat()
        failed = [lane for lane in self.lanes if lane.error is not None]
        for lane in failed:
            log.error("lane %s ended with an error: %s", lane.name, lane.error)
        return 1 if failed else 0

    def _ping_watchdog(self, now: float, watchdog_s: float) -> None:
        """WATCHDOG=1 unless a lane is stalled (`Stalls`): then the pings stop and systemd restarts the daemon."""
        stalled = self._stalls.check(self.lanes, now, watchdog_s)
        if stalled:
            self.notifier.status(f"stalled: {', '.join(stalled)}")
        else:
            self.notifier.watchdog()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Release everything in order, each step bounded by what is left of `timeout`. A change being prepared
        (a reload loading engines) is abandoned: it finds the daemon stopping and closes what it made."""
        deadline = time.monotonic() + timeout
        left = lambda: max(0.1, deadline - time.monotonic())  # noqa: E731
        self._stopping.set()
        self.notifier.stopping("stopping")
        if self.metrics is not None:
            self.metrics.stop(left())
        self.control.stop(left())
        if self.supervisor is not None:
            self.supervisor.stop(left())
        switching = self._switching.acquire(timeout=left())
        if not switching:
            log.warning("a change of the running tasks did not end within the stop time; stopping beside it")
        try:
            with self._lock:
                running = [(self._lanes.pop(name, []), runtime) for name, runtime in self.tasks.items()]
                self.tasks.clear()
            for lanes, runtime in running:
                self._stop_lanes(lanes, runtime, deadline)
        finally:
            if switching:
                self._switching.release()
        reloader = self._reloader                    # a SIGHUP reload loading an engine finds the daemon stopping
        if reloader is not None:
            reloader.join(left())                    # exiting under it aborts inside the engine's native library
            if reloader.is_alive():
                log.warning("a config reload is still loading an engine; stopping without waiting for it")
        self.publisher.stop(left())
        log.info("stopped")

    def status(self) -> dict[str, Any]:
        """A snapshot of the daemon (reading it changes nothing)."""
        now = time.monotonic_ns()
        with self._lock:                             # tasks, lanes and their cameras from one moment
            running = self.lanes
            lanes = [lane.status(now) for lane in running]
            tasks = [runtime.status() for runtime in self.tasks.values()]
            order = [camera.id for camera in self.config.cameras]
        read = {lane.camera.id: lane.camera for lane in running}
        cameras = [{"id": c.id, "connected": c.stats.connected, "captured": c.stats.captured,
                    "reconnects": c.stats.reconnects, "outages": c.stats.outages,
                    "missing_frames": c.stats.missing_frames, "stream_gaps": c.stats.stream_gaps,
                    "lost_frames": c.stats.lost_frames}
                   for c in (read[camera_id] for camera_id in order if camera_id in read)]
        supervisor = self.supervisor
        return {"version": __version__, "uptime_s": (now - self._started_ns) / 1e9, "tasks": tasks, "lanes": lanes,
                "cameras": cameras, "peers": self._peers(),
                "supervisor": supervisor.status() if supervisor is not None else None,
                "telemetry": supervisor.telemetry() if supervisor is not None else None}

    def set_precision(self, name: str, mode: str) -> None:
        """`precision.set`: pin a running task to a precision, or give it back to the supervisor (auto)."""
        with self._lock:
            runtime = self.tasks.get(name)
            if runtime is None:
                self._task_config(name)
                raise EdgeError(f"task {name} is not running", note=f"running: {', '.join(self.tasks) or 'none'}")
            supervisor = self.supervisor
        # without the lock: a pin may load a variant (preload: active), and the status snapshot must not wait for it
        if supervisor is not None:
            supervisor.set_mode(name, mode)
            return
        if mode == "auto":
            raise EdgeError(f"task {name} cannot follow the supervisor: it is off",
                            hint="set supervisor.enabled: true in the config, or pin fp32, fp16 or int8")
        if mode not in runtime.available():
            raise EdgeError(f"task {name} cannot run {mode}", note=runtime.unavailable.get(mode, "no such variant"),
                            hint=f"available: {', '.join(runtime.available())}")
        runtime.mode = mode
        runtime.choose(mode, f"pinned to {mode} by precision.set")

    def handle(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """A control request, already checked by the control socket; EdgeError becomes an error reply."""
        if cmd == "status":
            return self.status()
        if cmd == "task.enable":
            self.enable_task(args["task"])
        elif cmd == "task.disable":
            self.disable_task(args["task"])
        elif cmd == "precision.set":
            self.set_precision(args["task"], args["mode"])
        elif cmd == "reload":
            return self.reload()
        else:
            raise EdgeError(f"unknown command {cmd!r}")
        return {}

    def reload(self) -> dict[str, Any]:
        """Read the config file again and apply what changed (edge/daemon/reload.py): tasks it leaves unchanged run on
        untouched. A config that is refused (invalid, a restart-only section changed, a task whose engine or
        camera cannot be opened, any other error) changes nothing: the error is logged, published as a
        `config.reload` event and raised as an EdgeError."""
        with self._changes:
            self.notifier.reloading("reloading the config")
            try:
                changes = self._reload()
            except Exception as exc:            # whatever failed, the daemon runs on with the config in use
                error = exc if isinstance(exc, EdgeError) else EdgeError(
                    f"config reload failed: {type(exc).__name__}: {exc}", note="the daemon runs on as it was",
                    hint="this is a bug in edge: please report it with the log")
                log.error("config reload refused, running on with the config in use: %s", error,
                          exc_info=not isinstance(exc, EdgeError))
                self.publisher.event("config.reload", {"result": "refused", "reason": str(error)})
                raise error from exc
            finally:
                if not self._stopping.is_set():
                    self.notifier.ready(summary(self.status()))
        log.info("config reloaded: %s", changes)
        self.publisher.event("config.reload", {"result": "applied", "changes": changes})
        return {"changes": changes}

    def _reload_logged(self) -> None:
        """A reload asked for by SIGHUP: its refusal is logged and published by `reload`, and the daemon runs on."""
        try:
            self.reload()
        except EdgeError:
            pass

    def _reload(self) -> str:
        if self.load_config is None:
            raise EdgeError("this daemon has no config file to read again",
                            hint="reloads work for `edge run --config FILE`; restart the demo instead")
        new = self.load_config()
        with self._lock:
            old, running = self.config, set(self.tasks)
        change = reload.plan(old, new, running)
        prepared = self._prepare(new, change)
        if prepared is None:
            raise EdgeError("the daemon is stopping", note="the reload was not applied")
        self._switch(new, change, prepared)
        if change.supervisor:
            with self._switching:
                if not self._stopping.is_set():
                    self._reconfigure_supervisor(new)
        if change.logging:
            setup_logging(new.logging.level)
        return change.describe()

    def _supervisor(self, section: SupervisorSection) -> Supervisor:
        """A supervisor on `section`'s telemetry, deciding for every loaded task (not started yet)."""
        reader = open_telemetry(section.telemetry, self.publisher.event)
        supervisor = Supervisor(section, reader, self.publisher.publish, self.publisher.event)
        for runtime in self.tasks.values():
            supervisor.add(runtime)
        return supervisor

    def _reconfigure_supervisor(self, new: Config) -> None:
        """New thresholds go to the running supervisor; a new telemetry source, or the supervisor turned on or off,
        replaces it (the tasks keep their variants until the new one decides)."""
        section, supervisor = new.supervisor, self.supervisor
        if supervisor is not None and section.enabled and section.telemetry == supervisor.section.telemetry:
            supervisor.reconfigure(section)
            return
        if supervisor is not None:
            supervisor.stop(STOP_TIMEOUT_S)
            self.supervisor = None
        if section.enabled:
            self.supervisor = self._supervisor(section)
            self.supervisor.start()

    def _peers(self) -> dict[str, int]:
        return {"connections": self.publisher.connections, "subscriptions": self.publisher.subscriptions,
                "refused_connections": self.publisher.refused_connections,
                "rejected_inbound": self.publisher.rejected_inbound, "dropped_other": self.publisher.dropped_other}

    def publish_heartbeat(self) -> dict[str, Any]:
        """Publish the heartbeat; returns the status snapshot it was made from."""
        snapshot = self.status()
        self.publisher.publish("sys.heartbeat", protocol.heartbeat_message(
            version=__version__, uptime_s=snapshot["uptime_s"], lanes=snapshot["lanes"],
            cameras=snapshot["cameras"], peers=snapshot["peers"], supervisor=snapshot["supervisor"]))
        return snapshot


@dataclasses.dataclass
class _Prepared:
    """What a change made before it switches: loaded task runtimes, and cameras opened but not started."""

    runtimes: dict[str, TaskRuntime] = dataclasses.field(default_factory=dict)
    cameras: dict[str, Camera] = dataclasses.field(default_factory=dict)

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.unload()
        for camera in self.cameras.values():
            camera.stop(STOP_TIMEOUT_S)


def summary(snapshot: dict[str, Any]) -> str:
    """One line for `systemctl status`, from a status snapshot: lanes with precision and fps, the supervisor's
    level, subscribers."""
    lanes = ", ".join(f"{lane['task']}.{lane['camera']} {lane['precision']} {lane['fps']:.0f} fps"
                      for lane in snapshot["lanes"]) or "no task running"
    level = (snapshot["supervisor"] or {}).get("level", "off")
    return f"{lanes}; supervisor {level}; {snapshot['peers']['connections']} subscriber connection(s)"
