"""The operator console in a real browser (Chromium through selenium) against `streamer serve`:
log in, watch an import complete, filter dead letters, replay one after its object is
uploaded, see the gallery complete with its thumbnails."""

from __future__ import annotations

import asyncio
import struct
import zlib

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from streamer.gallery.worker import gallery_runner
from tests.integration.api_support import FULL_TOKEN, READ_TOKEN, api_server
from tests.integration.browser import chromium, screenshot
from tests.integration.support import Sender, prepare, put_image, wait_for

pytestmark = pytest.mark.integration


def png(rgb: tuple[int, int, int], size: int = 24) -> bytes:
    """A small real PNG, so the browser can render the thumbnail."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def find(driver, by: str, value: str):
    """The element once the page that has it is there (a click navigates asynchronously);
    the failure shows what the browser got instead."""
    try:
        return WebDriverWait(driver, 30).until(
            expected_conditions.presence_of_element_located((by, value))
        )
    except TimeoutException:
        raise AssertionError(
            f"no {value} on {driver.current_url}: {driver.page_source[:3000]}"
        ) from None


def text_of(driver, element_id: str) -> str:
    return str(find(driver, By.ID, element_id).text)


def shows(driver, element_id: str, expected: str) -> bool:
    """Whether the element comes to hold the text. Two pages in a row can carry the same id
    (the dry run and the replay), so the element is looked up again until it does: the one
    found first may belong to the page that is going away."""
    try:
        return bool(
            WebDriverWait(driver, 30).until(
                expected_conditions.text_to_be_present_in_element((By.ID, element_id), expected)
            )
        )
    except TimeoutException:
        raise AssertionError(
            f"no {expected!r} in #{element_id} on {driver.current_url}: {driver.page_source[:3000]}"
        ) from None


def log_in(driver, url: str, token: str) -> None:
    driver.get(f"{url}/ui/")
    assert "/ui/login" in driver.current_url, "pages need a login"
    find(driver, By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    find(driver, By.ID, "bulks")
    assert driver.current_url.endswith("/ui/")


async def test_console_end_to_end(make_settings, tmp_path, s3_client) -> None:
    settings = make_settings()
    prepare(settings)
    put_image(s3_client, settings, "/console/a-1.png", png((200, 40, 40)))
    put_image(s3_client, settings, "/console/a-2.png", png((40, 160, 60)))
    items = [
        {
            "sku": "CON-A",
            "images": [
                {"file_path": "console/a-1.png", "label": "front", "roles": ["base"]},
                {"file_path": "console/a-2.png", "label": "back", "position": 2},
            ],
        },
        {"sku": "CON-B", "images": [{"file_path": "console/b-1.png", "roles": ["base"]}]},
    ]
    Sender(settings).raw(settings.topics.media_topic, b"CON-X", b"garbage, not avro at all")
    stop = asyncio.Event()
    worker = gallery_runner(settings, install_signal_handlers=False)
    task = asyncio.create_task(worker.run(stop))
    loop = asyncio.get_running_loop()
    try:
        with api_server(settings, tmp_path) as server, chromium(tmp_path / "profile") as driver:
            async with server.client() as http:
                reply = await http.post(
                    "/v1/galleries/bulk",
                    json={"request": {"request_id": "console", "items": items}},
                )
                assert reply.status_code == 202, reply.text
                bulk_uuid = reply.json()["bulk_uuid"]

                async def bulk() -> dict:
                    if task.done():
                        task.result()
                    return (await http.get(f"/v1/bulks/{bulk_uuid}")).json()

                async def complete() -> bool:
                    return bool((await bulk())["complete"])

                await wait_for(complete, timeout_s=120, what="the bulk to complete")

            def browse_read_only() -> None:
                log_in(driver, server.url, READ_TOKEN)
                assert "read-only" in driver.find_element(By.CLASS_NAME, "who").text
                driver.get(f"{server.url}/ui/dead-letters")
                find(driver, By.ID, "letters")
                assert driver.find_elements(By.ID, "dry-run") == [], "no replay for a reader"
                driver.find_element(By.ID, "logout").click()
                find(driver, By.ID, "login-form")
                driver.get(f"{server.url}/ui/")
                find(driver, By.ID, "login-form")  # logged out: back to the login page

            await loop.run_in_executor(None, browse_read_only)

            def browse() -> str:
                screenshot(driver, "01-login")
                log_in(driver, server.url, FULL_TOKEN)
                row = driver.find_element(By.CSS_SELECTOR, f"tr[data-bulk='{bulk_uuid}']")
                assert row.find_element(By.CLASS_NAME, "state").text == "complete"
                assert "2 / 2" in row.text
                screenshot(driver, "02-imports")
                row.find_element(By.TAG_NAME, "a").click()
                assert find(driver, By.CLASS_NAME, "count-written").text == "1"
                assert driver.find_element(By.CLASS_NAME, "count-partial").text == "1"
                screenshot(driver, "03-import-detail")

                driver.find_element(By.ID, "nav-dead-letters").click()
                find(driver, By.ID, "by-reason")
                reasons = [e.text for e in driver.find_elements(By.CLASS_NAME, "reason-link")]
                assert sorted(reasons) == ["object_missing", "unknown_framing"]
                screenshot(driver, "04-dead-letters")
                driver.find_element(By.LINK_TEXT, "object_missing").click()
                WebDriverWait(driver, 30).until(lambda d: "reason=object_missing" in d.current_url)
                find(driver, By.ID, "letters")
                letters = driver.find_elements(By.CSS_SELECTOR, "tr.letter")
                assert [r.find_element(By.CLASS_NAME, "reason").text for r in letters] == [
                    "object_missing"
                ]
                driver.find_element(By.ID, "filter-sku").send_keys("CON-B")
                driver.find_element(By.ID, "apply-filters").click()
                WebDriverWait(driver, 30).until(lambda d: "sku=CON-B" in d.current_url)
                find(driver, By.ID, "letters")
                (letter,) = driver.find_elements(By.CSS_SELECTOR, "tr.letter")
                letter.find_element(By.TAG_NAME, "summary").click()
                event = letter.find_element(By.CLASS_NAME, "event").text
                assert '"file_path": "/console/b-1.png"' in event and '"sku": "CON-B"' in event
                assert "streamer.gallery" not in event
                assert "gallery" in letter.text  # the job header
                screenshot(driver, "05-dead-letter-details")
                page = driver.page_source
                assert FULL_TOKEN not in page and READ_TOKEN not in page
                return driver.get_cookie("streamer_session")["value"]

            session_cookie = await loop.run_in_executor(None, browse)
            assert FULL_TOKEN not in session_cookie

            # A console action needs the page's CSRF token, not just the cookie.
            async with httpx.AsyncClient(
                base_url=server.url, cookies={"streamer_session": session_cookie}
            ) as browserless:
                for csrf in (None, "forged"):
                    data = {"selected": "0:0", **({"csrf": csrf} if csrf else {})}
                    forged = await browserless.post("/ui/dead-letters/replay", data=data)
                    assert forged.status_code == 403, forged.text
                assert (await browserless.post("/v1/galleries/bulk", json={})).status_code == 401

            put_image(s3_client, settings, "/console/b-1.png", png((40, 60, 200)))

            def replay() -> None:
                driver.find_element(By.CLASS_NAME, "select-letter").click()
                driver.find_element(By.ID, "dry-run").click()
                assert shows(
                    driver, "replay-result", "1 of 1 selected dead letter(s) would be sent"
                )
                screenshot(driver, "06-replay-dry-run")
                driver.find_element(By.ID, "confirm-replay").click()
                assert shows(driver, "replay-result", "Replayed 1 dead letter(s)")
                screenshot(driver, "07-replayed")

            await loop.run_in_executor(None, replay)

            async with server.client() as http:

                async def replayed() -> bool:
                    if task.done():
                        task.result()
                    items = (
                        await http.get(f"/v1/bulks/{bulk_uuid}", params={"items": "true"})
                    ).json()["items"]
                    return [i["outcome"] for i in items] == ["written", "written"]

                await wait_for(replayed, timeout_s=120, what="the replayed item to be written")

            def gallery() -> None:
                driver.get(f"{server.url}/ui/galleries")
                find(driver, By.ID, "sku").send_keys("CON-B")
                driver.find_element(By.ID, "show-gallery").click()
                find(driver, By.ID, "images")
                paths = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.image .path")]
                assert paths == ["/console/b-1.png"]
                thumb = driver.find_element(By.CLASS_NAME, "thumb")
                assert "X-Amz-Expires=300" in thumb.get_attribute("src")
                assert (
                    driver.execute_script(
                        "const i = arguments[0]; return i.complete && i.naturalWidth;", thumb
                    )
                    == 24
                ), "the presigned thumbnail loaded in the browser"
                screenshot(driver, "08-gallery-complete")
                driver.get(f"{server.url}/ui/galleries?sku=CON-A")
                assert len(driver.find_elements(By.CSS_SELECTOR, "tr.image")) == 2
                screenshot(driver, "09-gallery-two-images")

            await loop.run_in_executor(None, gallery)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
