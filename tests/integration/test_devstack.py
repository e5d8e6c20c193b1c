"""The embedded stack itself: up is idempotent, down stops what up started and only that."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.dev.stack import DevStack, _pid_alive, pg_answers
from streamer.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.smoke]


def test_up_twice_is_harmless_and_down_leaves_nothing_running(tmp_path: Path) -> None:
    dev = DevStack(tmp_path / "home", database_url=None)
    first = dev.up()
    try:
        pids = [c.pid for c in first.components.values()]
        assert all(_pid_alive(pid) for pid in pids)
        assert all(dev.status().values())
        assert pg_answers(first.database_url)

        second = dev.up()
        assert second == first
        # dev.env and stack.json carry the S3 secret: their owner's only.
        assert dev.env_file.stat().st_mode & 0o777 == 0o600
        assert dev.state_file.stat().st_mode & 0o777 == 0o600

        settings = load_settings(env_file=dev.env_file)
        assert settings.kafka.kafka_bootstrap == first.kafka_bootstrap
        assert settings.s3.s3_endpoint_url == first.s3_endpoint_url
        assert settings.kafka.fetch_wait_max_ms == 10
        # The bucket notifies a queue on moto: `streamer objects consume` reads it.
        assert first.objects_sqs_url is not None
        assert settings.objects.objects_sqs_url == first.objects_sqs_url
    finally:
        stopped = dev.down()
    assert sorted(stopped) == ["kafka", "postgres", "s3"]
    assert not any(_pid_alive(pid) for pid in pids)
    assert not dev.state_file.exists()


def test_external_database_is_used_and_never_stopped(tmp_path: Path, stack) -> None:
    admin = stack.components["postgres"].url
    dev = DevStack(tmp_path / "home", database_url=admin, database="streamer_devstack_probe")
    state = dev.up()
    try:
        assert state.components["postgres"].owned is False
    finally:
        stopped = dev.down()
    assert "postgres" not in stopped
    assert pg_answers(admin)


def test_unreachable_database_url_falls_back_to_an_owned_server(tmp_path: Path) -> None:
    dev = DevStack(tmp_path / "home", database_url="postgresql://postgres@127.0.0.1:1/postgres")
    state = dev.up()
    try:
        assert state.components["postgres"].owned is True
        assert pg_answers(state.database_url)
    finally:
        dev.down()
