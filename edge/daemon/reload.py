"""What a config reload changes: the tasks to stop and to start, and whether the supervisor follows new
settings. Pure: it compares two checked Configs and touches nothing (the service applies the plan).

A running task whose own settings are unchanged, and whose cameras are unchanged, keeps running untouched.
A task that changed, or that reads a camera whose settings changed, is stopped and started again with the
new settings; so is every task of a camera a hardware reader may read whose tasks' frames in flight changed in
sum (a task added on it, an in_flight raised): that camera is opened anew, its surface pool sized for them.
Tasks removed or disabled stop; tasks added or enabled start. The output, control and metrics sections hold
sockets that subscribers, tools and scrapers are connected to: a change there needs a restart, and the reload is
refused as a whole, so nothing half-applies.
"""
from __future__ import annotations

import dataclasses

from edge.config.schema import Config
from edge.errors import EdgeError

RESTART_ONLY = ("output", "control", "metrics")     # sections bound to sockets at start


@dataclasses.dataclass(frozen=True)
class ReloadPlan:
    stop: tuple[str, ...]          # running tasks to stop: removed, disabled, changed, or on a changed camera
    start: tuple[str, ...]         # tasks of the new config to start: added, enabled, changed, on a changed camera
    keep: tuple[str, ...]          # running tasks that run on untouched
    supervisor: bool = False       # the supervisor section changed
    logging: bool = False          # the log level changed
    reopen: frozenset[str] = frozenset()    # cameras whose settings or pool size changed: opened anew for the
                                            # tasks that start

    @property
    def changes(self) -> bool:
        return bool(self.stop or self.start or self.supervisor or self.logging)

    def describe(self) -> str:
        stop, start = set(self.stop), set(self.start)
        groups = (("restart", stop & start), ("stop", stop - start), ("start", start - stop), ("keep", set(self.keep)))
        parts = [f"{what}: {', '.join(sorted(names))}" for what, names in groups if names]
        parts += [name for name, changed in (("supervisor settings", self.supervisor), ("log level", self.logging))
                  if changed]
        return "; ".join(parts) if self.changes else "nothing changed"


def plan(old: Config, new: Config, running: set[str]) -> ReloadPlan:
    """The plan from `old` (what runs, `running` being its tasks running now) to `new`; EdgeError where a
    restart-only section changed."""
    changed_sections = [name for name in RESTART_ONLY if getattr(old, name, None) != getattr(new, name, None)]
    if changed_sections:
        raise EdgeError(f"reload refused: the {', '.join(changed_sections)} section(s) changed, and they are bound to"
                        " sockets at start", note="the daemon runs on with its current config",
                        hint="restart to apply them (systemctl restart edge-runtime); reload applies tasks, cameras,"
                             " supervisor and logging")
    old_cameras = {camera.id: camera for camera in old.cameras}
    new_cameras = {camera.id: camera for camera in new.cameras}
    changed_cameras = {cid for cid, camera in new_cameras.items() if old_cameras.get(cid) not in (None, camera)
                       or (cid in old_cameras and camera.hardware
                           and old.frames_in_flight(cid) != new.frames_in_flight(cid))}
    old_tasks = {task.name: task for task in old.tasks}
    wanted = {task.name: task for task in new.tasks if task.enabled}
    stop: list[str] = []
    keep: list[str] = []
    for name in sorted(running):
        task = wanted.get(name)
        if task is None or task != old_tasks.get(name) or changed_cameras & set(task.cameras):
            stop.append(name)
        else:
            keep.append(name)
    start = [name for name in wanted if name not in keep]
    return ReloadPlan(tuple(stop), tuple(start), tuple(keep), old.supervisor != new.supervisor,
                      old.logging != new.logging, frozenset(changed_cameras))
