"""The jobs page's charts and samples: pure, no servers."""

from __future__ import annotations

import re
from collections import deque

import pytest

from streamer.api.charts import line_chart
from streamer.api.sampling import JobSampler, Sample

pytestmark = pytest.mark.unit


def test_a_series_is_a_polyline_inside_the_plot_with_the_maximum_on_the_axis() -> None:
    svg = line_chart(
        {"gallery <sync>": [(940.0, 0.0), (970.0, 40.0), (1000.0, 10.0)], "idle": []},
        title="throughput",
        unit="messages/s",
        now_s=1000.0,
        span_s=60.0,
        width=560,
        height=180,
        chart_id="c",
    )
    (points,) = re.findall(r'<polyline points="([^"]+)"', svg)
    xs = [float(p.split(",")[0]) for p in points.split()]
    ys = [float(p.split(",")[1]) for p in points.split()]
    assert xs == sorted(xs) and xs[0] >= 48 and xs[-1] <= 560 - 12
    assert min(ys) == pytest.approx(24.0)  # 40, the maximum, at the top of the plot
    assert ">40<" in svg and "gallery &lt;sync&gt;" in svg and "-1 min" in svg


def test_no_sample_says_so() -> None:
    svg = line_chart({}, title="lag", unit="messages", now_s=0.0)
    assert "no samples yet" in svg and "<polyline" not in svg


def test_throughput_is_the_growth_of_committed_positions_between_samples() -> None:
    sampler = JobSampler.__new__(JobSampler)
    sampler.samples = deque(
        [
            Sample(100.0, {"gallery": 1000}, {"gallery": 50}),
            Sample(110.0, {"gallery": 1500}, {"gallery": 0}),
            Sample(120.0, {"gallery": 1400}, {"gallery": 0}),  # a reset never goes negative
        ]
    )
    assert sampler.throughput() == {"gallery": [(110.0, 50.0), (120.0, 0.0)]}
    assert sampler.lag() == {"gallery": [(100.0, 50.0), (110.0, 0.0), (120.0, 0.0)]}
