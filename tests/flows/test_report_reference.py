"""The twelve-axis radar (baseline at the centre, the paper at the rim) and `beit3 report --reference paper`."""

import json

import pytest

from flows.steps.compare import RunMetrics, draw_radar, radar_chart, radar_points
from flows.steps.reference import PAPER_AXES, REFERENCE
from flows.steps.results_table import result_rows

AXIS = {(a.unit, a.metric): i for i, a in enumerate(PAPER_AXES)}


def test_the_paper_axes_are_the_twelve_units():
    assert len(PAPER_AXES) == 12
    units = {a.unit for a in PAPER_AXES}
    assert units == {
        "ade20k",
        "imagenet",
        "coco_detection",
        "coco_retrieval",
        "flickr30k_retrieval",
        "flickr30k_zeroshot",
        "vqav2",
        "coco_captioning",
        "nlvr2",
    }
    assert REFERENCE[("flickr30k_zeroshot", "tr_r1")]["giant (paper)"] == 94.9


def test_axes_run_from_the_baseline_to_the_paper_and_missing_units_are_not_zero():
    run = RunMetrics(
        "r1",
        "demo",
        {
            # 100 test images: chance R@1 = 1%; TR@1 50 -> (50 - 1) / (94.9 - 1) of the way to the rim.
            "flickr30k_zeroshot": {"tr_r1": 50.0, "ir_r1": 1.0, "num_images": 100},
            "nlvr2": {"accuracy": 92.58},  # the paper's number: on the rim
            "coco_captioning": {"CIDEr": 0.738},  # our scorer's fraction; the paper prints x100
            "vqav2": {"overall": 10.0},  # below the prior baseline: at the centre
        },
    )
    points = {PAPER_AXES[i].label: (radius, value) for i, radius, value in radar_points(run)}
    assert points["Flickr30K ZS\nTR@1"] == (pytest.approx(49 / 93.9), 50.0)
    assert points["Flickr30K ZS\nIR@1"] == (0.0, 1.0)
    assert points["NLVR2\naccuracy"] == (pytest.approx(1.0), 92.58)
    assert points["COCO caption\nCIDEr"] == (pytest.approx(73.8 / 147.6), pytest.approx(73.8))
    assert points["VQAv2\naccuracy"] == (0.0, 10.0)
    assert len(points) == 5  # ADE20K, detection, ImageNet, fine-tuned retrieval: not drawn at all


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_value_labels_do_not_cover_axis_names(tmp_path):
    # Worst case: every value on the rim, two runs.
    at_paper = {}
    for axis in PAPER_AXES:
        scale = 0.01 if axis.metric == "CIDEr" else 1.0
        at_paper.setdefault(axis.unit, {})[axis.metric] = axis.paper * scale
    runs = [RunMetrics("a", "run a", at_paper), RunMetrics("b", "run b", {"nlvr2": {"accuracy": 99.0}})]
    fig = draw_radar(runs)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    names = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    values = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(values) == 13 and len(names) == 12
    assert not [(v, n) for v in values for n in names if _overlaps(v, n)]
    png = radar_chart(runs, tmp_path / "radar.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_rows_and_cli_show_missing_units_and_the_published_numbers(tmp_path, capsys):
    from flows.cli import main

    benchmarks = {"flickr30k_zeroshot": {"tr_r1": 12.5, "ir_r1": 7.5}, "coco_captioning": {"CIDEr": 0.5}}
    rows = {(r["unit"], r["metric"]): r for r in result_rows(benchmarks, reference=True)}
    assert rows[("ade20k", "mIoU")]["ours"] is None and rows[("ade20k", "mIoU")]["giant (paper)"] == 62.8
    assert rows[("coco_captioning", "CIDEr")]["ours"] == 50.0
    assert rows[("flickr30k_zeroshot", "tr_r1")]["large (release)"] == 90.7
    assert rows[("coco_zeroshot", "tr_r1")]["giant (paper)"] is None  # the paper reports none
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"benchmarks": {u: {"metrics": m} for u, m in benchmarks.items()}}))
    assert main(["report", str(results), "--reference", "paper"]) == 0
    out = capsys.readouterr().out
    assert "giant (paper)" in out and "base (release)" in out and "94.90" in out and "12.50" in out
    assert "missing" in out


def test_rows_put_each_metric_beside_its_baseline_scratch_run_and_margin(tmp_path, capsys):
    from flows.cli import main
    from flows.steps.report import _table

    baseline = {"metrics": {"CIDEr": 0.1}, "stderr": {"CIDEr": 0.02}, "predictor": "constant caption"}
    benchmarks = [
        {
            "task": "coco_captioning",
            "kind": "finetune-scratch",
            "status": "completed",
            "metrics": {"CIDEr": 0.14},
            "baseline": baseline,
        },
        {
            "task": "coco_captioning",
            "kind": "finetune",
            "status": "completed",
            "metrics": {"CIDEr": 0.3},
            "baseline": baseline,
        },
        {"task": "nlvr2", "kind": "finetune", "status": "completed", "metrics": {"accuracy": 55.0}},
    ]
    pretrained = {
        "run_name": "p",
        "mlflow_run_id": "r",
        "checkpoint": "c",
        "metrics": {"final_accuracy_text": 0.08, "final_baseline_text": 0.04, "loss": 3.0},
    }
    table = _table(pretrained, benchmarks)
    entry = table["benchmarks"]["coco_captioning"]
    # (0.3 - 0.1) / 0.02 = 10 standard errors; scratch (0.14 - 0.1) / 0.02 = 2.
    assert entry["margin"]["CIDEr"] == pytest.approx(10.0)
    assert entry["scratch"]["metrics"]["CIDEr"] == 0.14 and entry["scratch"]["margin"]["CIDEr"] == pytest.approx(2.0)
    assert "baseline" not in table["benchmarks"]["nlvr2"] and "margin" not in table["benchmarks"]["nlvr2"]

    results = tmp_path / "results.json"
    results.write_text(json.dumps(table))
    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    # CIDEr in the published x100 scale: ours 30.00, scratch 14.00, baseline 10.00 +- 2.00.
    assert "30.00" in out and "14.00" in out and "10.00 +- 2.00" in out and "10.0 se" in out and "2.0 se" in out
    # MDM: 8% masked-token accuracy against the 4% most-frequent-token baseline, 2x.
    assert "pretrain (MDM)" in out and "masked acc text" in out and "2.00x" in out


def test_retrieval_rows_lead_with_mean_recall_then_the_two_r_at_1():
    metrics = {"average_score": 7.5, "tr_r1": 1.0, "ir_r1": 2.0}
    metrics |= {"baseline_average_score": 2.7, "baseline_average_score_stderr": 0.9}
    metrics |= {"baseline_tr_r1": 0.5, "baseline_tr_r1_stderr": 0.5}
    rows = [r for r in result_rows({"coco_retrieval": metrics}, reference=False) if r["unit"] == "coco_retrieval"]
    assert [r["metric"] for r in rows] == ["average_score", "tr_r1", "ir_r1"]
    # (7.5 - 2.7) / 0.9 standard errors; R@1 (1.0 - 0.5) / 0.5 = 1; IR@1 has no baseline here.
    assert [r["margin"] for r in rows] == pytest.approx([4.8 / 0.9, 1.0, None])
