"""Typing from sockets to Matrix, at most one homeserver write per user and room per interval.

Clients send ``typing`` on every keystroke. A start is written once and renewed only after
``interval`` seconds; a stop after a written start goes out at once; a start right after a
stop waits for the interval and is written then if still wanted. So whatever a client
sends, one user in one room costs at most one start and one stop per interval.

A socket's emits are handled concurrently, so writes of one user and room go out one after
another, in the order they were decided: a stop sent beside a start must not reach the
homeserver first. A queued write that a later one supersedes is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ..matrix.client import MatrixClient
from ..tasks import stop_all

log = logging.getLogger("bridge.realtime.typing")

_KEPT = 10000


@dataclass
class _State:
    written: bool = False  # what the homeserver was last told, or is being told
    written_at: float = float("-inf")
    wanted: bool = False
    later: asyncio.TimerHandle | None = None
    decided: int = 0  # writes decided so far; a write runs only if it is still the newest
    told: tuple[bool, float] = (False, float("-inf"))  # what the homeserver confirmed
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


class TypingThrottle:
    def __init__(self, matrix: MatrixClient, timeout_ms: int, interval: float) -> None:
        self.matrix = matrix
        self.timeout_ms = timeout_ms
        self.interval = interval
        # (room, mxid) -> throttle state: past _KEPT entries the idle ones are pruned.
        self._states: dict[tuple[str, str], _State] = {}
        # Writes in flight only (each removes itself when done).
        self._tasks: set[asyncio.Task[None]] = set()

    async def set(self, room_id: str, mxid: str, typing: bool) -> None:
        key = (room_id, mxid)
        state = self._states.get(key)
        if state is None:
            self._prune()
            state = self._states[key] = _State()
        state.wanted = typing
        since = time.monotonic() - state.written_at
        if not typing:
            self._cancel(state)
            if state.written:
                await self._write(key, state, False)
        elif state.written and since < self.interval:
            return  # still typing as far as the homeserver knows; renewed later
        elif not state.written and since < self.interval:
            self._write_later(key, state, self.interval - since)
        else:
            await self._write(key, state, True)

    async def _write(self, key: tuple[str, str], state: _State, typing: bool) -> None:
        # Recorded before the call: concurrent emits of one socket see it at once.
        at = time.monotonic()
        state.written, state.written_at = typing, at
        state.decided += 1
        mine = state.decided
        async with state.turn:
            if state.decided != mine:
                return  # a later write is queued behind this one and says what is wanted now
            try:
                await self.matrix.set_typing(key[0], key[1], self.timeout_ms if typing else 0)  # type: ignore[arg-type]
            except Exception:
                if state.decided == mine:
                    state.written, state.written_at = state.told
                raise
            state.told = (typing, at)

    def _write_later(self, key: tuple[str, str], state: _State, delay: float) -> None:
        if state.later is not None:
            return

        def fire() -> None:
            state.later = None
            if state.wanted != state.written:
                task = asyncio.create_task(self._trailing(key, state))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        state.later = asyncio.get_running_loop().call_later(delay, fire)

    async def _trailing(self, key: tuple[str, str], state: _State) -> None:
        try:
            await self._write(key, state, state.wanted)
        except Exception as e:
            log.warning("Cannot set typing of %s in %s: %s", key[1], key[0], e)

    @staticmethod
    def _cancel(state: _State) -> None:
        if state.later is not None:
            state.later.cancel()
            state.later = None

    def _prune(self) -> None:
        if len(self._states) < _KEPT:
            return
        now = time.monotonic()
        for key, state in list(self._states.items()):
            idle = not state.written and state.later is None and not state.turn.locked()
            if idle and now - state.written_at > self.interval:
                del self._states[key]

    async def close(self) -> None:
        for state in self._states.values():
            self._cancel(state)
        await stop_all(list(self._tasks))
