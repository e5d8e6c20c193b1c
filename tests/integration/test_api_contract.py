"""The HTTP API held to its own OpenAPI document: schemathesis, with every check it has,
against a real `streamer serve` on the embedded stack (fixed seed and example count;
`make fuzz-api` runs a random, longer campaign), and the errors it once found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.api_support import FULL_TOKEN, api_server
from tests.integration.support import prepare

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
SEED = 20261203
EXAMPLES = 30


def schemathesis(url: str, *args: str, report: Path) -> subprocess.CompletedProcess[str]:
    """The schemathesis command line, as `make fuzz-api` runs it."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--no-color",
        *args,
    ]
    env = {
        **os.environ,
        "NO_PROXY": "127.0.0.1,localhost",
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "PYTHONPATH": str(HERE.parents[1]),
        "STREAMER_FUZZ_TOKEN": FULL_TOKEN,
    }
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


async def test_schemathesis_finds_nothing(make_settings, tmp_path) -> None:
    settings = make_settings()
    prepare(settings)
    with api_server(settings, tmp_path, extra_env={"STREAMER_API_MAX_ITEMS": "50"}) as server:
        run = schemathesis(
            server.url,
            "--seed",
            str(SEED),
            "--max-examples",
            str(EXAMPLES),
            "--generation-deterministic",
            report=tmp_path / "schemathesis.xml",
        )
        log = server.output()
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    assert "No issues found" in run.stdout
    print("\n".join(line for line in run.stdout.splitlines() if "generated" in line))
    assert "Traceback" not in log, log[-5000:]


def assert_problem(reply: httpx.Response, status: int, reason: str) -> str:
    """An error answer: the status, ``{"reason", "detail"}`` and nothing else, no internals."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"reason", "detail"}, body
    assert body["reason"] == reason, body
    for internal in ("Error:", "Traceback", "asyncpg", "UTF8", "0x00", "KafkaError"):
        assert internal not in body["detail"], body
    return str(body["detail"])


async def test_errors_are_reason_and_detail_never_exception_text(make_settings, tmp_path) -> None:
    """Found by schemathesis: `GET /v1/bulks?request_id=<NUL>` answered 500 with PostgreSQL's
    exception text; a NUL in a bulk's own request_id or SKU reached PostgreSQL the same way."""
    settings = make_settings()
    prepare(settings)
    with api_server(settings, tmp_path) as server:
        async with server.client() as http:
            detail = assert_problem(
                await http.get("/v1/bulks", params={"request_id": "a\x00b"}),
                422,
                "invalid_request_id",
            )
            assert "request_id" in detail
            assert_problem(
                await http.post("/v1/events", params={"request_id": "x\x00"}, content=b"{}"),
                422,
                "invalid_request_id",
            )
            nul_id = {"request": {"request_id": "op\x00", "items": [{"sku": "A", "images": []}]}}
            assert "request_id" in assert_problem(
                await http.post("/v1/galleries/bulk", json=nul_id), 422, "invalid_request_id"
            )
            # A NUL in an item: that item is rejected, the bulk is tracked, nothing fails.
            items = [
                {"sku": "NUL\x00SKU", "images": [{"file_path": "a.jpg"}]},
                {"sku": "FINE", "images": [{"file_path": "a.jpg"}]},
            ]
            mixed = await http.post("/v1/galleries/bulk", json={"request": {"items": items}})
            assert mixed.status_code == 202, mixed.text
            acks = mixed.json()["request_items"]
            assert [a["status"] for a in acks] == ["rejected", "accepted"]
            tracked = await http.get(f"/v1/bulks/{mixed.json()['bulk_uuid']}?items=true")
            assert tracked.json()["items"][0]["sku"] == "NUL\\x00SKU"

            assert_problem(await http.get("/v1/bulks/not-a-uuid"), 422, "invalid_request")
            assert_problem(
                await http.get(f"/v1/bulks/{'0' * 8}-0000-0000-0000-{'0' * 12}"),
                404,
                "unknown_bulk",
            )
            assert_problem(await http.get("/v1/nothing-here"), 404, "not_found")
            assert_problem(await http.delete("/v1/bulks"), 405, "method_not_allowed")
            assert_problem(
                await http.get("/v1/bulks", params={"limit": "many"}), 422, "invalid_request"
            )
            assert_problem(
                await http.post(
                    "/v1/galleries/bulk", content=b"<xml/>", headers={"Content-Type": "text/xml"}
                ),
                415,
                "unsupported_media_type",
            )
            assert_problem(await http.post("/v1/events", content=b" \n "), 422, "empty_body")
            assert_problem(
                await http.post("/v1/galleries/bulk", json={"request": {"items": []}}),
                422,
                "malformed_bulk",
            )
        async with server.client(token=None) as anonymous:
            assert_problem(await anonymous.get("/v1/bulks"), 401, "missing_token")
    assert "Traceback" not in server.output()


async def test_the_document_describes_bodies_statuses_and_links(make_settings, tmp_path) -> None:
    settings = make_settings()
    prepare(settings)
    with api_server(settings, tmp_path) as server:
        async with server.client(token=None) as http:
            spec = (await http.get("/openapi.json")).json()
    bulk_route = spec["paths"]["/v1/galleries/bulk"]["post"]
    events_route = spec["paths"]["/v1/events"]["post"]
    assert bulk_route["requestBody"]["required"] is True
    assert "application/x-ndjson" in events_route["requestBody"]["content"]
    for route in (bulk_route, events_route):
        assert set(route["responses"]) >= {
            "200",
            "202",
            "400",
            "401",
            "403",
            "409",
            "413",
            "415",
            "422",
            "503",
        }
        assert route["responses"]["202"]["links"]["GetBulk"]["operationId"] == "bulk"
        assert {p["name"] for p in route["parameters"]} >= {"Prefer", "Idempotency-Key"}
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["components"]["schemas"]["BulkRequest"]["properties"]["request"]["required"] == [
        "items"
    ]
