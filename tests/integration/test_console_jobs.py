"""The console's jobs page, its charts and the pages that used to answer JSON, in a real
browser (Chromium through selenium) against `streamer serve` and a running gallery worker.
Screenshots go to artifacts/console/."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from streamer.gallery.worker import gallery_runner
from tests.integration.api_support import FULL_TOKEN, api_server
from tests.integration.browser import chromium, screenshot
from tests.integration.support import prepare, put_image, replay, wait_for
from tests.integration.test_console import find, log_in, png, text_of

pytestmark = pytest.mark.integration


async def test_jobs_page_charts_and_pages_instead_of_json(
    make_settings, tmp_path, s3_client
) -> None:
    settings = make_settings()
    prepare(settings)
    put_image(s3_client, settings, "/jobs/front.png", png((30, 120, 200)))
    put_image(s3_client, settings, "/jobs/manual.pdf", b"%PDF-1.4 not an image")
    put_image(s3_client, settings, "/jobs/broken.png", b"these bytes are not a PNG")
    stop = asyncio.Event()
    worker = gallery_runner(settings, install_signal_handlers=False)
    task = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    env = {"STREAMER_API_SAMPLE_INTERVAL_S": "1"}
    try:
        with (
            api_server(settings, tmp_path, extra_env=env) as server,
            chromium(tmp_path / "profile") as driver,
        ):
            async with server.client() as http:
                items = [
                    {
                        "sku": "JOBS-1",
                        "images": [
                            {"file_path": "jobs/front.png", "roles": ["base"], "position": 1},
                            {"file_path": "jobs/manual.pdf", "position": 2},
                            {"file_path": "jobs/broken.png", "position": 3},
                        ],
                    },
                    {"sku": "JOBS-2", "images": [{"file_path": "jobs/later.png"}]},
                    *(
                        {"sku": f"JOBS-N{i}", "images": [{"file_path": "jobs/front.png"}]}
                        for i in range(40)
                    ),
                ]
                reply = await http.post(
                    "/v1/galleries/bulk",
                    json={"request": {"request_id": "jobs", "items": items}},
                    headers={"Prefer": "wait=120"},
                )
                assert reply.status_code == 200, reply.text

                async def sampled() -> bool:
                    if task.done():
                        task.result()
                    metrics = (await http.get("/ui/jobs")).text
                    return metrics.count("<polyline") >= 2

                await wait_for(sampled, timeout_s=120, what="two charts drawn from samples")
            put_image(s3_client, settings, "/jobs/later.png", png((200, 200, 40)))
            replayed = await replay(settings, reason="object_missing")
            assert replayed.replayed == 1

            def browse() -> None:
                log_in(driver, server.url, FULL_TOKEN)
                driver.find_element(By.ID, "nav-jobs").click()
                find(driver, By.ID, "jobs")
                row = driver.find_element(
                    By.CSS_SELECTOR, f"tr.job[data-group='{settings.gallery.group_id}']"
                )
                # Members as the broker lists them (Tansu lists none), owners as the workers'
                # claims in PostgreSQL say: one worker runs.
                assert row.find_element(By.CLASS_NAME, "members").text in ("0", "1"), row.text
                assert row.find_element(By.CLASS_NAME, "owners").text == "1", row.text
                assert row.find_element(By.CLASS_NAME, "lag").text.isdigit()
                assert "stable" in row.find_element(By.CLASS_NAME, "state").text
                detail = driver.find_element(By.ID, "job-1")
                partitions = detail.find_elements(By.CSS_SELECTOR, "table.partitions tbody tr")
                assert len(partitions) == 2 * settings.kafka.topic_partitions
                assert driver.find_elements(By.CSS_SELECTOR, "#chart-throughput polyline.series")
                assert driver.find_elements(By.CSS_SELECTOR, "#chart-lag polyline.series")
                screenshot(driver, "10-jobs")

                driver.get(f"{server.url}/ui/imports/{uuid.uuid4()}")
                assert "No import" in text_of(driver, "error-detail")
                assert driver.find_elements(By.ID, "nav-jobs"), "an error page keeps the navigation"
                screenshot(driver, "11-unknown-import")
                driver.get(f"{server.url}/ui/imports/not-a-uuid")
                assert "is a UUID" in text_of(driver, "error-detail")

                driver.get(f"{server.url}/ui/dead-letters")
                find(driver, By.ID, "letters")
                assert text_of(driver, "replayed-total") == "1"
                marks = [
                    e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.letter .replay-mark")
                ]
                assert any(m.startswith("replayed ") for m in marks), marks
                screenshot(driver, "12-dead-letters-replayed")
                driver.find_element(By.ID, "dry-run").click()  # nothing ticked
                assert "No dead letter was selected" in text_of(driver, "error-detail")
                screenshot(driver, "13-empty-replay")

                driver.get(f"{server.url}/ui/galleries?sku=JOBS-1")
                find(driver, By.ID, "images")
                WebDriverWait(driver, 30).until(
                    lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.image .no-preview")) == 2
                )
                images = driver.find_elements(By.CSS_SELECTOR, "tr.image img")
                assert len(images) == 1
                assert driver.execute_script(
                    "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
                ), "no broken thumbnail"
                screenshot(driver, "14-gallery-without-broken-thumbnails")

            await loop.run_in_executor(None, browse)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
