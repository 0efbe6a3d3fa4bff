"""``POST /api/chat/upload`` (and ``/upload/chat``, which also posts), and authenticated
download. The files themselves are checked and stored by files.py.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from ..chat.media_urls import media_signer
from ..chat.service import CHAT
from ..context import FEDERATION, MATRIX
from ..db.crm_user import CrmUser
from ..errors import BridgeError, NotFound
from ..matrix.homeserver import MatrixError
from . import messaging
from .auth import user_for
from .contract import FILES, declare
from .files import check_files, read_form, sanitize_filename, sniff, store_files
from .models import MediaPath, MediaQuery, Message, Upload, UploadChatForm, UploadForm
from .plumbing import RATE_LIMITER, authed, json_response

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
    first = out[0]
    # Also the CRM upload's own answer ({fileUrl, originalName, mimeType}): an operator may
    # route the CRM's /api/upload/single here (docs/operator-guide.md).
    answer = {"files": out, "attachments": out, **first}
    answer.update(fileUrl=first["url"], mimeType=first["mimetype"])
    return json_response(answer, status=201)


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
    "Download an attachment: a signed URL as answers hand out (no token), or the Bearer "
    "header (?token= is deprecated)",
    tags=FILES,
    path=MediaPath,
    query=MediaQuery,
    ok={200: (bytes, "The file")},
    errors=(404, 503),
)
async def download(request: web.Request) -> web.StreamResponse:
    """A signed URL (``?u&exp&sig``, what answers and events hand out) needs no token; the
    header token keeps working, and so does the deprecated ``?token=``."""
    if "sig" in request.query:
        return await _signed_download(request)
    return await _token_download(request)


async def _signed_download(request: web.Request) -> web.StreamResponse:
    server, media_id = _media_of(request)
    query = request.query
    crm_user_id = query.get("u", "")
    signer = media_signer(request.app)
    # Expired, tampered, or a user who is gone: the same 404 as a file that does not exist.
    if not signer.verify(f"{server}/{media_id}", crm_user_id, query.get("exp", ""), query["sig"]):
        raise NotFound("File not found")
    try:
        user = await user_for(request.app, crm_user_id)
    except BridgeError as e:
        raise NotFound("File not found") from e
    headers = await request.app[RATE_LIMITER].hit(user.crm_user_id, "media")
    response = await _serve(request, user, server, media_id)
    response.headers.update(headers)
    return response


@authed("media", allow_query_token=True)
async def _token_download(request: web.Request, user: CrmUser) -> web.StreamResponse:
    return await _serve(request, user, *_media_of(request))


def _media_of(request: web.Request) -> tuple[str, str]:
    server, media_id = request.match_info["server"], request.match_info["mediaId"]
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", server) or not re.fullmatch(
        r"[A-Za-z0-9_\-]+", media_id
    ):
        raise NotFound("File not found")
    if not request.app[FEDERATION].server_allowed(server):
        # Our own media repo and allowed guests' servers only: never make the homeserver
        # fetch from any other server.
        raise NotFound("File not found")
    return server, media_id


async def _serve(
    request: web.Request, user: CrmUser, server: str, media_id: str
) -> web.StreamResponse:
    mxc = f"mxc://{server}/{media_id}"
    media = request.app[CHAT].media
    # Same answer whether the file is missing or not yours: no hint that it exists.
    if not await request.app[CHAT].may_download(mxc, user):
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
