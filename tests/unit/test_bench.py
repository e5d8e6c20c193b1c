"""The benchmark's report: the JSON object issue #11 describes, an 80-column table, and
which ceiling binds a phase; without servers (no timing is asserted anywhere)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from benchmarks.suite import PLAIN, QUIX, QUIX_GUARANTEE, default_phases, peer_command, peer_env
from streamer.dev.bench import (
    PHASES,
    BenchResult,
    Ceilings,
    Phase,
    binding,
    commits,
    committed_ranges,
    format_table,
    latencies_of,
    percentiles_ms,
    run_benchmark,
)
from streamer.dev.loadgen import object_paths
from streamer.gallery.etag_plan import PROBE_MIN_KEYS, FolderSizes, folder_of, plan_lookups
from streamer.settings import Settings
from streamer.storage.keys import s3_key

pytestmark = pytest.mark.unit

CEILINGS = Ceilings(
    broker_read_events_per_s=40_000,
    s3_head_per_s=150,
    s3_list_keys_per_s=2_000,
    pg_upsert_rows_per_s=50_000,
)


def phase(name: str, **kw: float) -> Phase:
    values: dict[str, float] = {
        "events": 1_000_000,
        "images": 5_000_000,
        "seconds": 1234.5,
        "cpu_s": 95.0,
        "s3_requests": 1_234_567,
        "rows_written": 5_000_000,
        "peak_rss_mb": 1234.0,
    }
    values.update(kw)
    return Phase(name, **values)  # type: ignore[arg-type]


def test_json_has_exactly_the_described_keys() -> None:
    result = BenchResult(CEILINGS, [phase(name) for name in PHASES])
    data = json.loads(json.dumps(result.as_json()))
    assert set(data) == {"ceilings", "phases"}
    assert set(data["ceilings"]) == {
        "broker_read_events_per_s",
        "broker_read_cpu_us_per_event",
        "s3_head_per_s",
        "s3_list_keys_per_s",
        "pg_upsert_rows_per_s",
    }
    assert [p["name"] for p in data["phases"]] == [
        "first_sync",
        "noop_resync",
        "noop_resync_pruning",
        "noop_resync_index",
        "steady_sync",
        "naive_noop_resync",
        "trace_off",
        "trace_1.0",
        "trace_0.01",
    ]
    for p in data["phases"]:
        assert set(p) == {
            "name",
            "events",
            "seconds",
            "events_per_s",
            "images_per_s",
            "consumer_cpu_us_per_event",
            "s3_requests",
            "rows_written",
            "peak_rss_mb",
            "latency_p50_ms",
            "latency_p99_ms",
        }
    first = data["phases"][0]
    assert first["events_per_s"] == pytest.approx(1_000_000 / 1234.5, abs=0.1)
    assert first["consumer_cpu_us_per_event"] == pytest.approx(95.0, abs=0.1)


def test_the_table_fits_80_columns_even_with_large_figures() -> None:
    phases = [phase(name) for name in PHASES]
    phases.append(phase("naive", events=300, seconds=1.5, cpu_s=950.0, images=1_500_000_000))
    result = BenchResult(CEILINGS, phases)
    table = format_table(result)
    assert all(len(line) <= 80 for line in table.splitlines()), table
    assert "noop_resync_index" in table and "1.00M" in table and "5.00M" in table


@pytest.mark.parametrize(
    ("kw", "bound"),
    [
        ({"heads": 0, "listed_keys": 1_000_000, "rows_written": 0}, "S3 server"),
        ({"heads": 0, "listed_keys": 0, "rows_written": 0}, "broker read+decode"),
        ({"heads": 0, "listed_keys": 10_000, "rows_written": 5_000_000}, "PostgreSQL upsert"),
    ],
)
def test_the_binding_ceiling_is_the_lowest_rate_the_phase_could_reach(
    kw: dict[str, int], bound: str
) -> None:
    part, limit = binding(phase("p", **kw), CEILINGS)
    assert part == bound
    if bound == "S3 server":
        assert limit == pytest.approx(2_000)  # one listed key per event at 2,000 keys/s


def test_the_sharded_shape_is_magentos_layout_where_auto_heads() -> None:
    """Sharded: /a/b/ab12cd34.jpg, a few objects per folder, so ``auto`` HEADs every key of a
    batch; shared: folders of 500, so it lists them."""
    sharded = object_paths(10_000, "sharded")
    assert len(set(sharded)) == 10_000
    for path in sharded[:100]:
        _, first, second, name = path.split("/")
        assert (first, second) == (name[0], name[1]) and name.endswith(".jpg")
    per_folder = Counter(folder_of(p) for p in sharded)
    assert len(per_folder) > 1_200  # 36 x 36 folders, about 8 objects each
    batch = [s3_key("media", p) for p in sharded[:2_000]]
    assert max(Counter(folder_of(k) for k in batch).values()) < PROBE_MIN_KEYS
    assert not plan_lookups(batch, FolderSizes()).lists
    shared = [s3_key("media", p) for p in object_paths(2_000)]
    assert len(plan_lookups(shared, FolderSizes()).lists) == 4
    with pytest.raises(ValueError, match="unknown shape"):
        object_paths(1, "flat")


def test_the_suite_runs_the_plain_baseline_as_phases_of_the_same_run() -> None:
    assert list(PLAIN) == ["plain_first_sync", "plain_noop_resync"]
    with pytest.raises(ValueError, match="plain_first_sync"):
        asyncio.run(
            run_benchmark(
                None,
                n_skus=1,
                images_per_sku=1,
                n_objects=1,  # type: ignore[arg-type]
                phases=["nope"],
                extra_phases=PLAIN,
            )
        )


def test_latency_percentiles_are_nearest_rank_and_absent_without_observations() -> None:
    assert percentiles_ms([]) == (None, None)
    p50, p99 = percentiles_ms([i / 1000 for i in range(1, 201)])  # 1..200 ms
    assert p50 == pytest.approx(100) and p99 == pytest.approx(198)
    assert percentiles_ms([0.25]) == (250.0, 250.0)


def test_each_event_is_held_against_the_commit_of_the_batch_that_applied_it() -> None:
    batches = [
        (10.0, [("media", 0, 5, 7), ("product", 0, 0, 3)]),
        (12.0, [("media", 0, 7, 8), ("media", 1, 0, 1)]),
    ]
    ranges = committed_ranges(batches, "media")
    assert ranges == {("media", 0): (5, 8), ("media", 1): (0, 1)}
    stamps = {("media", 0): {5: 9.0, 6: 9.5, 7: 11.0}, ("media", 1): {0: 11.5}}
    assert latencies_of(batches, "media", stamps) == [1.0, 0.5, 1.0, 0.5]


def test_commit_records_are_kept_and_the_pipelines_other_lines_still_reach_its_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The benchmark reads the pipeline's debug record of each batch; its info lines (and
    nothing of the debug ones) still go where they went."""
    logger = logging.getLogger("streamer.runtime.pipeline")
    level = logger.level
    with caplog.at_level(logging.INFO, logger="streamer.runtime"), commits() as recorded:
        logger.debug("batch", extra={"committed_at": 5.0, "batch_offsets": [("t", 0, 1, 2)]})
        logger.info("planned again")
    assert recorded.batches == [(5.0, [("t", 0, 1, 2)])]
    assert [r.getMessage() for r in caplog.records] == ["planned again"]
    assert logger.level == level and logger.propagate


def test_each_quix_phase_runs_right_after_the_phase_that_publishes_its_messages() -> None:
    order = default_phases()
    assert sorted(order) == sorted([*PHASES, *PLAIN, *QUIX])
    assert order[order.index("first_sync") + 1] == "quixstreams_first_sync"
    assert order[order.index("noop_resync") + 1] == "quixstreams_noop_resync"


def test_a_quix_phase_refuses_to_run_after_a_later_phase_published() -> None:
    """A quix Application reads from its group's offsets to the topic's end: messages a later
    phase published would be read too."""
    ctx = SimpleNamespace(published={"first_sync": {}, "noop_resync": {}, "noop_resync_index": {}})
    with pytest.raises(ValueError, match="right after noop_resync"):
        asyncio.run(QUIX["quixstreams_noop_resync"](ctx))  # type: ignore[arg-type]


def test_the_peer_gets_its_secrets_in_its_environment_never_on_its_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUIX_PYTHON", sys.executable)
    settings = Settings.load(
        None,
        database_url="postgresql://u:db-secret@127.0.0.1/x",
        s3_access_key_id="key-id",
        s3_secret_access_key="s3-secret",
        kafka={"sasl.password": "kafka-secret"},
    )
    command = " ".join(peer_command(settings, "p", {("t", 0): 0}, {("t", 0): 5}, "tbl", "/tmp"))
    env = peer_env(settings)
    for secret in ("db-secret", "s3-secret", "kafka-secret"):
        assert secret not in command
        assert any(secret in value for value in env.values())
    assert '[["t", 0, 5]]' in command


def test_a_peer_phase_says_what_a_crash_costs_it_in_its_json() -> None:
    peer = phase("quixstreams_noop_resync")
    peer.guarantee = QUIX_GUARANTEE
    assert "at-least-once" in peer.as_json()["guarantee"]
    assert "guarantee" not in phase("noop_resync").as_json()
