"""Several runs of the suite merged into one object: each figure as ``[min, max]`` over the
runs, so a reader sees the spread on a shared machine, not one lucky or unlucky run.

The merged object keeps the suite's shape (``ceilings``, ``phases``, ``run``): every number
of a ceiling or a phase becomes ``[min, max]`` (``null`` where no run measured it; a text,
such as a peer's ``guarantee``, stays as the first run gave it); the
same phase given twice in a run is matched by its name and its place among its namesakes.
``run`` says how many runs there were and how busy the machine was in each; ``runs`` keeps
every run's own object.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["format_ranges", "merge", "runs_apart"]

Range = list[float] | None


def _range(values: list[Any]) -> Range:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return [min(numbers), max(numbers)] if numbers else None


def _merged(values: list[Any]) -> Any:
    """A number's range; a text (a peer's guarantee) as the first run gave it."""
    texts = [v for v in values if isinstance(v, str)]
    return texts[0] if texts else _range(values)


def _phase_key(phases: list[dict[str, Any]]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    keys = []
    for phase in phases:
        seen[phase["name"]] = seen.get(phase["name"], 0) + 1
        keys.append((phase["name"], seen[phase["name"]]))
    return keys


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        raise ValueError("no runs to merge")
    ceilings = {k: _range([r["ceilings"].get(k) for r in results]) for k in results[0]["ceilings"]}
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for result in results:
        for key, phase in zip(_phase_key(result["phases"]), result["phases"], strict=True):
            by_key.setdefault(key, []).append(phase)
    phases = []
    for (name, _), runs in by_key.items():
        fields = [k for k in runs[0] if k != "name"]
        phases.append(
            {
                "name": name,
                "runs": len(runs),
                **{k: _merged([p.get(k) for p in runs]) for k in fields},
            }
        )
    return {
        "ceilings": ceilings,
        "phases": phases,
        "run": {
            "runs": len(results),
            **{k: v for k, v in results[0].get("run", {}).items() if not _varies(results, k)},
            "load_average_1m": [r.get("run", {}).get("load_average_1m") for r in results],
            "machine_busy_pct": [r.get("run", {}).get("machine_busy_pct") for r in results],
        },
        "runs": results,
    }


def _varies(results: list[dict[str, Any]], key: str) -> bool:
    return key in ("load_average_1m", "machine_busy_pct") or any(
        r.get("run", {}).get(key) != results[0].get("run", {}).get(key) for r in results
    )


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value < 100_000 else f"{value / 1000:,.1f}k"


def _shown(value: Range) -> str:
    if value is None:
        return "-"
    low, high = value
    return _figure(low) if low == high else f"{_figure(low)}-{_figure(high)}"


def format_ranges(merged: dict[str, Any]) -> str:
    """One line per phase: events/s, CPU per event, p50, p99 and peak RSS as min-max."""
    lines = [
        f"{merged['run']['runs']} runs, min-max; machine busy "
        + ", ".join(f"{b}%" for b in merged["run"]["machine_busy_pct"]),
        f"{'phase':<20}{'ev/s':>14}{'µs/ev':>15}{'p50 ms':>15}{'p99 ms':>15}{'RSS MB':>10}",
    ]
    for p in merged["phases"]:
        lines.append(
            f"{p['name'][:19]:<20}{_shown(p['events_per_s']):>14}"
            f"{_shown(p['consumer_cpu_us_per_event']):>15}{_shown(p.get('latency_p50_ms')):>15}"
            f"{_shown(p.get('latency_p99_ms')):>15}{_shown(p['peak_rss_mb']):>10}"
        )
    return "\n".join(lines)


def runs_apart(
    module: str, runs: int, argv: list[str], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """``python -m module`` run ``runs`` times, each in a process of its own (its peak RSS its own),
    with the same options; their JSON objects, in order."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--runs", "--json-out"):
            skip = True
        elif not arg.startswith(("--runs=", "--json-out=")):
            kept.append(arg)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run-{i}.json"
            log(f"run {i + 1} of {runs}")
            subprocess.run(
                [sys.executable, "-m", module, *kept, "--json-out", str(out)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            results.append(json.loads(out.read_text()))
    return results
