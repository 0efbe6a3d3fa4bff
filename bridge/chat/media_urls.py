"""Signed media URLs: files that a bare ``<img src>``, ``<audio src>`` or ``<a href>`` loads.

The CRM's page cannot add a header to those, and a whole session token in a URL would leak
into logs and ``Referer`` headers. So every media URL handed to a user is absolute (from
``api.public_url``) and names the file, the user and an expiry, with an HMAC over the three
(``media.url_ttl``). The download still checks that this user may read the file now: a URL
of someone who left the conversation answers 404 like a forged one.

Message objects are built once and shared between viewers (caches, socket rooms), so they
carry the unsigned path ``/api/chat/media/<server>/<id>``; :meth:`MediaSigner.sign_tree`
signs a copy for one user at the edge (REST answers: api/plumbing.py; socket events:
realtime/manager.py and access.py).
"""

from __future__ import annotations

import base64
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ..config import Config
from ..context import CONFIG

MEDIA_PATH = "/api/chat/media/"
MEDIA_MARK = MEDIA_PATH.encode()
# Fields whose value may be a media path: attachments, avatars, the upload's answer.
MEDIA_FIELDS = frozenset({"url", "avatar", "profileImage", "fileUrl"})
# Expiries are rounded up to this step: a URL stays the same for a while (browser caches).
EXPIRY_STEP = 3600
_KDF_LABEL = b"crm-bridge media url v1"
_CONTAINERS = (dict, list)
_JSON_FIELD = re.compile(
    rb'"('
    + b"|".join(f.encode() for f in sorted(MEDIA_FIELDS))
    + rb')":"('
    + re.escape(MEDIA_MARK)
    + rb'[A-Za-z0-9.:\-\[\]]+/[A-Za-z0-9_\-]+)"'
)


def _mac(key: bytes, media: str, crm_user_id: str, expiry: int) -> str:
    message = f"{media}\x1f{crm_user_id}\x1f{expiry}".encode()
    return base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")[:18]).decode()


@dataclass(frozen=True)
class MediaSigner:
    key: bytes
    ttl: int
    public_url: str  # no trailing slash

    @classmethod
    def from_config(cls, config: Config) -> MediaSigner:
        secret = config.get("media.url_secret") or config["appservice.as_token"]
        # A key of its own, derived (HMAC as a KDF): the token itself never signs a URL.
        key = hmac.digest(str(secret).encode(), _KDF_LABEL, "sha256")
        public = config.get("api.public_url") or (
            f"http://{config['appservice.hostname']}:{config['appservice.port']}"
        )
        return cls(key, int(config.get("media.url_ttl") or 86400), str(public).rstrip("/"))

    def expiry(self, now: float | None = None) -> int:
        moment = int(time.time() if now is None else now) + self.ttl
        return -(-moment // EXPIRY_STEP) * EXPIRY_STEP

    def sign(self, path: str, crm_user_id: str, expiry: int | None = None) -> str:
        """The absolute signed URL of a media path, for this user."""
        expiry = self.expiry() if expiry is None else expiry
        quoted = quote(crm_user_id, safe="")
        return self._signed(path, crm_user_id, f"&exp={expiry}&sig=", expiry, quoted)

    def _signed(self, path: str, user: str, middle: str, expiry: int, quoted: str) -> str:
        media = path.removeprefix(MEDIA_PATH)
        sig = _mac(self.key, media, user, expiry)
        return f"{self.public_url}{MEDIA_PATH}{media}?u={quoted}{middle}{sig}"

    def verify(self, media: str, crm_user_id: str, expiry: str, sig: str) -> bool:
        """``media`` is ``<server>/<id>``. Constant-time; false when expired or malformed."""
        if not expiry.isdigit() or len(expiry) > 12 or int(expiry) < time.time():
            return False
        expected = _mac(self.key, media, crm_user_id, int(expiry))
        return hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace"))

    def sign_json(self, body: bytes, crm_user_id: str) -> bytes:
        """The same for compact JSON text (orjson's): one regex pass, no decoding. Inside a
        JSON string every quote is escaped, so ``"url":"/api/chat/media/..."`` matches a
        field and its whole value, never the text of a message."""
        expiry = self.expiry()
        quoted, middle = quote(crm_user_id, safe=""), f"&exp={expiry}&sig="
        signed: dict[bytes, bytes] = {}

        def one(match: re.Match[bytes]) -> bytes:
            path = match.group(2)
            if path not in signed:
                url = self._signed(path.decode(), crm_user_id, middle, expiry, quoted)
                signed[path] = url.encode()
            return b'"' + match.group(1) + b'":"' + signed[path] + b'"'

        return _JSON_FIELD.sub(one, body)

    def sign_tree(self, data: Any, crm_user_id: str) -> Any:
        """A copy of JSON-like data with every media path (in :data:`MEDIA_FIELDS`) signed
        for this user; the original is left as it is. One pass, one HMAC per distinct file."""
        expiry = self.expiry()
        quoted, middle = quote(crm_user_id, safe=""), f"&exp={expiry}&sig="
        signed: dict[str, str] = {}

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                out = {}
                for key, value in node.items():
                    if (
                        key in MEDIA_FIELDS
                        and isinstance(value, str)
                        and value.startswith(MEDIA_PATH)
                    ):
                        if value not in signed:
                            signed[value] = self._signed(value, crm_user_id, middle, expiry, quoted)
                        out[key] = signed[value]
                    elif isinstance(value, _CONTAINERS):
                        out[key] = walk(value)
                    else:
                        out[key] = value
                return out
            if isinstance(node, list):
                return [walk(item) if isinstance(item, _CONTAINERS) else item for item in node]
            return node

        return walk(data)


def has_media(data: Any) -> bool:
    """Whether JSON-like data holds a media path to sign (same fields as sign_tree)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str):
                if key in MEDIA_FIELDS and value.startswith(MEDIA_PATH):
                    return True
            elif isinstance(value, _CONTAINERS) and has_media(value):
                return True
        return False
    if isinstance(data, list):
        return any(has_media(item) for item in data if isinstance(item, _CONTAINERS))
    return False


MEDIA_SIGNER = web.AppKey("media_signer", MediaSigner)


def media_signer(app: web.Application) -> MediaSigner:
    found = app.get(MEDIA_SIGNER)
    if found is None:
        found = MediaSigner.from_config(app[CONFIG])
        app[MEDIA_SIGNER] = found
    return found
