"""``POST /api/chat/upload`` (and ``/upload/chat``, which also posts), and authenticated
download. The files themselves are checked and stored by files.py.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from ..chat.service import CHAT
from ..context import FEDERATION, MATRIX
from ..db.crm_user import CrmUser
from ..errors import NotFound
from ..matrix.homeserver import MatrixError
from . import messaging
from .files import check_files, read_form, sanitize_filename, sniff, store_files
from .plumbing import authed, json_response

routes = web.RouteTableDef()
__all__ = ["routes", "sanitize_filename", "sniff"]

_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp")


@routes.post("/api/chat/upload")
@authed("upload")
async def upload(request: web.Request, user: CrmUser) -> web.Response:
    files, _ = await read_form(request)
    out = await store_files(request.app, user, check_files(request.app, files))
    return json_response({"files": out, "attachments": out, **out[0]}, status=201)


@routes.post("/api/chat/upload/chat")
@authed(None)
async def upload_chat(request: web.Request, user: CrmUser) -> web.Response:
    """Upload and post in one call: the same rate limit and checks as /send (the service)."""
    files, fields = await read_form(request)
    quota: dict[str, str] = {}
    message = await messaging.send_files(
        request.app[CHAT],
        user,
        fields.get("conversationId"),
        fields.get("content", ""),
        files,
        quota=quota,
    )
    response = json_response(message, status=201)
    response.headers.update(quota)
    return response


@routes.get("/api/chat/media/{server}/{mediaId}")
@authed("media", allow_query_token=True)
async def download(request: web.Request, user: CrmUser) -> web.Response:
    server, media_id = request.match_info["server"], request.match_info["mediaId"]
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", server) or not re.fullmatch(
        r"[A-Za-z0-9_\-]+", media_id
    ):
        raise NotFound("File not found")
    if not request.app[FEDERATION].server_allowed(server):
        # Our own media repo and allowed guests' servers only: never make the homeserver
        # fetch from any other server.
        raise NotFound("File not found")
    mxc = f"mxc://{server}/{media_id}"
    media = request.app[CHAT].media
    # Same answer whether the file is missing or not yours: no hint that it exists.
    if not await media.may_download(mxc, user.crm_user_id, user.mxids):
        raise NotFound("File not found")
    known = await media.get(mxc)
    try:
        data, content_type = await request.app[MATRIX].download(mxc)
    except MatrixError as e:
        if e.status in (400, 403, 404):
            raise NotFound("File not found") from e
        raise
    mimetype = (
        known.mimetype if known else (content_type.split(";")[0] or "application/octet-stream")
    )
    name = known.original_name if known else media_id
    disposition = "inline" if mimetype in _INLINE else "attachment"
    return web.Response(
        body=data,
        headers={
            "Content-Type": mimetype,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=86400",
        },
    )
