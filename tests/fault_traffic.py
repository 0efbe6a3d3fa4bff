"""Traffic for fault tests: the REST facade as a CRM user, a plain Matrix user, and the counts
a fault report needs (sent, lost, duplicated, socket deliveries missing and duplicated).

Used by the short fault tests in ``make test`` and their 2,000-message soak versions, so
both check the same things.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from nio import AsyncClient, JoinResponse, RoomSendResponse
from yarl import URL

from bridge.ids import IdMapper
from bridge.matrix.probe import ALIAS_NAME as PROBE_ALIAS
from tests.helpers import eventually

# Answers that mean "the bridge or a service behind it is down; retry the same request".
RETRYABLE = {0, 502, 503}


@dataclass
class Chat:
    """``/api/chat`` as one CRM user (a seed frontend)."""

    session: aiohttp.ClientSession
    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def send(
        self, cid: str, content: str, client_message_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST /send; status 0 when the bridge is unreachable."""
        body: dict[str, Any] = {"conversationId": cid, "content": content}
        if client_message_id is not None:
            body["clientMessageId"] = client_message_id
        try:
            async with self.session.post(
                self.url + "/api/chat/send",
                json=body,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = {"raw": await resp.text()}
                return resp.status, answer
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            return 0, {}

    async def page(self, cid: str, **query: Any) -> dict[str, Any]:
        async with self.session.get(
            URL(f"{self.url}/api/chat/messages/{cid}").with_query(query), headers=self.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def catch_up(self, cid: str, cursor: str | None) -> list[dict[str, Any]]:
        """The documented catch-up (docs/realtime.md): ``after=<cursor>`` until ``hasMore`` is
        false; without a cursor yet, the newest page."""
        missed: list[dict[str, Any]] = []
        for _ in range(1000):
            page = await self.page(cid, **({"after": cursor, "limit": 100} if cursor else
                                            {"page": 1, "limit": 100}))  # fmt: skip
            missed.extend(page["messages"])
            if not cursor or not page["hasMore"]:
                return missed
            cursor = page["nextCursor"]
        raise AssertionError("catch-up did not end after 1000 pages")

    async def history(self, cid: str) -> list[dict[str, Any]]:
        """The whole conversation, oldest first, paging back with ``before``."""
        page = await self.page(cid, page=1, limit=100)
        pages = [page["messages"]]
        for _ in range(1000):
            if not page["messages"] or not page["hasMore"]:
                break
            page = await self.page(cid, before=page["messages"][0]["_id"], limit=100)
            pages.append(page["messages"])
        return [m for p in reversed(pages) for m in p]

    async def conversation(self, cid: str) -> dict[str, Any]:
        async with self.session.get(
            self.url + "/api/chat/conversations", headers=self.headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            listed = await resp.json()
        return next(c for c in listed if c["_id"] == cid)


async def join_when_invited(client: AsyncClient, room_id: str, timeout: float = 30) -> None:
    """A plain Matrix user accepts the invite the bridge sent (it may still be on its way)."""

    async def joined() -> bool:
        return isinstance(await client.join(room_id), JoinResponse)

    await eventually(joined, timeout=timeout, interval=0.3)
    await client.sync(timeout=0, full_state=True, set_presence="offline")


async def matrix_send(
    client: AsyncClient, room_id: str, body: str, txn_id: str
) -> RoomSendResponse:
    """Send like Element: retried with the same transaction id until Synapse accepts it
    (also the "not in room" of a worker that has not replicated the sender's join yet)."""
    for _ in range(20):
        resp = await client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, tx_id=txn_id
        )
        if isinstance(resp, RoomSendResponse):
            return resp
        await asyncio.sleep(0.5)
    raise AssertionError(f"Synapse refused {body!r}: {resp}")


def merged(*deliveries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a frontend shows after merging its live events and catch-up pages by ``_id``."""
    timeline: dict[str, dict[str, Any]] = {}
    for messages in deliveries:
        for message in messages:
            timeline.setdefault(message["_id"], message)
    return timeline


def duplicated(values: Iterable[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


@dataclass
class FaultReport:
    """One row of the issue's table."""

    fault: str
    sent: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    socket_missing: list[str] = field(default_factory=list)
    socket_duplicated: list[str] = field(default_factory=list)
    retried: int = 0
    answers: Counter[int] = field(default_factory=Counter)
    time_to_503: float | None = None
    time_to_recover: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check_history(self, expected: list[str], bodies: list[str]) -> None:
        """Lost and duplicated messages, from the bodies the homeserver holds."""
        self.lost = sorted(set(expected) - set(bodies))
        self.duplicated = duplicated(c for c in bodies if c in set(expected))

    def line(self) -> str:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"

        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (
            f"FAULT {self.fault}: sent={self.sent} lost={len(self.lost)} "
            f"duplicated={len(self.duplicated)} socket_missing={len(self.socket_missing)} "
            f"socket_duplicated={len(self.socket_duplicated)} retried={self.retried} "
            f"answers={dict(sorted(self.answers.items()))} time_to_503={secs(self.time_to_503)} "
            f"time_to_recover={secs(self.time_to_recover)}{extra}"
            + "".join(
                f"\n  {name}: {values[:10]}"
                for name, values in (("lost", self.lost), ("duplicated", self.duplicated),
                                     ("socket_missing", self.socket_missing),
                                     ("socket_duplicated", self.socket_duplicated))
                if values
            )
        )  # fmt: skip


def stuck_appservice_events(synapse_data_dir: Path) -> dict[str, Any]:
    """Events Synapse stored in an appservice transaction it never delivered (SQLite only).

    Synapse 1.163 can strand one: a sender that saw the appservice "down" stores its
    transaction for the recoverer, which may have just found nothing left and marked the
    service "up" (synapse/appservice/scheduler.py, ``send`` vs ``_Recoverer.retry``). Nothing
    then sends it until a later delivery fails. Reported so a loss is attributed right.
    """
    path = synapse_data_dir / "homeserver.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(path)
    try:
        state = dict(conn.execute("SELECT as_id, state FROM application_services_state"))
        rows = conn.execute("SELECT txn_id, event_ids FROM application_services_txns").fetchall()
    finally:
        conn.close()
    return {"state": state, "txns": {txn: json.loads(ids) for txn, ids in rows}}


async def room_timeline(
    synapse_url: str, as_token: str, room_id: str, types: set[str] | None = None
) -> list[dict[str, Any]]:
    """The room's whole timeline straight from Synapse (``/messages`` forward from the start,
    as the bridge bot): what the homeserver really holds, without the facade's paging."""
    headers = {"Authorization": f"Bearer {as_token}"}
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"dir": "f", "limit": 500}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(1000):
            async with session.get(
                f"{synapse_url}/_matrix/client/v3/rooms/{room_id}/messages", params=params
            ) as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            events += [e for e in page["chunk"] if types is None or e["type"] in types]
            if "end" not in page or not page["chunk"]:
                return events
            params["from"] = page["end"]
    raise AssertionError("room timeline did not end after 1000 pages")


async def probe_room(synapse_url: str, as_token: str, ids: IdMapper) -> str | None:
    """The bot's probe room (bridge/matrix/probe.py), found by its alias; None if not made."""
    alias = quote(ids.reserved_alias(PROBE_ALIAS), safe="")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{synapse_url}/_matrix/client/v3/directory/room/{alias}",
            headers={"Authorization": f"Bearer {as_token}"},
        ) as resp,
    ):
        return (await resp.json())["room_id"] if resp.status == 200 else None
