"""The homeserver's side: is it there, does it know our as_token, does it reach us with
our hs_token.

The hs_token can only be checked by the homeserver using it, so the doctor asks the
homeserver to ping the appservice (``POST /_matrix/client/v1/appservice/{id}/ping``): the
homeserver calls ``{registration url}/_matrix/app/v1/ping`` with the hs_token it holds.

* Nothing listens on the configured host and port (the bridge is stopped): the doctor
  listens there itself for the length of the ping and compares the token it receives with
  ``appservice.hs_token`` (constant time). Whatever else the homeserver sends meanwhile
  (transactions) is refused, so the homeserver keeps it for the bridge.
* The bridge is running there: it answers the ping itself. The doctor first pings it
  directly with the config's hs_token, to learn whether the running bridge uses this
  config's token; the homeserver's ping then tells whether the homeserver's token is the
  same one.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ..config import Config
from ..errors import HomeserverUnavailable
from ..matrix.client import MatrixClient
from ..matrix.homeserver import Homeserver, MatrixError, q
from .local import REGENERATE
from .report import Finding, Status, fail, ok, skip

PING_TIMEOUT = 30.0
NOT_LOADED = (
    "add the registration file to the homeserver's app_service_config_files and restart it; "
    + REGENERATE
)


async def check_versions(session: aiohttp.ClientSession, address: str) -> Finding:
    # Asked without a token: Synapse refuses a bad token even here, which is as_token's check.
    try:
        async with session.get(
            f"{address}/_matrix/client/versions", timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            status = resp.status
            try:
                versions = await resp.json(content_type=None)
            except ValueError:
                versions = None
    except (aiohttp.ClientError, TimeoutError) as e:
        reason = str(e) or type(e).__name__
        return fail(
            "homeserver",
            f"{address} does not answer /_matrix/client/versions ({reason})",
            "start the homeserver, or correct homeserver.address (it must be reachable from "
            "where the bridge runs)",
        )
    if status != 200 or not isinstance(versions, dict) or "versions" not in versions:
        return fail(
            "homeserver",
            f"{address}/_matrix/client/versions answered HTTP {status}, not a Matrix homeserver",
            "homeserver.address must be the homeserver's client-server API",
        )
    latest = (versions.get("versions") or ["?"])[-1]
    return ok("homeserver", f"{address} answers (spec {latest})")


async def check_as_token(matrix: MatrixClient) -> Finding:
    try:
        whoami = await matrix.whoami()
    except MatrixError as e:
        return fail(
            "as_token",
            f"the homeserver refuses appservice.as_token ({e.errcode}): it has not loaded a "
            "registration with this token",
            NOT_LOADED,
        )
    except HomeserverUnavailable:
        return fail("as_token", "the homeserver stopped answering", "check the homeserver")
    if whoami != matrix.bot_mxid:
        return fail(
            "as_token",
            f"the as_token belongs to {whoami}, not {matrix.bot_mxid}",
            "appservice.bot_username must equal the registration's sender_localpart; " + REGENERATE,
        )
    return ok("as_token", f"the homeserver knows it: whoami is {whoami}")


@dataclass
class _Listener:
    """What our stand-in appservice heard while the homeserver pinged it."""

    hs_token: str
    transaction_id: str
    pings: list[bool] = field(default_factory=list)  # per ping: did its token match?

    async def ping(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() or request.query.get("access_token", "")
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("transaction_id") not in (None, self.transaction_id):
            return web.json_response({"errcode": "M_UNKNOWN"}, status=400)
        matches = hmac.compare_digest(token.encode(), self.hs_token.encode())
        self.pings.append(matches)
        if not matches:
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        return web.json_response({})

    async def refuse(self, _: web.Request) -> web.Response:
        # Not the bridge: never acknowledge a transaction, the homeserver resends it later.
        return web.json_response({"errcode": "M_UNKNOWN", "error": "doctor"}, status=503)


async def _homeserver_ping(
    session: aiohttp.ClientSession, config: Config, transaction_id: str
) -> tuple[int, dict[str, Any]]:
    url = (
        f"{str(config['homeserver.address']).rstrip('/')}/_matrix/client/v1/appservice/"
        f"{q(str(config['appservice.id']))}/ping"
    )
    headers = {"Authorization": f"Bearer {config['appservice.as_token']}"}
    async with session.post(
        url, json={"transaction_id": transaction_id}, headers=headers,
        timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT),
    ) as resp:  # fmt: skip
        try:
            body = await resp.json(content_type=None)
        except ValueError:
            body = {}
        return resp.status, body if isinstance(body, dict) else {}


def _local_url(config: Config) -> str:
    host = str(config["appservice.hostname"])
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{int(config['appservice.port'])}"


async def check_ping(session: aiohttp.ClientSession, config: Config) -> list[Finding]:
    if not config["appservice.receive_transactions"]:
        return [skip("ping", "this process does not receive transactions (a facade process)")]
    transaction_id = f"doctor-{secrets.token_hex(8)}"
    listener = _Listener(str(config["appservice.hs_token"]), transaction_id)
    app = web.Application()
    app.router.add_post("/_matrix/app/v1/ping", listener.ping)
    app.router.add_route("*", "/_matrix/app/{tail:.*}", listener.refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = str(config["appservice.hostname"]), int(config["appservice.port"])
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            return await _ping_running_bridge(session, config, transaction_id)
        return await _ping_listener(session, config, listener, f"{host}:{port}")
    finally:
        await runner.cleanup()


async def _ping_listener(
    session: aiohttp.ClientSession, config: Config, listener: _Listener, where: str
) -> list[Finding]:
    status, body = await _ask_homeserver(session, config, listener.transaction_id)
    address = config["appservice.address"]
    if status == 200 and listener.pings and all(listener.pings):
        return [
            ok("hs_token", "the homeserver pinged us with appservice.hs_token"),
            ok("ping", f"the homeserver reaches the appservice ({where}, bridge stopped)"),
        ]
    if listener.pings and not all(listener.pings):
        return [
            fail(
                "hs_token",
                "the homeserver pinged us with a different hs_token than appservice.hs_token",
                "the homeserver's registration is stale: " + REGENERATE,
            )
        ]
    if status == 200:
        return [
            fail(
                "ping",
                f"another process answered the homeserver's ping, not {where}: is the bridge "
                "running on another host or container?",
                f"run doctor where the bridge runs, or make the registration's url lead to "
                f"{where} (appservice.address is {address})",
            )
        ]
    return [_ping_failure(status, body, config, where)]


async def _ping_running_bridge(
    session: aiohttp.ClientSession, config: Config, transaction_id: str
) -> list[Finding]:
    local = _local_url(config)
    try:
        async with session.post(
            f"{local}/_matrix/app/v1/ping", json={},
            headers={"Authorization": f"Bearer {config['appservice.hs_token']}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:  # fmt: skip
            direct = resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        return [
            fail(
                "ping",
                f"{local} is taken but does not answer HTTP ({type(e).__name__})",
                "free appservice.port or choose another one",
            )
        ]
    if direct == 403:
        return [
            fail(
                "hs_token",
                f"the bridge running at {local} refuses this config's hs_token: it runs with "
                "another config, or this one was edited since it started",
                "restart the bridge with this config; if the tokens changed, " + REGENERATE,
            )
        ]
    if direct != 200:
        return [
            fail(
                "ping",
                f"{local} is taken by something that is not this bridge (HTTP {direct} to "
                "/_matrix/app/v1/ping)",
                "free appservice.port or choose another one",
            )
        ]
    status, body = await _ask_homeserver(session, config, transaction_id)
    if status == 200:
        return [
            ok("hs_token", f"the bridge at {local} and the homeserver use the config's hs_token"),
            ok("ping", f"the homeserver reaches the running bridge ({body.get('duration_ms')} ms)"),
        ]
    if body.get("errcode") == "M_BAD_STATUS" and body.get("status") == 403:
        return [
            fail(
                "hs_token",
                "the homeserver's hs_token differs from the one the bridge and this config use",
                "the homeserver's registration is stale: " + REGENERATE,
            )
        ]
    return [_ping_failure(status, body, config, local)]


async def _ask_homeserver(
    session: aiohttp.ClientSession, config: Config, transaction_id: str
) -> tuple[int, dict[str, Any]]:
    try:
        return await _homeserver_ping(session, config, transaction_id)
    except (aiohttp.ClientError, TimeoutError) as e:
        return 0, {"errcode": "M_CONNECTION_FAILED", "error": type(e).__name__}


def _ping_failure(status: int, body: dict[str, Any], config: Config, where: str) -> Finding:
    errcode = body.get("errcode", "")
    address = config["appservice.address"]
    if status == 0:
        return fail("ping", "the homeserver did not answer the ping", "check the homeserver")
    if errcode == "M_FORBIDDEN" or status == 403:
        return fail(
            "ping",
            f"the homeserver says the as_token is not appservice {config['appservice.id']!r}",
            "appservice.id must equal the registration's id; " + REGENERATE,
        )
    if errcode in ("M_CONNECTION_FAILED", "M_CONNECTION_TIMEOUT") or status == 504:
        return fail(
            "ping",
            f"the homeserver cannot reach the appservice at its registration's url ({errcode})",
            f"the registration's url must reach {where} from the homeserver; it should be "
            f"appservice.address ({address}); " + REGENERATE,
        )
    if errcode == "M_URL_NOT_SET":
        return fail("ping", "the homeserver's registration has no url", REGENERATE)
    return fail(
        "ping",
        f"the homeserver's ping failed: HTTP {status} {errcode} {body.get('error', '')}".strip(),
        f"the registration's url must lead to {where}; " + REGENERATE,
    )


async def check_homeserver(config: Config, config_ok: bool) -> list[Finding]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        hs = Homeserver(
            str(config["homeserver.address"]), str(config["appservice.as_token"]), session,
            retry_budget=2.0, silence_timeout=5.0,
        )  # fmt: skip
        matrix = MatrixClient(hs, str(config["appservice.id"]), config.bot_mxid)
        versions = await check_versions(session, hs.base_url)
        findings = [versions]
        if versions.status is Status.FAIL:
            return [*findings, *(skip(c, "homeserver unreachable") for c in ("as_token", "ping"))]
        if not config_ok:
            return [*findings, *(skip(c, "the config is invalid") for c in ("as_token", "ping"))]
        whoami = await check_as_token(matrix)
        findings.append(whoami)
        if whoami.status is Status.FAIL:
            return [*findings, skip("ping", "the homeserver refuses the as_token")]
        return findings + await check_ping(session, config)
