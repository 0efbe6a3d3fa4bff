"""Events the facade's service functions send to sockets themselves (not from Matrix)."""

from __future__ import annotations

import logging

from aiohttp import web
from pydantic import BaseModel

from ..db.crm_user import CrmUser
from .rooms import user_room
from .service import SIO

log = logging.getLogger("bridge.realtime.emit")


async def to_own_sockets(app: web.Application, user: CrmUser, event: str, body: BaseModel) -> None:
    """To every socket of this user, in every process. Best effort: the action is done."""
    sio = app.get(SIO)
    if sio is None:
        return
    try:
        await sio.emit(event, body.model_dump(by_alias=True), to=user_room(user.crm_user_id))
    except Exception as e:
        log.warning("Cannot tell %s's sockets of %s: %s", user.crm_user_id, event, e)
