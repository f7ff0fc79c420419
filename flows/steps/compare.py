"""`beit3 compare`: benchmark metrics of pipeline runs side by side, and a radar chart like BEiT-3's Figure 1.

Reads the metrics the pipeline logs on each parent run (`<task>/<metric>`), draws one polygon per run over one
axis per benchmark (its primary metric; each axis scaled to the values on it, so tasks with different ranges
share one chart), and logs the PNG and the table to a new MLflow run tagged with the compared run ids.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

PRIMARY_METRIC = {
    "vqav2": "overall",
    "nlvr2": "accuracy",
    "coco_captioning": "CIDEr",
    "nocaps": "CIDEr",
    "imagenet": "accuracy",
}
"""The number each benchmark is known by (the metric of `evaluation.score`); other tasks: their first metric."""


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


def primary_metric(task: str, runs: list[RunMetrics]) -> str | None:
    names = sorted({m for r in runs for m in r.benchmarks.get(task, {})})
    preferred = PRIMARY_METRIC.get(task)
    return preferred if preferred in names else (names[0] if names else None)


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
    """One axis per benchmark (its primary metric), one filled polygon per run, values written at the vertices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = [(t, primary_metric(t, runs)) for t in sorted({t for r in runs for t in r.benchmarks})]
    axes = [(t, m) for t, m in axes if m]
    if not axes:
        raise ValueError("the runs hold no benchmark metrics to compare")
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    fig = plt.figure(figsize=(7, 7))
    ax = fig.add_subplot(polar=True)
    ax.set_theta_offset(math.pi / 2)
    ax.set_theta_direction(-1)
    for index, run in enumerate(runs):
        values = [run.benchmarks.get(t, {}).get(m) for t, m in axes]
        radii = [
            _scaled(v, [r.benchmarks.get(t, {}).get(m) for r in runs]) for v, (t, m) in zip(values, axes, strict=True)
        ]
        color = plt.cm.tab10(index % 10)
        ax.plot([*angles, angles[0]], [*radii, radii[0]], color=color, linewidth=2, label=run.name)
        ax.fill([*angles, angles[0]], [*radii, radii[0]], color=color, alpha=0.15)
        for angle, radius, value in zip(angles, radii, values, strict=True):
            if value is not None:
                ax.annotate(f"{value:.1f}", (angle, radius), color=color, fontsize=9, ha="center", va="bottom")
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{t}\n({m})" for t, m in axes], fontsize=10)
    ax.set_yticks([0.3, 0.65, 1.0])  # rings at the lowest, middle and highest value of every axis
    ax.set_yticklabels([])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.12), fontsize=9)
    ax.set_title("Benchmark results per pipeline run", pad=28)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _scaled(value: float | None, column: list[float | None]) -> float:
    """Per-axis scale: the smallest value on the axis sits at 0.3, the largest at 1 (0 for a missing value)."""
    if value is None:
        return 0.0
    known = [v for v in column if v is not None]
    low, high = min(known), max(known)
    return 1.0 if high == low else 0.3 + 0.7 * (value - low) / (high - low)


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
