"""``POST /api/chat/upload`` into the Matrix media repo, and authenticated download.

The type of a file is what its bytes are (``filetype``), never what its name or the
client's Content-Type claims; it must be on ``api.upload_types``. Names are sanitised
before they go anywhere.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import quote, unquote

import filetype
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..context import CONFIG, MATRIX
from ..db.crm_user import CrmUser
from ..db.media import Media
from ..errors import BadRequest, InvalidParam, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..matrix.homeserver import MatrixError
from . import CHAT
from .plumbing import authed, json_response
from .serialize import media_url

routes = web.RouteTableDef()

MAX_FILES = 10
_FIELDS = ("file", "files", "attachment", "attachments")
_UNSAFE = re.compile(r"[^\w.\- ()+,@]+", re.UNICODE)
_INLINE = ("image/png", "image/jpeg", "image/gif", "image/webp")


def sanitize_filename(name: str | None, fallback: str = "file") -> str:
    """A plain name: no path, no control characters, at most 120 characters."""
    # Some clients (aiohttp, curl --form-string) percent-encode the name; browsers do not.
    name = unicodedata.normalize("NFC", unquote(name or ""))
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip(" ._")
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 120 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:120]
    return name or fallback


def sniff(data: bytes) -> str | None:
    """The content type the bytes show; plain UTF-8 text counts as text/plain."""
    kind = filetype.guess(data)
    if kind is not None:
        return kind.mime
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text/plain"


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("The upload is larger than the allowed size")
        chunks.append(chunk)
    return b"".join(chunks)


@routes.post("/api/chat/upload")
@authed("upload")
async def upload(request: web.Request, user: CrmUser) -> web.Response:
    config = request.app[CONFIG]
    limit = int(config["api.max_upload_size"])
    allowed = set(config["api.upload_types"] or [])
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("Send the file as multipart/form-data")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest("The multipart body is malformed") from e
    files: list[tuple[str, bytes]] = []
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in _FIELDS:
                continue
            if len(files) >= MAX_FILES:
                raise InvalidParam(f"At most {MAX_FILES} files per upload")
            # The limit holds for the whole request, so ten files cannot buffer ten limits.
            used = sum(len(data) for _, data in files)
            files.append((part.filename or "", await _read_part(part, limit - used)))
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError) as e:
        raise BadRequest("The multipart body is malformed") from e
    if not files:
        raise InvalidParam("No file in the upload (use the form field 'file')")
    checked: list[tuple[str, bytes, str]] = []
    for name, data in files:
        if not data:
            raise InvalidParam("The file is empty")
        mimetype = sniff(data)
        if mimetype is None or mimetype not in allowed:
            raise UnsupportedMediaType(
                f"Files of this type are not accepted ({mimetype or 'unknown type'})"
            )
        checked.append((sanitize_filename(name), data, mimetype))
    out: list[dict[str, Any]] = []
    for original, data, mimetype in checked:
        mxc = await request.app[MATRIX].upload(data, mimetype, original, as_user=user.mxid)
        media_id = mxc.rsplit("/", 1)[-1]
        extension = filetype.get_type(mime=mimetype)
        stored = f"{media_id}.{extension.extension}" if extension else media_id
        await request.app[CHAT].media.add(
            Media(mxc, user.crm_user_id, stored, original, mimetype, len(data))
        )
        out.append(
            {
                "filename": stored,
                "originalName": original,
                "mimetype": mimetype,
                "size": len(data),
                "url": media_url(mxc),
            }
        )
    return json_response({"files": out, "attachments": out, **out[0]}, status=201)


@routes.get("/api/chat/media/{server}/{mediaId}")
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
