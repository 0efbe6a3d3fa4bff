"""The published marks of a batch whose announcements may not have left (the manager's
outbox did not flush) are kept for the next batch, not dropped. Unit test: the seam is the
manager's ``flush`` and the mark store; nothing else runs."""

from __future__ import annotations

from aiohttp import web

from bridge.realtime.log import DeliveryLog
from bridge.realtime.transport import BridgeRedisManager


class _Manager(BridgeRedisManager):
    def __init__(self) -> None:  # no Redis: only flush is used
        self.flushed: list[bool] = [False, True]

    async def flush(self) -> bool:  # type: ignore[override]
        return self.flushed.pop(0)


class _Sio:
    def __init__(self) -> None:
        self.manager = _Manager()


class _Marks:
    def __init__(self) -> None:
        self.written: list[dict[str, int]] = []

    async def advance(self, due: dict[str, int]) -> None:
        self.written.append(dict(due))


async def test_marks_of_an_unflushed_batch_are_written_with_the_next() -> None:
    marks = _Marks()
    dlog = DeliveryLog(web.Application(), _Sio(), marks, None, None)  # type: ignore[arg-type]
    dlog._due = {"!a:x": 5, "!b:x": 7}
    await dlog.write_marks()  # the outbox did not flush: nothing written, kept
    assert marks.written == []
    dlog._due["!a:x"] = 6
    await dlog.write_marks()
    assert marks.written == [{"!a:x": 6, "!b:x": 7}]
