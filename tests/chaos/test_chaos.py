"""The chaos campaign: seeded runs of faults against workers and parts, each checked
against the oracle. ``make chaos`` runs 20 seeds (``CHAOS_RUNS=N`` for another count);
a failing seed reproduces with ``make chaos CHAOS_SEED=N``. Each run prints what it planned
and what fired (faults by kind, crash points, time); a planned kind that fired none fails
it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.run import chaos_run

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


async def test_final_state_matches_the_oracle_whatever_the_faults(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[str] = []
    result = await chaos_run(seed, tmp_path, log=lines.append)
    with capsys.disabled():
        print(
            f"\nseed {seed}: {result.events} events, {result.replayed} dead letters to replay,"
            f" re-checks {result.rechecks}, content_version bounded for {result.bounded} images"
            f" (extra content changes {result.lag_bumps}), {result.seconds:.0f}s"
        )
        print("\n".join(result.tally.table(result.seconds)))
        print(result.tally.row(seed, result.seconds))
    assert result.mismatches == [], "\n".join(
        [
            f"seed {seed} (reproduce: make chaos CHAOS_SEED={seed}); logs in {tmp_path}",
            *lines,
            *result.mismatches,
        ]
    )
