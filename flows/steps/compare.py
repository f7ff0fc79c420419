"""`beit3 compare`: benchmark metrics of pipeline runs side by side, and a radar chart like BEiT-3's Figure 1.

Reads the metrics the pipeline logs on each parent run (`<task>/<metric>`), draws one polygon per run over the
paper's twelve axes (each from the unit's trivial baseline at the centre to the paper's number at the rim, see
`flows.steps.reference`), and logs the PNG and the table (every unit and metric) to a new MLflow run tagged with
the compared run ids.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from flows.steps.reference import PAPER_AXES, axis_baseline, display


@dataclass
class RunMetrics:
    run_id: str
    name: str
    benchmarks: dict[str, dict[str, float]]


def load_run_metrics(client, run_ids: list[str]) -> list[RunMetrics]:
    runs = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        benchmarks: dict[str, dict[str, float]] = {}
        for key, value in run.data.metrics.items():
            task, sep, metric = key.partition("/")
            if sep and task != "pretrain":
                benchmarks.setdefault(task, {})[metric] = value
        runs.append(RunMetrics(run_id, run.info.run_name or run_id[:8], benchmarks))
    return runs


def comparison_table(runs: list[RunMetrics]) -> list[dict]:
    """One row per (benchmark, metric), one column per run."""
    rows = []
    for task in sorted({t for r in runs for t in r.benchmarks}):
        for metric in sorted({m for r in runs for m in r.benchmarks.get(task, {})}):
            rows.append(
                {"benchmark": task, "metric": metric} | {r.run_id: r.benchmarks.get(task, {}).get(metric) for r in runs}
            )
    return rows


def radar_chart(runs: list[RunMetrics], path: Path) -> Path:
    """The paper's twelve axes (`flows.steps.reference.PAPER_AXES`), one polygon per run.

    Each axis runs from the unit's trivial baseline (centre) to the paper's giant-model number (outer ring), so
    one run already shows where it stands; values beyond the paper's stop just outside the ring. A unit a run
    did not report is left out of its polygon (not drawn as zero), and an axis no run reports is marked
    "not run". Value labels sit inside the ring, axis names outside it.
    """
    import matplotlib.pyplot as plt

    fig = draw_radar(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def radar_points(run: RunMetrics) -> list[tuple[int, float, float]]:
    """(axis index, radius, value in the published scale) of every paper axis the run reports."""
    points = []
    for index, axis in enumerate(PAPER_AXES):
        metrics = run.benchmarks.get(axis.unit, {})
        value = display(axis.unit, axis.metric, metrics.get(axis.metric))
        if value is not None:
            points.append((index, _radius(value, axis_baseline(axis, metrics), axis.paper), value))
    return points


def draw_radar(runs: list[RunMetrics]):
    """The radar figure (see `radar_chart`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.benchmarks for r in runs):
        raise ValueError("the runs hold no benchmark metrics to compare")
    axes = PAPER_AXES
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    fig = plt.figure(figsize=(9, 9))
    ax = fig.add_subplot(polar=True)
    ax.set_theta_offset(math.pi / 2)
    ax.set_theta_direction(-1)
    for index, run in enumerate(runs):
        color = plt.cm.tab10(index % 10)
        points = [(angles[i], radius, value) for i, radius, value in radar_points(run)]
        if not points:
            continue
        closed = [*points, points[0]]
        ax.plot([p[0] for p in closed], [p[1] for p in closed], color=color, linewidth=2, marker="o", label=run.name)
        ax.fill([p[0] for p in closed], [p[1] for p in closed], color=color, alpha=0.12)
        for angle, radius, value in points:
            ax.annotate(f"{value:.1f}", (angle, min(radius, 0.85) + 0.04), color=color, fontsize=8, ha="center")
    reported = {a.unit for a in axes if any(a.unit in r.benchmarks for r in runs)}
    ax.set_xticks(angles)
    ax.set_xticklabels([a.label + ("" if a.unit in reported else "\n(not run)") for a in axes], fontsize=9)
    ax.tick_params(axis="x", pad=18)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels([])
    ax.set_ylim(0, RIM_MAX)
    ax.legend(loc="upper right", bbox_to_anchor=(1.32, 1.12), fontsize=9)
    ax.set_title("Centre: trivial baseline; outer ring: BEiT-3 paper (giant)", pad=36, fontsize=11)
    return fig


RIM_MAX = 1.08


def _radius(value: float, baseline: float, paper: float) -> float:
    """0 at the baseline, 1 at the paper's number, clipped to [0, RIM_MAX]."""
    return min(RIM_MAX, max(0.0, (value - baseline) / (paper - baseline)))


def log_comparison(client, experiment_id: str, runs: list[RunMetrics], png: Path, rows: list[dict]) -> str:
    """A finished `compare` run holding the chart and the table, tagged with the compared runs."""
    import tempfile

    run = client.create_run(
        experiment_id,
        run_name="compare",
        tags={"beit3.step": "compare", "beit3.compared_runs": ",".join(r.run_id for r in runs)},
    )
    client.log_artifact(run.info.run_id, str(png))
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "comparison.json"
        table.write_text(json.dumps(rows, indent=2))
        client.log_artifact(run.info.run_id, str(table))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
