"""The supervisor's policy (edge/supervisor/policy.py) against a first-order thermal model of an Orin module on a
hot-day drive, compared with fixed FP16 and fixed INT8. Nothing runs on a GPU: this is a model, and every
figure in it is a stated assumption unless a source is given (docs/supervisor.md discusses them).

Model (one thermal node: die and heatsink lumped, ambient = the air around the module's heatsink):

    dT/dt = (P * R_th - (T - T_ambient)) / tau

integrated exactly over each 1 s step with P held over the step. P = idle + the sum over tasks of the
task's power at its precision, times its rate scale (the supervisor's CRITICAL) and the hardware throttle.
Above the passive trip (99 °C, Orin sw-throttle, mainline T234 device tree) the kernel lowers the clocks:
modelled as fps and task power times max(floor, 1 - k * (T - 99)). At the shutdown trip (104.5 °C) the
module powers off for the rest of the drive. The supervisor reads the model at 1 Hz through a `Sample`
(zones tj, gpu and cpu with seeded Gaussian noise, the trip points, total power) and its decisions apply
from the next step (a swap is a reference change at a frame boundary).

Reports per policy: minutes at or above the throttle point, the highest temperature, the share of
frames at FP16, precision switches (and the shortest time between two switches of one task), level
changes, and frames delivered against frames asked for. Writes a table (stdout and docs/supervisor.md,
between its markers), JSON (benchmarks/results/thermal_sim.json) and a plot (docs/supervisor_sim.png).

Usage: python benchmarks/thermal_sim.py [--params FILE.json] [--set FIELD=VALUE ...] [--seed N]
                                        [--out FILE] [--plot FILE] [--doc FILE] [--no-plot] [--no-doc]
A params file overrides any field of Params (tasks as a list of objects with the fields of SimTask).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config.precision import PRECISIONS
from edge.config.supervisor import SupervisorConfig
from edge.supervisor.policy import Level, Policy, TaskPolicy
from edge.supervisor.telemetry.common import Sample

ROOT = Path(__file__).resolve().parents[1]
TABLE_START = "<!-- thermal_sim table: start (benchmarks/thermal_sim.py writes this) -->"
TABLE_END = "<!-- thermal_sim table: end -->"


@dataclasses.dataclass(frozen=True)
class SimTask:
    """One perception task: its frame rate, priority and module power per precision (W, at full rate)."""

    name: str
    fps: float
    priority: int
    power_w: dict[str, float]                 # precision -> the task's share of module power
    refused: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def available(self) -> frozenset[str]:
        return frozenset(self.power_w) - frozenset(self.refused)


@dataclasses.dataclass(frozen=True)
class Params:
    r_th_c_per_w: float = 2.5                 # junction to bay air, module + passive heatsink (assumption)
    tau_s: float = 180.0                      # thermal time constant (assumption: ~70 J/K over 2.5 °C/W)
    idle_w: float = 6.0                       # module with cameras, decode and CPU, no inference (assumption)
    passive_trip_c: float = 99.0              # Orin sw-throttle, mainline T234 device tree
    shutdown_c: float = 104.5                 # Orin sw-shutdown, same source
    throttle_per_c: float = 0.10              # clock share lost per °C over the passive trip (assumption)
    throttle_floor: float = 0.4               # lowest clock share the governor goes to (assumption)
    noise_c: float = 0.3                      # sensor noise, Gaussian sigma (assumption)
    step_s: float = 1.0                       # model step and sample period (1 Hz, as the service samples)
    # hot day: (minute, ambient °C) corners, linear between (assumption, docs/supervisor.md)
    ambient: tuple[tuple[float, float], ...] = ((0, 32), (10, 32), (30, 58), (40, 58), (55, 35), (70, 35))
    tasks: tuple[SimTask, ...] = (
        SimTask("detector", fps=30, priority=80, power_w={"fp16": 8.0, "int8": 5.0}),
        SimTask("lanes", fps=15, priority=30, power_w={"fp16": 4.0, "int8": 2.5},
                refused={"int8": "agreement 0.91 < 0.95"}),
    )


Orders = dict[str, tuple[str, float, bool]]             # task -> (precision, rate scale, paused)


def ambient_c(params: Params, t: float) -> float:
    """Ambient at t seconds: linear between the profile's corners, flat after the last."""
    corners = [(m * 60.0, c) for m, c in params.ambient]
    for (t0, c0), (t1, c1) in zip(corners, corners[1:]):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
    return corners[-1][1]


def throttle(params: Params, temp_c: float) -> float:
    """The clock share the kernel leaves above the passive trip (1.0 below it)."""
    return max(params.throttle_floor, min(1.0, 1.0 - params.throttle_per_c * (temp_c - params.passive_trip_c)))


def fixed(precision: str, params: Params) -> Callable[[Sample], Orders]:
    """A policy that never changes: each task at `precision`, or its preferred one when it has none."""
    def preferred(task: SimTask) -> str:
        if precision in task.available:
            return precision
        return next(p for p in ("fp16", "fp32", "int8") if p in task.available)
    orders = {task.name: (preferred(task), 1.0, False) for task in params.tasks}
    return lambda sample: orders


def supervised(config: SupervisorConfig, params: Params, levels: list[Level], costs: list[float]
               ) -> Callable[[Sample], Orders]:
    """The supervisor's decisions for each sample; records its level and the cost of each update."""
    sup = Policy(config)
    tasks = [TaskPolicy(t.name, t.available, priority=t.priority, refused=t.refused) for t in params.tasks]

    def decide(sample: Sample) -> Orders:
        start = time.perf_counter()
        update = sup.update(sample, tasks)
        costs.append(time.perf_counter() - start)
        levels.append(update.level)
        return {name: (d.precision, d.rate_scale, d.paused) for name, d in update.decisions.items()}
    return decide


def sample_of(params: Params, t: float, temp_c: float, power_w: float, rng: random.Random) -> Sample:
    trips = {"passive": params.passive_trip_c, "critical": params.shutdown_c}
    temps = {zone: round(temp_c - offset + rng.gauss(0.0, params.noise_c), 1)
             for zone, offset in (("tj", 0.0), ("gpu", 1.0), ("cpu", 2.5))}
    return Sample(t=t, source="sim", temps_c=temps, trips_c={zone: dict(trips) for zone in temps},
                  total_mw=round(power_w * 1000.0), power_mw={"VDD_IN": round(power_w * 1000.0)})


def simulate(params: Params, policy: Callable[[Sample], Orders], seed: int) -> dict[str, Any]:
    """Run the drive under one policy; the series (1 per step) and the tallies."""
    rng = random.Random(seed)
    steps = int(params.ambient[-1][0] * 60.0 / params.step_s)
    temp = ambient_c(params, 0.0) + params.idle_w * params.r_th_c_per_w
    orders: Orders = {task.name: ("fp16", 1.0, False) for task in params.tasks}
    series: dict[str, list[Any]] = {"t": [], "ambient_c": [], "temp_c": [], "power_w": [], "clock": []}
    series.update({f"precision:{task.name}": [] for task in params.tasks})
    series.update({f"rate:{task.name}": [] for task in params.tasks})
    frames = {task.name: {p: 0.0 for p in PRECISIONS} for task in params.tasks}
    shutdown_at = None
    power = _module_power(params, orders, 1.0)
    for i in range(steps):
        t = i * params.step_s
        clock = 0.0 if shutdown_at is not None else throttle(params, temp)
        if shutdown_at is None:
            orders = policy(sample_of(params, t, temp, power, rng))      # power measured over the last step
        power = 0.0 if shutdown_at is not None else _module_power(params, orders, clock)
        for task in params.tasks:
            precision, scale, _ = orders[task.name]
            frames[task.name][precision] += task.fps * scale * clock * params.step_s
        _record(series, params, t, temp, power, clock, orders)
        temp = _step_temp(params, temp, power, ambient_c(params, t))
        if shutdown_at is None and temp >= params.shutdown_c:
            shutdown_at = t + params.step_s
    return {"series": series, "frames": frames, "shutdown_at_s": shutdown_at}


def _module_power(params: Params, orders: Orders, clock: float) -> float:
    """Idle plus each task's power at its precision and rate (0 when paused), times the clock share."""
    return params.idle_w + clock * sum(task.power_w[orders[task.name][0]] * orders[task.name][1]
                                       for task in params.tasks)


def _step_temp(params: Params, temp_c: float, power_w: float, ambient: float) -> float:
    """Exact solution of the first-order model over one step with constant power and ambient."""
    settled = ambient + power_w * params.r_th_c_per_w
    return settled + (temp_c - settled) * math.exp(-params.step_s / params.tau_s)


def _record(series: dict[str, list[Any]], params: Params, t: float, temp: float, power: float, clock: float,
            orders: Orders) -> None:
    for key, value in (("t", t), ("ambient_c", ambient_c(params, t)), ("temp_c", temp), ("power_w", power),
                       ("clock", clock)):
        series[key].append(value)
    for task in params.tasks:
        precision, scale, paused = orders[task.name]
        series[f"precision:{task.name}"].append(precision)
        series[f"rate:{task.name}"].append(0.0 if paused else scale * clock)


def tally(params: Params, run: dict[str, Any], levels: list[Level]) -> dict[str, Any]:
    """The table's figures for one run."""
    series, frames = run["series"], run["frames"]
    asked = sum(task.fps for task in params.tasks) * len(series["t"]) * params.step_s
    delivered = sum(sum(per.values()) for per in frames.values())
    switches, shortest = _switches(params, series)
    return {
        "minutes_at_or_above_throttle": round(sum(params.step_s for c in series["temp_c"]
                                                  if c >= params.passive_trip_c) / 60.0, 1),
        "max_temp_c": round(max(series["temp_c"]), 1),
        "fp16_share": round(sum(per["fp16"] for per in frames.values()) / delivered, 3) if delivered else 0.0,
        "precision_switches": switches,
        "shortest_between_switches_s": shortest,
        "level_changes": sum(1 for a, b in zip(levels, levels[1:]) if a != b),
        "frames_delivered": round(delivered),
        "frames_asked": round(asked),
        "delivered_share": round(delivered / asked, 3),
        "shutdown_at_s": run["shutdown_at_s"],
    }


def _switches(params: Params, series: dict[str, list[Any]]) -> tuple[int, float | None]:
    count, shortest = 0, None
    for task in params.tasks:
        seq, last = series[f"precision:{task.name}"], None
        for i in range(1, len(seq)):
            if seq[i] != seq[i - 1]:
                count += 1
                t = series["t"][i]
                shortest = t - last if last is not None and (shortest is None or t - last < shortest) else shortest
                last = t
    return count, shortest


def run_all(params: Params, config: SupervisorConfig, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three policies on the same drive; (results by policy, the supervisor's series and levels)."""
    results, kept = {}, {}
    for name, precision in (("fixed FP16", "fp16"), ("fixed INT8", "int8")):
        run = simulate(params, fixed(precision, params), seed)
        results[name] = tally(params, run, [])
        kept[name] = run["series"]
    levels: list[Level] = []
    costs: list[float] = []
    run = simulate(params, supervised(config, params, levels, costs), seed)
    results["supervisor"] = tally(params, run, levels)
    results["supervisor"]["update_us_median"] = round(sorted(costs)[len(costs) // 2] * 1e6, 1)
    kept["supervisor"] = run["series"]
    kept["levels"] = [int(level) for level in levels]
    return results, kept


def table(results: dict[str, Any], params: Params) -> str:
    head = (f"| policy | min ≥ {params.passive_trip_c:g} °C (throttle) | max °C | frames at FP16 | "
            "precision switches (shortest gap) | level changes | frames delivered (of asked) | shutdown |")
    rows = [head, "|" + "---|" * 8]
    for name, r in results.items():
        gap = f" ({r['shortest_between_switches_s']:.0f} s)" if r["shortest_between_switches_s"] is not None else ""
        shutdown = f"at {r['shutdown_at_s'] / 60:.1f} min" if r["shutdown_at_s"] is not None else "no"
        rows.append(f"| {name} | {r['minutes_at_or_above_throttle']:.1f} | {r['max_temp_c']:.1f} | "
                    f"{100 * r['fp16_share']:.0f} % | {r['precision_switches']}{gap} | {r['level_changes']} | "
                    f"{r['frames_delivered']:,} ({100 * r['delivered_share']:.1f} %) | {shutdown} |")
    return "\n".join(rows)


def plot(kept: dict[str, Any], params: Params, config: SupervisorConfig, path: Path) -> None:
    import matplotlib  # the benchmarks extra (setup.py); only the plot needs it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    sup = kept["supervisor"]
    minutes = [t / 60.0 for t in sup["t"]]
    fig, axes = plt.subplots(3 + len(params.tasks), 1, figsize=(10, 9 + 1.2 * len(params.tasks)), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 1] + [1] * len(params.tasks)})
    _plot_temperature(axes[0], kept, minutes, params, config)
    _plot_power(axes[1], kept, minutes)
    axes[2].step(minutes, kept["levels"], where="post", color="tab:red")
    axes[2].set_yticks([int(level) for level in Level], [level.name for level in Level])
    axes[2].set_ylabel("supervisor\nlevel")
    for ax, task in zip(axes[3:], params.tasks):
        _plot_task(ax, sup, minutes, task)
    axes[-1].set_xlabel("minutes into the drive")
    fig.suptitle("Supervisor on a hot-day drive (first-order model of an Orin module; assumptions in "
                 "docs/supervisor.md)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_temperature(ax: Any, kept: dict[str, Any], minutes: list[float], params: Params,
                      config: SupervisorConfig) -> None:
    for name, color in (("fixed FP16", "tab:orange"), ("fixed INT8", "tab:green"), ("supervisor", "tab:blue")):
        ax.plot(minutes, kept[name]["temp_c"], color=color, label=name, linewidth=1.4)
    ax.plot(minutes, kept["supervisor"]["ambient_c"], color="grey", linestyle=":", label="ambient")
    critical = config.critical_c or params.passive_trip_c - config.critical_margin_c
    for level, label, style in ((params.passive_trip_c, "passive trip", "-"), (critical, "critical", "--"),
                                (config.hot_c, "hot", "--"), (config.cool_c, "cool", ":")):
        ax.axhline(level, color="black", linestyle=style, linewidth=0.7)
        ax.text(0.2, level + 0.4, f"{label} {level:g} °C", fontsize=7)
    ax.set_ylabel("temperature °C")
    ax.legend(loc="lower right", fontsize=8)


def _plot_power(ax: Any, kept: dict[str, Any], minutes: list[float]) -> None:
    for name, color in (("fixed FP16", "tab:orange"), ("fixed INT8", "tab:green"), ("supervisor", "tab:blue")):
        ax.plot(minutes, kept[name]["power_w"], color=color, label=name, linewidth=1.0)
    ax.set_ylabel("module W")


def _plot_task(ax: Any, series: dict[str, list[Any]], minutes: list[float], task: SimTask) -> None:
    order = [p for p in ("int8", "fp16", "fp32") if p in task.power_w]
    ax.step(minutes, [order.index(p) for p in series[f"precision:{task.name}"]], where="post", color="tab:blue")
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(-0.5, len(order) - 0.5)
    ax.set_ylabel(task.name, fontsize=8)
    rate = ax.twinx()
    rate.step(minutes, series[f"rate:{task.name}"], where="post", color="tab:purple", linewidth=0.8, alpha=0.7)
    rate.set_ylim(0, 1.1)
    rate.set_ylabel("rate", fontsize=7, color="tab:purple")


def write_table(doc: Path, text: str) -> None:
    """Replace the table between the markers of docs/supervisor.md."""
    content = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(content):
        sys.exit(f"{doc} has no table markers; add the lines\n{TABLE_START}\n{TABLE_END}")
    doc.write_text(pattern.sub(lambda _: f"{TABLE_START}\n{text}\n{TABLE_END}", content), encoding="utf-8")


def load_params(path: Path | None) -> Params:
    if path is None:
        return Params()
    data = json.loads(path.read_text(encoding="utf-8"))
    if "tasks" in data:
        data["tasks"] = tuple(SimTask(**task) for task in data["tasks"])
    if "ambient" in data:
        data["ambient"] = tuple(tuple(corner) for corner in data["ambient"])
    return dataclasses.replace(Params(), **data)


def _field(item: str) -> tuple[str, Any]:
    """FIELD=VALUE for SupervisorConfig, the value read as JSON (78, null), else as a string (tj)."""
    name, _, value = item.partition("=")
    if name not in SupervisorConfig.model_fields:
        sys.exit(f"--set {item}: no SupervisorConfig field {name!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, help="JSON overriding fields of Params")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a SupervisorConfig field, e.g. --set cool_c=78 --set power_budget_mw=16000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "thermal_sim.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "supervisor_sim.png")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "supervisor.md")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    params = load_params(args.params)
    config = SupervisorConfig(**dict(_field(item) for item in args.set))
    results, kept = run_all(params, config, args.seed)
    text = table(results, params)
    print(text)
    print(f"\nsupervisor update: median {results['supervisor']['update_us_median']} µs "
          f"({len(params.tasks)} tasks, 3 zones) on {platform.machine()} Python {platform.python_version()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": dataclasses.asdict(params), "config": config.model_dump(),
                                    "seed": args.seed, "results": results}, indent=2) + "\n", encoding="utf-8")
    if not args.no_plot:
        plot(kept, params, config, args.plot)
    if not args.no_doc:
        write_table(args.doc, text)


if __name__ == "__main__":
    main()
