"""Options of the chaos campaign: how many seeded runs, or one seed to reproduce."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos")
    group.addoption("--chaos-runs", type=int, default=3, help="seeded runs (make chaos: 20)")
    group.addoption("--chaos-seed", type=int, default=None, help="reproduce one seed")
    group.addoption("--chaos-first-seed", type=int, default=1, help="first seed of the runs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        config = metafunc.config
        one = config.getoption("--chaos-seed")
        first = config.getoption("--chaos-first-seed")
        seeds = (
            [one]
            if one is not None
            else list(range(first, first + config.getoption("--chaos-runs")))
        )
        metafunc.parametrize("seed", seeds)
