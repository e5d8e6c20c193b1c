"""Runs of the suite merged into min-max ranges (``benchmarks/ranges.py``), without servers."""

from __future__ import annotations

import pytest

from benchmarks.ranges import format_ranges, merge

pytestmark = pytest.mark.unit


def run(rate: float, p50: float | None, busy: float) -> dict[str, object]:
    phase = {
        "name": "noop_resync",
        "events_per_s": rate,
        "consumer_cpu_us_per_event": 100.0,
        "peak_rss_mb": 150.0,
        "latency_p50_ms": p50,
        "latency_p99_ms": None,
        "guarantee": "at least once",
    }
    return {
        "ceilings": {"broker_read_events_per_s": 10 * rate},
        "phases": [phase, {**phase, "events_per_s": rate / 2}],
        "run": {"skus": 5000, "machine_busy_pct": busy, "load_average_1m": [1.0, 2.0]},
    }


def test_each_figure_becomes_its_range_and_a_repeated_phase_is_matched_by_its_place() -> None:
    merged = merge([run(1000, 20.0, 50), run(1500, None, 90), run(1200, 30.0, 70)])
    assert merged["ceilings"] == {"broker_read_events_per_s": [10_000, 15_000]}
    first, second = merged["phases"]
    assert first["events_per_s"] == [1000, 1500] and second["events_per_s"] == [500, 750]
    assert first["latency_p50_ms"] == [20.0, 30.0]  # a run without it is left out
    assert first["latency_p99_ms"] is None and first["runs"] == 3
    assert first["guarantee"] == "at least once"
    assert merged["run"]["runs"] == 3 and merged["run"]["skus"] == 5000
    assert merged["run"]["machine_busy_pct"] == [50, 90, 70]
    assert len(merged["runs"]) == 3
    table = format_ranges(merged)
    assert "1,000-1,500" in table and "20-30" in table


def test_nothing_to_merge_is_an_error() -> None:
    with pytest.raises(ValueError, match="no runs"):
        merge([])
