"""The attempts of each delivery of the batch in hand, and when a failing one is given up. Pure.

A batch's deliveries are retried until each is delivered (2xx) or refused (4xx, dead
letter). A delivery that keeps failing retriably is given up (dead-lettered as
``webhook_failing``) only after ``max_attempts`` attempts that the receiver answered
(a status or a timeout: attempts that could not connect say the endpoint is down, not
that this payload fails) *and* only if the receiver accepted another delivery since this
one's first attempt started: that proves the endpoint works and this payload is what
fails. While nothing gets through, it is an outage: the batch waits (circuit open,
partitions paused) and nothing is dead-lettered.

Entries live until the batch commits (``clear``), so a batch retried after a pause,
a failed commit or a fencing does not send again what already got a 2xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from streamer.forward.responses import Answer

__all__ = ["Attempts", "Final", "Ledger"]

Final = Literal["delivered", "refused", "failing"]


@dataclass
class Attempts:
    count: int = 0
    answered: int = 0  # attempts that reached the receiver (not connection failures)
    first_started: float = 0.0  # monotonic, for the give-up rule
    first_wall_ms: int = 0
    last_wall_ms: int = 0
    last: Answer | None = None
    final: Final | None = None


class Ledger:
    def __init__(
        self,
        max_attempts: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self._clock = clock
        self._wall_ms = wall_ms
        self._entries: dict[str, Attempts] = {}
        # When the receiver last accepted anything (kept across batches: endpoint health).
        self.last_success = float("-inf")

    def get(self, webhook_id: str) -> Attempts | None:
        return self._entries.get(webhook_id)

    def finished(self, webhook_id: str) -> bool:
        entry = self._entries.get(webhook_id)
        return entry is not None and entry.final is not None

    def delivered(self, webhook_id: str) -> bool:
        entry = self._entries.get(webhook_id)
        return entry is not None and entry.final == "delivered"

    def started(self, webhook_id: str) -> float:
        """Note an attempt's start; returns its monotonic start time."""
        now = self._clock()
        entry = self._entries.setdefault(webhook_id, Attempts())
        if entry.count == 0:
            entry.first_started = now
            entry.first_wall_ms = self._wall_ms()
        return now

    def record(self, webhook_id: str, answer: Answer, started: float) -> Attempts:
        entry = self._entries.setdefault(webhook_id, Attempts(first_started=started))
        entry.count += 1
        entry.answered += answer.result != "network"
        entry.last = answer
        entry.last_wall_ms = self._wall_ms()
        if entry.first_wall_ms == 0:
            entry.first_wall_ms = entry.last_wall_ms
        if answer.kind == "delivered":
            entry.final = "delivered"
            self.last_success = max(self.last_success, self._clock())
        elif answer.kind == "refused":
            entry.final = "refused"
        elif answer.kind in ("retry", "redirect") and self.gives_up(entry):
            entry.final = "failing"
        return entry

    def gives_up(self, entry: Attempts) -> bool:
        return entry.answered >= self.max_attempts and self.last_success >= entry.first_started

    def clear(self) -> None:
        self._entries.clear()
