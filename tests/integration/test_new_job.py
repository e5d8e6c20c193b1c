"""A job written the way README's "Writing a job" says, in a package of its own outside
streamer, with nothing but the public runtime API (``streamer.runtime``), run against the
real broker and database: its settings section, its migrations, its handler, its
descriptor. It names no consumer group, so it gets one of its own.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.runtime.metrics import new_registry
from tests.integration.support import Sender, dead_letters, fetch, prepare, stored_offsets, wait_for

pytestmark = pytest.mark.integration

FILES = {
    "__init__.py": '"""A job of its own: counts messages per key."""\n',
    "settings.py": '''
        """The job's settings section: ``STREAMER_TALLY_TOPIC``."""

        from streamer.runtime import NonBlank, Section


        class TallySettings(Section):
            tally_topic: NonBlank = "tally.v1"
    ''',
    "sql/__init__.py": "",
    "sql/0001_tally.sql": """
        CREATE TABLE IF NOT EXISTS tally (key text PRIMARY KEY, n bigint NOT NULL);
    """,
    "handler.py": '''
        """Counts messages per key; a message without a key is dead-lettered."""

        from collections import Counter

        from streamer.runtime import (
            Batch,
            NonRetriableError,
            Output,
            SimpleHandler,
            Transaction,
        )


        class NoKey(NonRetriableError):
            reason = "no_key"


        class TallyHandler(SimpleHandler[Batch]):
            name = "tally"

            def __init__(self, topic: str) -> None:
                self.topics = (topic,)

            async def decode(self, batch: Batch) -> Batch:
                return batch

            async def persist(self, tx: Transaction, plan: Batch, effects: None) -> Output:
                output = Output()
                counts: Counter[str] = Counter()
                for msg in plan.messages:
                    if msg.key():
                        counts[msg.key().decode()] += 1
                    else:
                        output.letters.append(self.ctx.dead_letter(msg, NoKey("no key")))
                await tx.conn.execute(
                    "INSERT INTO tally (key, n) SELECT * FROM unnest($1::text[], $2::bigint[])"
                    " ON CONFLICT (key) DO UPDATE SET n = tally.n + EXCLUDED.n",
                    list(counts),
                    list(counts.values()),
                )
                output.counts["counted"] += sum(counts.values())
                return output
    ''',
    "job.py": '''
        """The job, registered."""

        from typing import Any

        from streamer.runtime import Job, Runner, Sections

        from {package}.handler import TallyHandler
        from {package}.settings import TallySettings


        def runner(sections: Sections, **kw: Any) -> Runner[Any, Any, Any]:
            handler = TallyHandler(sections.section(TallySettings).tally_topic)
            return Runner.of(handler, sections, group_id=JOB.group(sections), **kw)


        JOB = Job(
            name="{name}",
            sections=(TallySettings,),
            migrations=("{package}.sql",),
            topics=lambda s: (s.section(TallySettings).tally_topic,),
            runner=runner,
        )
    ''',
}


def write_package(root: Path, package: str, name: str) -> None:
    for relative, text in FILES.items():
        path = root / package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(package=package, name=name).lstrip())


async def test_a_job_written_from_the_readme_runs_on_the_public_runtime_api(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    package, name = f"tallyjob_{tag}", f"tally-{tag}"
    write_package(tmp_path, package, name)
    for path in (tmp_path / package).rglob("*.py"):
        imported = re.findall(r"^from (streamer[\w.]*) import", path.read_text(), re.M)
        assert set(imported) <= {"streamer.runtime"}, (path.name, imported)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = importlib.import_module(f"{package}.job").JOB
    settings_module = importlib.import_module(f"{package}.settings")

    base = make_settings(topic_partitions=2)
    prepare(base)
    topic = f"t{tag}.tally.v1"
    monkeypatch.setenv("STREAMER_TALLY_TOPIC", topic)
    settings = base.replace()  # reads the variable when the job asks for its section
    assert settings.section(settings_module.TallySettings).tally_topic == topic
    assert job.group(settings) == f"streamer-{name}", "a job that names no group gets its own"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka.client_config())
    (created,) = admin.create_topics([NewTopic(t, 2) for t in job.topics(settings)]).values()
    created.result(timeout=30)
    from streamer.runtime import migrate

    assert await migrate(settings.database.dsn, job.migrations) == [f"{package}/0001_tally"]

    sender = Sender(settings)
    for key in [b"a", b"b", None, b"a"] * 25:
        sender.raw(topic, key, b"x")
    sender.flush()
    worker = job.runner(settings, registry=new_registry(), install_signal_handlers=False)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    group = job.group(settings)
    try:

        async def drained() -> bool:
            if task.done():
                task.result()
            stored = await stored_offsets(settings.replace(group_id=group))
            return all(stored.get(tp, -1) >= end for tp, end in sender.ends.items())

        await wait_for(drained, timeout_s=90, what="the new job to drain its topic")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    rows = await fetch(settings, "SELECT key, n FROM tally ORDER BY key")
    assert [(r["key"], r["n"]) for r in rows] == [("a", 50), ("b", 25)]
    letters = dead_letters(settings)
    assert {(r.reason, r.job, r.group_id) for r in letters} == {("no_key", "tally", group)}
    assert len(letters) == 25
    sys.modules.pop(f"{package}.job", None)
