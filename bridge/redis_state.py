"""Whether this process can count on Redis right now, shared by every Redis user of the
real-time side (the Socket.IO manager, claims, cursor frontier, socket registry).

Redis going away is a transition, logged once; so is its return. While it is down the
process serves its own sockets from memory (see docs/realtime.md, "When Redis goes away").
Only the Socket.IO manager declares Redis back: after it has resubscribed and told the
other processes to resynchronise their sockets (realtime/manager.py).
"""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

log = logging.getLogger("bridge.realtime.redis")

# What a call to Redis raises when the server is away (refused, reset, timed out).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class RedisState:
    def __init__(self) -> None:
        self.up = True
        self.since = time.monotonic()
        # Outages seen by this process; a store can tell "still the same outage".
        self.outages = 0

    def down(self, reason: object) -> None:
        if not self.up:
            return
        self.up = False
        self.outages += 1
        self.since = time.monotonic()
        log.warning(
            "Redis is unreachable (%s): serving this process's sockets only, from memory, "
            "until it returns",
            reason,
        )

    def restored(self) -> None:
        if self.up:
            return
        downtime = time.monotonic() - self.since
        self.up = True
        self.since = time.monotonic()
        log.warning("Redis is back after %.1f s: fan-out across processes resumed", downtime)
