"""The benchmarks' round statistics and the rule that withholds a speed ratio drowned by noise."""

import pytest

from benchmarks.timing import LoadMeter, speed_ratio, spread, time_rounds


def test_spread_is_min_median_max() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}


def test_ratio_shown_when_every_pairing_of_rounds_agrees() -> None:
    # Candidate 1.0-1.1 s/step, yardstick 2.0-2.4: slowest pairing 2.0 / 1.1 = 1.82 > 1 -> shown.
    ratio = speed_ratio([1.0, 1.05, 1.1], [2.0, 2.2, 2.4])
    assert ratio["shown"] and ratio["median"] == pytest.approx(2.2 / 1.05)
    assert (ratio["low"], ratio["high"]) == pytest.approx((2.0 / 1.1, 2.4 / 1.0))
    assert ratio["text"].startswith("2.10x (range over rounds 1.82-2.40)")
    # Clearly slower is shown too (range wholly below 1).
    assert speed_ratio([2.0, 2.1], [1.0, 1.1])["shown"]


def test_ratio_withheld_when_the_spread_is_wider_than_the_effect() -> None:
    # Medians say 1.10x, but one noisy round of the candidate (1.3 s) is slower than the yardstick's fastest (1.05).
    ratio = speed_ratio([0.95, 1.0, 1.3], [1.05, 1.1, 1.2])
    assert ratio["median"] == pytest.approx(1.1) and not ratio["shown"]
    assert ratio["text"] == "no ratio: the spread over rounds is wider than the effect (range 0.81-1.26 spans 1)"


def test_time_rounds_alternates_and_counts_steps() -> None:
    calls: list[str] = []
    samples = time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 1, 3, lambda: None)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warmup, then alternating rounds of 2 steps
    assert [len(times) for times in samples.values()] == [3, 3]


def test_load_meter_reports_the_machine() -> None:
    with LoadMeter() as load:
        sum(range(10_000))
    report = load.report()
    assert set(report) == {"load_1min_before", "load_1min_after", "cpu_percent", "num_cpus", "busy"}
    assert report["num_cpus"] >= 1 and 0.0 <= report["cpu_percent"] <= 100.0
    load.load_before, load.load_after = report["num_cpus"] + 0.5, 0.0
    assert load.report()["busy"]
    load.load_before = load.load_after = report["num_cpus"] - 0.5
    assert not load.report()["busy"]
