"""Prometheus metrics after real traffic: a bridge process of its own (private Synapse, so
every count is ours alone), scraped over HTTP on its metrics port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import build_app
from bridge.config import Config
from bridge.devstack.synapse import free_port
from bridge.errors import HomeserverUnavailable
from bridge.matrix.homeserver import Homeserver, MatrixError, endpoint_of, q
from bridge.metrics import METRICS, Metrics
from tests.conftest import unique
from tests.fault_support import fault_stack
from tests.helpers import eventually
from tests.realtime_support import Recorder, conversation_of

SEND_LIMIT = 4
ACTIONS = "bridge_reconcile_actions_total"
HS_LATENCY = "bridge_homeserver_request_duration_seconds"
RATE_LIMITED = "bridge_rate_limited_total"
C = "/_matrix/client/v3"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def test_endpoint_templates_hold_no_ids() -> None:
    room, user, event = q("!abc:localhost"), q("@crm_u1:localhost"), q("$ev1")
    rooms = f"{C}/rooms/{room}"
    cases = {
        f"{rooms}/send/m.room.message/txn1": "/rooms/{roomId}/send/{eventType}/{txnId}",
        f"{rooms}/state/m.room.name/": "/rooms/{roomId}/state/{eventType}/{stateKey}",
        f"{rooms}/receipt/m.read/{event}": "/rooms/{roomId}/receipt/{receiptType}/{eventId}",
        f"{rooms}/messages?dir=b": "/rooms/{roomId}/messages",
        f"{C}/profile/{user}/displayname": "/profile/{userId}/displayname",
        f"{C}/unknown/{user}": "/unknown/{id}",
    }
    for path, template in cases.items():
        assert endpoint_of(path) == C + template
    media = "/_matrix/client/v1/media/download"
    assert endpoint_of(f"{media}/localhost/abc") == media + "/{serverName}/{mediaId}"
    assert endpoint_of("/_matrix/client/versions") == "/_matrix/client/versions"


def test_each_app_has_its_own_registry_and_none_when_disabled() -> None:
    config = Config.load(None, environ={})
    for key in ("appservice.as_token", "appservice.hs_token", "admin_api.token", "auth.secret"):
        config.set(key, unique("secret") * 4)
    assert METRICS not in build_app(config)  # off by default: no registry, no middleware
    config.set("metrics.enabled", True)
    first, second = build_app(config), build_app(config)  # no "Duplicated timeseries"
    assert first[METRICS].registry is not second[METRICS].registry
    first[METRICS].rate_limit_hit("send")
    assert value(parse(second[METRICS].exposition().decode()), RATE_LIMITED, route="send") == 0
    assert value(parse(first[METRICS].exposition().decode()), RATE_LIMITED, route="send") == 1


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return parse(await resp.text())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over every label not given."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


async def test_metrics_count_real_traffic(tmp_path: Path) -> None:
    port = free_port()
    async with fault_stack(
        tmp_path,
        redis=None,
        **{
            "metrics.enabled": True,
            "metrics.listen_port": port,
            "api.rate_limit.send_requests": SEND_LIMIT,
        },
    ) as fs:
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        # Not on the appservice port.
        async with aiohttp.ClientSession() as session, session.get(fs.url + "/metrics") as resp:
            assert resp.status == 404
        start = await scrape(metrics_url)

        # The directory: two users and a project room, then a member removed.
        alice = await fs.directory.user("Alice Metrics")
        bob = await fs.directory.user("Bob Metrics")
        project_id = unique("p")
        created = await fs.directory._put(
            f"/projects/{project_id}",
            {"name": "Metrics", "members": [alice, bob], "createdBy": alice},
        )
        project = created["project"]
        room_id, cid = project["roomId"], conversation_of(project)
        after_create = await scrape(metrics_url)
        # What the admin API says it applied is what the counters say.
        applied = created["applied"]
        assert len(applied["projects"]["create"]) == 1
        assert len(applied["invite"]) == len(applied["join"]) == 2
        assert len(applied["powerLevels"]) == 1
        expected = {"user_create": 2, "room_create": 1, "invite": 2, "join": 2, "power_levels": 1}
        for action, n in expected.items():
            assert delta(after_create, start, ACTIONS, action=action) == n, action
        removed = await fs.directory._put(
            f"/projects/{project_id}",
            {"name": "Metrics", "members": [alice], "createdBy": alice},
        )
        after_kick = await scrape(metrics_url)
        assert len(removed["applied"]["kick"]) == 1
        assert delta(after_kick, after_create, ACTIONS, action="kick") == 1
        assert delta(after_kick, after_create, ACTIONS, action="invite") == 0

        # Two sends over REST and one over a socket, then one REST send over the limit.
        before = await scrape(metrics_url)
        headers = {"Authorization": f"Bearer {fs.token(alice)}"}
        sent: list[str] = []
        async with aiohttp.ClientSession(headers=headers) as session:
            for i in range(2):
                body = {"conversationId": cid, "content": f"REST {i}"}
                async with session.post(fs.url + "/api/chat/send", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    sent.append((await resp.json())["_id"])
            async with session.get(f"{fs.url}/api/chat/messages/{cid}") as resp:
                assert resp.status == 200
            socket = await Recorder("alice").connect(fs.url, fs.token(alice))
            try:
                during = await scrape(metrics_url)
                assert value(during, "bridge_sockets_connected") == 1
                ack = await socket.call("send_message", {"conversationId": cid, "content": "sock"})
                assert "_id" in ack, ack
                sent.append(ack["_id"])
            finally:
                await socket.close()
            body = {"conversationId": cid, "content": "one more"}
            async with session.post(fs.url + "/api/chat/send", json=body) as resp:
                assert resp.status == 201
            async with session.post(fs.url + "/api/chat/send", json=body) as resp:
                assert resp.status == 429

        # Every message comes back from Synapse in a transaction, counted once.
        async def four_messages() -> Samples | None:
            now = await scrape(metrics_url)
            got = delta(now, before, "bridge_appservice_events_total", type="m.room.message")
            return now if got >= 4 else None

        await eventually(four_messages, timeout=30)
        await asyncio.sleep(1.0)  # late duplicates would show here
        after = await scrape(metrics_url)
        assert value(after, "bridge_sockets_connected") == 0
        timeline = {"kind": "timeline", "type": "m.room.message"}
        assert delta(after, before, "bridge_appservice_events_total", **timeline) == 4
        assert delta(after, start, "bridge_appservice_transactions_total") >= 1
        assert total(after, "bridge_appservice_transactions_failed_total") == 0

        # Facade requests by route template and status; latency observed.
        send_route = {"method": "POST", "route": "/api/chat/send"}
        assert delta(after, before, "bridge_http_requests_total", **send_route, status="201") == 3
        assert delta(after, before, "bridge_http_requests_total", **send_route, status="429") == 1
        assert delta(after, before, "bridge_http_request_duration_seconds_count", **send_route) == 4
        assert delta(after, before, "bridge_http_request_duration_seconds_sum", **send_route) > 0
        history = {"method": "GET", "route": "/api/chat/messages/{conversationId}"}
        assert delta(after, before, "bridge_http_requests_total", **history, status="200") == 1
        assert delta(after, before, "bridge_rate_limited_total", route="send") == 1

        # Homeserver calls by endpoint template: one send per message accepted.
        endpoint = f"{C}/rooms/{{roomId}}/send/{{eventType}}/{{txnId}}"
        hs_send = {"method": "PUT", "endpoint": endpoint}
        assert delta(after, before, HS_LATENCY + "_count", **hs_send) == 4
        assert delta(after, before, HS_LATENCY + "_sum", **hs_send) > 0

        # Transactions the homeserver did not send: a malformed one fails, a bad token is
        # refused before it counts.
        hs_token = fs.config["appservice.hs_token"]
        txn = f"{fs.url}/_matrix/app/v1/transactions/{unique('m')}"
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {hs_token}"}
            async with session.put(txn, data=b"[1", headers=auth) as resp:
                assert resp.status == 400
            wrong = {"Authorization": "Bearer x"}
            async with session.put(txn, json={"events": []}, headers=wrong) as resp:
                assert resp.status == 403
        last = await scrape(metrics_url)
        assert value(last, "bridge_appservice_transactions_failed_total", reason="invalid") == 1
        assert delta(last, after, "bridge_appservice_transactions_total") >= 1

        # No raw id in any label value: only templates.
        ids = [alice, bob, project_id, cid, room_id, q(room_id), *sent]
        for (_, labels), _v in last.items():
            for _k, label in labels:
                assert not any(i in label for i in ids), label
                assert not re.search(r"[!@$#]|%21|%40|%24", label), label


@pytest.mark.integration
async def test_homeserver_errors_by_endpoint(stack) -> None:
    """The homeserver client's own counts, against the session's real Synapse."""
    metrics = Metrics()
    as_token = stack.config["appservice.as_token"]
    async with aiohttp.ClientSession() as session:
        hs = Homeserver(stack.config["homeserver.address"], as_token, session, metrics=metrics)
        room = q(f"!{unique('nothere')}:localhost")
        with pytest.raises(MatrixError) as refused:
            await hs.get(f"{C}/rooms/{room}/state/m.room.name/")
        await hs.get("/_matrix/client/versions")
        # Nothing listens on port 1: refused connections until the budget is spent.
        dead = "http://127.0.0.1:1"
        gone = Homeserver(dead, as_token, session, retry_budget=0.6, metrics=metrics)
        with pytest.raises(HomeserverUnavailable):
            await gone.get("/_matrix/client/versions")
    samples = parse(metrics.exposition().decode())
    state = f"{C}/rooms/{{roomId}}/state/{{eventType}}/{{stateKey}}"
    status = str(refused.value.status)
    errors = "bridge_homeserver_errors_total"
    assert value(samples, errors, method="GET", endpoint=state, reason=status) == 1
    assert value(samples, HS_LATENCY + "_count", method="GET", endpoint=state) == 1
    versions = {"method": "GET", "endpoint": "/_matrix/client/versions"}
    assert value(samples, HS_LATENCY + "_count", **versions) == 1
    assert value(samples, errors, **versions, reason="connection") >= 2
    assert total(samples, errors, reason="200") == 0
