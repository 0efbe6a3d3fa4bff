"""Startup checks against the homeserver, each fatal one with its own exit code."""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum

import aiohttp

from .errors import HomeserverUnavailable
from .matrix.client import MatrixClient
from .matrix.homeserver import MatrixError

log = logging.getLogger("bridge.startup")


class ExitCode(IntEnum):
    CONFIG = 10
    DATABASE = 11
    HOMESERVER_UNREACHABLE = 12
    AS_TOKEN_REJECTED = 13
    PORT_IN_USE = 14
    REGISTRATION = 15


class StartupError(Exception):
    def __init__(self, code: ExitCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def check_homeserver(matrix: MatrixClient) -> None:
    """Versions, then whoami as the bot: both must pass before we serve anything."""
    try:
        versions = await matrix.versions()
    except MatrixError as e:
        if e.status in (401, 403):
            # Synapse checks a token it is given even on /versions.
            raise StartupError(ExitCode.AS_TOKEN_REJECTED, _rejected(e)) from e
        raise StartupError(
            ExitCode.HOMESERVER_UNREACHABLE,
            f"Homeserver at {matrix.hs.base_url} answered /versions with {e}",
        ) from e
    except (HomeserverUnavailable, aiohttp.ClientError) as e:
        raise StartupError(
            ExitCode.HOMESERVER_UNREACHABLE,
            f"Homeserver at {matrix.hs.base_url} did not answer /versions ({e})",
        ) from e
    log.info("Homeserver supports %s", ", ".join(versions.get("versions", [])[-3:]))
    try:
        whoami = await matrix.whoami()
    except MatrixError as e:
        raise StartupError(ExitCode.AS_TOKEN_REJECTED, _rejected(e)) from e
    except HomeserverUnavailable as e:
        raise StartupError(ExitCode.HOMESERVER_UNREACHABLE, "Homeserver stopped answering") from e
    if whoami != matrix.bot_mxid:
        raise StartupError(
            ExitCode.AS_TOKEN_REJECTED,
            f"as_token belongs to {whoami}, expected {matrix.bot_mxid}",
        )


def _rejected(e: MatrixError) -> str:
    return (
        f"Homeserver rejected the as_token ({e.errcode}); is registration.yaml loaded "
        "by the homeserver and does it match this config?"
    )


async def ping_until_ok(matrix: MatrixClient, attempts: int = 10, interval: float = 2.0) -> bool:
    """Ping ourselves through the homeserver, so it stops backing off if we were down.

    Synapse ignores pings until its appservice scheduler runs (a few seconds after start),
    so retry for a while; warn but keep running if it never works.
    """
    last = ""
    for _ in range(attempts):
        try:
            duration = await matrix.ping()
            log.info("Appservice ping succeeded (%d ms round trip)", duration)
            return True
        except MatrixError as e:
            last = f"{e.errcode}: {e.message}"
        except HomeserverUnavailable:
            last = "homeserver unavailable"
        await asyncio.sleep(interval)
    log.warning("Appservice ping failed (%s); is the homeserver able to reach us?", last)
    return False
