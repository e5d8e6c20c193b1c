"""``make fuzz-api``: schemathesis against a real `streamer serve` on a fresh embedded stack,
with a random seed and many examples (the test suite runs a fixed seed, briefly).

    python -m tests.integration.fuzz_api [--max-examples N] [--seed S] [-- extra schemathesis args]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import uuid
from pathlib import Path

from streamer.dev.stack import DevStack, ensure_database, with_database
from streamer.settings import Settings
from tests.conftest import _candidate_database_url, run_sync
from tests.integration.api_support import api_server
from tests.integration.support import prepare
from tests.integration.test_api_contract import schemathesis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("extra", nargs="*", help="more schemathesis run arguments")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="streamer-fuzz-") as tmp:
        home = Path(tmp)
        dev = DevStack(home / "stack", database_url=_candidate_database_url(), database="postgres")
        stack = dev.up()
        try:
            tag = uuid.uuid4().hex[:8]
            database = f"streamer_fuzz_{tag}"
            run_sync(ensure_database(with_database(stack.database_url, "postgres"), database))
            settings = Settings.load(
                None,
                kafka_bootstrap=stack.kafka_bootstrap,
                database_url=with_database(stack.database_url, database),
                product_topic=f"fuzz{tag}.catalog.product.v1",
                media_topic=f"fuzz{tag}.catalog.media.v1",
                outcome_topic=f"fuzz{tag}.catalog.gallery.updated.v1",
                import_completed_topic=f"fuzz{tag}.catalog.import.completed.v1",
                dlq_topic=f"fuzz{tag}.catalog.gallery.dlq",
                topic_partitions=4,
                s3_endpoint_url=stack.s3_endpoint_url,
                s3_bucket=stack.s3_bucket,
                metrics_port=0,
            )
            prepare(settings)
            with api_server(settings, home) as server:
                print(f"schemathesis against {server.url}, seed {seed}", file=sys.stderr)
                run = schemathesis(
                    server.url,
                    "--seed",
                    str(seed),
                    "--max-examples",
                    str(args.max_examples),
                    *args.extra,
                    report=home / "schemathesis.xml",
                )
            print(run.stdout)
            print(run.stderr, file=sys.stderr)
            print(f"seed {seed}: reproduce with --seed {seed}", file=sys.stderr)
            return run.returncode
        finally:
            dev.down()


if __name__ == "__main__":
    raise SystemExit(main())
