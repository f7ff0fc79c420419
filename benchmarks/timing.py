"""Round-based timing shared by the benchmarks: spread over rounds, machine load, and when a ratio may be shown.

A speed ratio between two things timed on a shared or noisy machine is only a figure when it survives the
noise. Each thing is timed in several alternating rounds; the report gives min / median / max seconds per
step over the rounds and the machine's load average and CPU use while measuring. The ratio of medians is
printed only when it holds for every pairing of rounds: the range [slowest-round ratio, fastest-round ratio]
must lie wholly above or wholly below 1. Otherwise the spread over rounds is wider than the effect, and the
benchmark prints that no ratio can be given, with the range. A load average above the number of cores marks
the measurement as taken on a busy machine, whatever the ratio rule says.
"""

import os
import statistics
import time
from collections.abc import Callable

import psutil


def time_rounds(
    steps: dict[str, Callable[[], None]], num_steps: int, warmup: int, rounds: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per step of each closure in every round; rounds alternate so that machine noise hits all."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(num_steps):
                step()
            sync()
            samples[name].append((time.perf_counter() - start) / num_steps)
    return samples


def spread(times: list[float]) -> dict[str, float]:
    """Min / median / max of per-round seconds."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def speed_ratio(fast: list[float], slow: list[float]) -> dict[str, float | bool | str]:
    """How many times faster `fast` is than `slow`, from per-round seconds per step, with the refusal rule.

    Args:
        fast: Seconds per step of the candidate in every round.
        slow: Seconds per step of the yardstick in every round.

    Returns:
        `median` (ratio of the medians), `low` (slowest candidate round against fastest yardstick round), `high`
        (the reverse), `shown` (whether [low, high] excludes 1) and `text` (what to print).
    """
    median = statistics.median(slow) / statistics.median(fast)
    low, high = min(slow) / max(fast), max(slow) / min(fast)
    shown = low > 1 or high < 1
    if shown:
        text = f"{median:.2f}x (range over rounds {low:.2f}-{high:.2f})"
    else:
        text = f"no ratio: the spread over rounds is wider than the effect (range {low:.2f}-{high:.2f} spans 1)"
    return {"median": median, "low": low, "high": high, "shown": shown, "text": text}


class LoadMeter:
    """Load average and CPU use of the whole machine over a measurement (our own threads included)."""

    def __enter__(self) -> "LoadMeter":
        self.load_before = os.getloadavg()[0]
        psutil.cpu_percent(interval=None)  # starts the interval that the next call reports on
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_percent = psutil.cpu_percent(interval=None)
        self.load_after = os.getloadavg()[0]

    def report(self) -> dict[str, float | int | bool]:
        """Load average before and after, mean CPU use (percent of all cores), core count, and `busy`.

        `busy` is set when the load average exceeded the number of cores: the processes then wait for a core
        rather than compute, and the timings say more about the scheduler than about the code.
        """
        num_cpus = os.cpu_count() or 1
        return {
            "load_1min_before": self.load_before,
            "load_1min_after": self.load_after,
            "cpu_percent": self.cpu_percent,
            "num_cpus": num_cpus,
            "busy": max(self.load_before, self.load_after) > num_cpus,
        }
