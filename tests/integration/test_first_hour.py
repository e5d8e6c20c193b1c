"""The README's first hour, run as written: a fresh clone of the repository, `streamer demo`,
then every bash block of the section "The first hour", in order, in one shell.

The clone reuses this checkout's installed venv (a symlink) and starts its own embedded
stack in its own `.streamer`; everything it starts is stopped at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from streamer.dev.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def first_hour_script(readme: str) -> str:
    start = readme.index("<!-- first-hour")
    end = readme.index("<!-- /first-hour -->")
    blocks = BLOCK.findall(readme[start:end])
    assert len(blocks) >= 5, "the section's commands were found"
    return "set -euo pipefail\n" + "\n".join(blocks)


def test_the_first_hour_from_a_fresh_clone(repo_root: Path, tmp_path: Path) -> None:
    clone = tmp_path / "streamer"
    subprocess.run(["git", "clone", "--quiet", str(repo_root), str(clone)], check=True)
    (clone / ".venv").symlink_to(repo_root / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        PATH=f"{clone / '.venv' / 'bin'}:{env.get('PATH', '')}",
        STREAMER_API_PORT=str(free_port()),
        NO_PROXY="127.0.0.1,localhost",
        COLUMNS="100",
    )
    log = tmp_path / "first-hour.log"
    script = tmp_path / "first-hour.sh"
    script.write_text(first_hour_script((clone / "README.md").read_text()))
    try:
        with log.open("w") as out:
            demo = subprocess.run(
                ["streamer", "demo"],
                cwd=clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
            )
        assert demo.returncode == 0, log.read_text()[-5000:]
        assert "default topics ready" in log.read_text()
        with log.open("w") as out:
            shell = subprocess.Popen(
                ["bash", str(script)],
                cwd=clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode = shell.wait(timeout=600)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(shell.pid, signal.SIGTERM)  # anything it left in the background
        output = log.read_text()
        assert returncode == 0, output[-8000:]
        # step 4: the curl answer ends complete, with each item's outcome
        assert '"complete":true' in output.replace(" ", ""), output[-8000:]
        assert '"outcome":"partial","outcome_reason":"object_missing"' in output.replace(" ", "")
        # step 5: the replayed dead letter completed MUG-2's gallery, and is marked replayed
        assert "/mugs/mug-side.png" in output.split("gallery show MUG-2")[-1]
        assert "1 dead letters, 1 replayed" in output.split("replay --reason object_missing")[-1]
    finally:
        subprocess.run(
            ["streamer", "dev", "down"], cwd=clone, env=env, capture_output=True, timeout=120
        )
