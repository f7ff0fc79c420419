"""Every unit's headline metrics of one pipeline run, optionally beside the published BEiT-3 numbers.

Rows follow the paper's units (`flows.steps.reference.UNITS`), then any other unit the run reports. A unit the
run did not report shows as missing, never as zero.
"""

from flows.steps.reference import MODEL_SIZES, REFERENCE, REFERENCE_NOTES, UNITS, display, headline_metrics


def result_rows(benchmarks: dict[str, dict[str, float]], reference: bool) -> list[dict]:
    """{unit, metric, ours (published scale or None), [model sizes...], note} per row."""
    units = [*UNITS, *sorted(set(benchmarks) - set(UNITS))]
    rows = []
    for unit in units:
        metrics = benchmarks.get(unit, {})
        names = list(headline_metrics(unit))
        if reference:
            names += [m for (u, m) in REFERENCE if u == unit and m not in names]
        for metric in names:
            row = {"unit": unit, "metric": metric, "ours": display(unit, metric, metrics.get(metric))}
            if reference:
                row |= {size: REFERENCE.get((unit, metric), {}).get(size) for size in MODEL_SIZES}
                row["note"] = REFERENCE_NOTES.get((unit, metric), "")
            rows.append(row)
    return rows
