"""The HTTP side: one signed POST to the receiver, answered with an ``Answer``, never an exception.

One ``httpx.AsyncClient`` for the forwarder's life (connections reused, at most
``webhook_max_in_flight`` of them), redirects not followed (``responses`` says why),
each exchange bounded by ``webhook_timeout_s`` as a whole. Of the response body only
the first ``EXCERPT_BYTES`` are read, for the dead letter and the log: a receiver that
answers with 10 MB costs 2 KiB of memory, and the connection is dropped rather than
drained. Secret values (signing secrets, static headers) are cut out of excerpts in
case a receiver echoes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx

from streamer import __version__
from streamer.forward.responses import Answer, classify, no_answer
from streamer.forward.settings import ForwardSettings
from streamer.forward.signing import SigningKeys, signature_headers

__all__ = ["EXCERPT_BYTES", "WebhookClient"]

EXCERPT_BYTES = 2048
USER_AGENT = f"streamer-forward/{__version__}"


def _without_query(url: str | None) -> str | None:
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class WebhookClient:
    def __init__(
        self,
        settings: ForwardSettings,
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.webhook_url:
            raise ValueError("STREAMER_WEBHOOK_URL is not set")
        self.url = settings.webhook_url
        self.origin = settings.origin
        self.host = urlsplit(settings.webhook_url).hostname or ""
        self.timeout_s = settings.webhook_timeout_s
        self.traceparent = settings.webhook_traceparent
        self._keys = keys
        self._clock = clock
        self._static = settings.static_headers()
        self._secrets = [v for v in self._static.values() if len(v) >= 4]
        if settings.webhook_secret is not None:
            self._secrets += settings.webhook_secret.get_secret_value().replace(",", " ").split()
        self._limits = httpx.Limits(
            max_connections=settings.webhook_max_in_flight,
            max_keepalive_connections=settings.webhook_max_in_flight,
        )
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"WebhookClient({self.origin})"

    async def start(self) -> None:
        if self._client is None:
            # httpx logs every request with its full URL at INFO: too much, and the path or
            # query may carry a token. The forwarder logs failures itself, by origin.
            logging.getLogger("httpx").setLevel(logging.WARNING)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                limits=self._limits,
                follow_redirects=False,
                headers={
                    "user-agent": USER_AGENT,
                    "content-type": "application/json",
                    # Excerpts are read raw: a compressed body could not be cut by bytes.
                    "accept-encoding": "identity",
                    **self._static,
                },
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> WebhookClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _redacted(self, text: str) -> str:
        for secret in self._secrets:
            # as given, and as a repr of the str or bytes quotes it (h11 names bad values so)
            for form in (secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]):
                text = text.replace(form, "[redacted]")
        return text

    async def post(
        self, webhook_id: str, body: bytes, *, trace: Mapping[str, str] | None = None
    ) -> Answer:
        """Sign and send ``body``; signed anew per attempt (receivers reject stale timestamps).

        ``trace``: the delivery's ``traceparent`` (and ``tracestate``), sent unless
        ``STREAMER_WEBHOOK_TRACEPARENT`` is false."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        headers = dict(signature_headers(self._keys, webhook_id, int(self._clock()), body))
        if trace and self.traceparent:
            headers.update(trace)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self._client.build_request(
                    "POST", self.url, content=body, headers=headers
                )
                response = await self._client.send(request, stream=True)
                try:
                    excerpt = await self._excerpt(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return no_answer(
                "timeout",
                f"no answer from {self.origin} within {self.timeout_s:g}s",
                time.perf_counter() - started,
            )
        except httpx.HTTPError as exc:
            return no_answer(
                "network",
                f"cannot reach {self.origin}: {type(exc).__name__}: {self._redacted(str(exc))}",
                time.perf_counter() - started,
            )
        return classify(
            response.status_code,
            retry_after=response.headers.get("retry-after"),
            location=_without_query(response.headers.get("location")),
            excerpt=excerpt,
            elapsed_s=time.perf_counter() - started,
        )

    async def _excerpt(self, response: httpx.Response) -> str:
        """The body's first ``EXCERPT_BYTES``; the rest is never read."""
        got = bytearray()
        async for chunk in response.aiter_raw():
            got += chunk
            if len(got) >= EXCERPT_BYTES:
                break
        text = bytes(got[:EXCERPT_BYTES]).decode("utf-8", "replace")
        return self._redacted(text.strip())
