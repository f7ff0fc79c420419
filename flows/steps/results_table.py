"""Every unit's headline metrics of one pipeline run beside its trivial baseline, optionally beside the run from
random initialisation (`compare_scratch`) and the published BEiT-3 numbers.

Rows follow the paper's units (`flows.steps.reference.UNITS`), then any other unit the run reports, then the MDM
pretraining's masked-token accuracies against their most-frequent-token baselines. A unit the run did not report
shows as missing, never as zero.

A unit's numbers arrive flat, as the pipeline logs them on its MLflow parent run (`<unit>/<key>`): the metrics
themselves, `baseline_<metric>`, `baseline_<metric>_stderr` and `scratch_<metric>` (`flat_unit_metrics` turns a
`results.json` entry into that form). `margin` = (ours - baseline) / stderr: how many standard errors of the
baseline on the unit's test set the result lies above it.
"""

from evaluation.baselines.stats import margin
from flows.steps.reference import MODEL_SIZES, REFERENCE, REFERENCE_NOTES, UNITS, display, headline_metrics

MDM_UNIT = "pretrain (MDM)"
MDM_KINDS = ("image", "text", "pair_image", "pair_text")


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def margins(metrics: dict, baseline: dict) -> dict[str, float]:
    """Metric -> (metric - baseline) / stderr, for every metric with a baseline standard error."""
    out = {}
    for name, stderr in (baseline.get("stderr") or {}).items():
        value = margin(metrics.get(name), (baseline.get("metrics") or {}).get(name), stderr)
        if value is not None:
            out[name] = value
    return out


def flat_unit_metrics(entry: dict) -> dict[str, float]:
    """A `results.json` unit entry as flat numbers: metrics, `baseline_<m>`, `baseline_<m>_stderr`, `scratch_<m>`."""
    flat = _numbers(entry.get("metrics") or {})
    baseline = entry.get("baseline") or {}
    flat |= {f"baseline_{k}": v for k, v in _numbers(baseline.get("metrics") or {}).items()}
    flat |= {f"baseline_{k}_stderr": v for k, v in _numbers(baseline.get("stderr") or {}).items()}
    flat |= {f"scratch_{k}": v for k, v in _numbers((entry.get("scratch") or {}).get("metrics") or {}).items()}
    return flat


def result_rows(benchmarks: dict[str, dict[str, float]], reference: bool, pretrain: dict | None = None) -> list[dict]:
    """{unit, metric, ours, scratch, baseline, baseline_stderr, margin, scratch_margin, ratio, [model sizes...,
    note]} per row; values in the published scale, None where missing. `pretrain`: the MDM run's metrics (adds
    its rows, whose `ratio` is ours / baseline)."""
    units = [*UNITS, *sorted(set(benchmarks) - set(UNITS))]
    rows = []
    for unit in units:
        metrics = benchmarks.get(unit, {})
        names = list(headline_metrics(unit))
        if reference:
            names += [m for (u, m) in REFERENCE if u == unit and m not in names]
        for metric in names:
            row = _row(unit, metric, metrics)
            if reference:
                row |= {size: REFERENCE.get((unit, metric), {}).get(size) for size in MODEL_SIZES}
                row["note"] = REFERENCE_NOTES.get((unit, metric), "")
            rows.append(row)
    extra = {size: None for size in MODEL_SIZES} | {"note": ""} if reference else {}
    return rows + [row | extra for row in mdm_rows(pretrain or {})]


def _row(unit: str, metric: str, metrics: dict[str, float]) -> dict:
    def shown(key: str) -> float | None:
        return display(unit, metric, metrics.get(key))

    base, stderr = metrics.get(f"baseline_{metric}"), metrics.get(f"baseline_{metric}_stderr")
    return {
        "unit": unit,
        "metric": metric,
        "ours": shown(metric),
        "scratch": shown(f"scratch_{metric}"),
        "baseline": shown(f"baseline_{metric}"),
        "baseline_stderr": shown(f"baseline_{metric}_stderr"),
        "margin": margin(metrics.get(metric), base, stderr),
        "scratch_margin": margin(metrics.get(f"scratch_{metric}"), base, stderr),
        "ratio": None,
    }


def mdm_rows(pretrain: dict[str, float]) -> list[dict]:
    """Masked-token accuracy per stream kind (percent) against the most-frequent-token baseline, with the ratio."""
    rows = []
    for kind in MDM_KINDS:
        ours, base = pretrain.get(f"final_accuracy_{kind}"), pretrain.get(f"final_baseline_{kind}")
        if ours is None:
            continue
        rows.append(
            {
                "unit": MDM_UNIT,
                "metric": f"masked acc {kind}",
                "ours": 100.0 * ours,
                "scratch": None,
                "baseline": None if base is None else 100.0 * base,
                "baseline_stderr": None,
                "margin": None,
                "scratch_margin": None,
                "ratio": ours / base if base else None,
            }
        )
    return rows
