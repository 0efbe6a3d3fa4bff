"""Files for messages: names made safe, types found in the bytes, into the media repo.

The type of a file is what its bytes are (``filetype``), never what its name or the
client's Content-Type claims; it must be on ``api.upload_types``. Used by
``/api/chat/upload`` and ``/api/chat/upload/chat`` (uploads.py, messaging.py).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import unquote

import filetype
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..chat.serialize import media_url
from ..context import CONFIG, DATABASE, MATRIX
from ..db.crm_user import CrmUser
from ..db.media import Media, MediaStore
from ..errors import BadRequest, InvalidParam, PayloadTooLarge, UnsupportedMediaType

MAX_FILES = 10
_FIELDS = ("file", "files", "attachment", "attachments")
_UNSAFE = re.compile(r"[^\w.\- ()+,@]+", re.UNICODE)


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


# Text fields of an upload form (conversationId, content), each well under send's limits.
_TEXT_FIELDS = ("conversationId", "content")
_MAX_TEXT_FIELD = 128 * 1024


async def read_form(request: web.Request) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The files and text fields of a multipart upload, within api.max_upload_size."""
    limit = int(request.app[CONFIG]["api.max_upload_size"])
    if not request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("Send the file as multipart/form-data")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, HttpProcessingError) as e:
        raise BadRequest("The multipart body is malformed") from e
    files: list[tuple[str, bytes]] = []
    fields: dict[str, str] = {}
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name in _TEXT_FIELDS and part.filename is None and part.name not in fields:
                fields[part.name] = (await _read_part(part, _MAX_TEXT_FIELD)).decode("utf-8")
                continue
            if part.name not in _FIELDS:
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
    return files, fields


def check_files(
    app: web.Application, files: list[tuple[str, bytes]]
) -> list[tuple[str, bytes, str]]:
    """(safe name, bytes, type found in the bytes); 415 for a type not on api.upload_types."""
    allowed = set(app[CONFIG]["api.upload_types"] or [])
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
    return checked


async def store_files(
    app: web.Application, user: CrmUser, checked: list[tuple[str, bytes, str]]
) -> list[dict[str, Any]]:
    """Into the Matrix media repo as the user's puppet; attachment objects for /send."""
    out: list[dict[str, Any]] = []
    for original, data, mimetype in checked:
        mxc = await app[MATRIX].upload(data, mimetype, original, as_user=user.mxid)
        media_id = mxc.rsplit("/", 1)[-1]
        extension = filetype.get_type(mime=mimetype)
        stored = f"{media_id}.{extension.extension}" if extension else media_id
        await MediaStore(app[DATABASE]).add(
            Media(mxc, user.crm_user_id, stored, original, mimetype, len(data))
        )
        out.append(
            {
                "filename": stored,
                "originalName": original,
                "mimetype": mimetype,
                "size": len(data),
                "url": media_url(mxc),
                # As messages carry it (models.Attachment); a fresh upload's is not known.
                "duration": None,
            }
        )
    return out
