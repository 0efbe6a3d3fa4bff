"""``POST /api/chat/upload`` (and ``/upload/chat``, which also posts), and authenticated
download. The files themselves are checked and stored by files.py.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from ..chat.service import CHAT
from ..context import CONFIG, MATRIX
from ..db.crm_user import CrmUser
from ..errors import NotFound
from ..matrix.homeserver import MatrixError
from . import messaging
from .contract import FILES, declare
from .files import check_files, read_form, sanitize_filename, sniff, store_files
from .models import MediaPath, Message, Upload, UploadChatForm, UploadForm
from .plumbing import authed, json_response

routes = web.RouteTableDef()
__all__ = ["routes", "sanitize_filename", "sniff"]

_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp")


@routes.post("/api/chat/upload")
@declare(
    "Upload files to the Matrix media repository",
    tags=FILES,
    form=UploadForm,
    ok={201: (Upload, "Attachment objects for /api/chat/send")},
    errors=(400, 413, 415, 503),
    description="Types are checked by content against api.upload_types.",
)
@authed("upload")
async def upload(request: web.Request, user: CrmUser) -> web.Response:
    files, _ = await read_form(request)
    out = await store_files(request.app, user, check_files(request.app, files))
    return json_response({"files": out, "attachments": out, **out[0]}, status=201)


@routes.post("/api/chat/upload/chat")
@declare(
    "Upload files and post them as one message",
    tags=FILES,
    form=UploadChatForm,
    ok={201: (Message, "The message, as /api/chat/send answers")},
    errors=(400, 404, 413, 415, 503),
    description="Send's rate limit and checks; types are checked by content.",
)
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
@declare(
    "Download an attachment (Bearer header, or ?token= for <img src>)",
    tags=FILES,
    path=MediaPath,
    ok={200: (bytes, "The file")},
    errors=(404, 503),
)
@authed("media", allow_query_token=True)
async def download(request: web.Request, user: CrmUser) -> web.Response:
    server, media_id = request.match_info["server"], request.match_info["mediaId"]
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", server) or not re.fullmatch(
        r"[A-Za-z0-9_\-]+", media_id
    ):
        raise NotFound("File not found")
    if server != request.app[CONFIG].domain:
        # Only our own media repo: never make the homeserver fetch from another server.
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
