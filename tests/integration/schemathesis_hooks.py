"""What schemathesis needs to know about streamer's API beyond its OpenAPI document.

Loaded with ``SCHEMATHESIS_HOOKS=tests.integration.schemathesis_hooks`` (the test and
``make fuzz-api`` set it).

- JSON lines (``application/x-ndjson``, ``application/jsonl``) go on the wire as text:
  schemathesis has no serializer of its own for them.
- An ``Idempotency-Key`` names one request: the same key with another body is refused
  with 422, as the IETF draft says, which no stateless check can know. Each generated
  key is therefore tied to the request it came with (a digest of the body and query is
  appended), so the same key and body still exercise the replay, while a new body does
  not reuse a key. ``test_idempotency`` checks the refusal itself. A key that breaks the
  header's rules is left alone, so the negative cases still reach the server.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import schemathesis

schemathesis.serializer.alias(["application/x-ndjson", "application/jsonl"], "text/plain")

_VALID_KEY = re.compile(r"[\x20-\x7e]{1,200}")


_JSON_LINES = ("application/x-ndjson", "application/jsonl")


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """A JSON-lines body is text: a generated non-text body (null, a number, an object)
    becomes text on the wire, which schemathesis allows for for text/plain only. Those
    cases are left to text/plain, where its check knows it."""
    return not (case.media_type in _JSON_LINES and not isinstance(case.body, str))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers or {}
    name = next((h for h in headers if h.lower() == "idempotency-key"), None)
    if name is None or not isinstance(headers[name], str):
        return
    if not _VALID_KEY.fullmatch(headers[name]):
        return
    digest = hashlib.sha256()
    for part in (case.query, case.body):
        digest.update(json.dumps(part, sort_keys=True, default=repr).encode())
    headers[name] = f"{headers[name]}.{digest.hexdigest()[:16]}"
