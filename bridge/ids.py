"""Mapping between CRM ids and Matrix ids, driven by the configured templates."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from mautrix.types import RoomAlias, UserID

from .config import Config

# Matrix localparts allow [a-z0-9._=/-]; CRM ids are usually ObjectIds or integers, but we
# escape anything else the way mautrix bridges do (=XX), so the mapping is reversible.
_LOCALPART_SAFE = re.compile(r"[a-z0-9._/-]")


def escape_localpart(value: str) -> str:
    out = []
    for char in value:
        if _LOCALPART_SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


def unescape_localpart(value: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "=" and re.fullmatch(r"[0-9a-f]{2}", value[i + 1 : i + 3]):
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(value[i].encode("utf-8"))
            i += 1
    return raw.decode("utf-8")


def _template_regex(template: str, field: str) -> re.Pattern[str]:
    prefix, _, suffix = template.partition(field)
    return re.compile(f"{re.escape(prefix)}(.+){re.escape(suffix)}")


@dataclass(frozen=True)
class IdMapper:
    domain: str
    username_template: str
    alias_template: str
    bot_localpart: str

    @classmethod
    def from_config(cls, config: Config) -> IdMapper:
        return cls(
            domain=config.domain,
            username_template=config["bridge.username_template"],
            alias_template=config["bridge.alias_template"],
            bot_localpart=config["appservice.bot_username"],
        )

    @property
    def bot_mxid(self) -> UserID:
        return UserID(f"@{self.bot_localpart}:{self.domain}")

    def puppet_mxid(self, crm_user_id: str) -> UserID:
        localpart = self.username_template.format(userid=escape_localpart(str(crm_user_id)))
        return UserID(f"@{localpart}:{self.domain}")

    def project_alias(self, project_id: str) -> RoomAlias:
        localpart = self.alias_template.format(projectid=escape_localpart(str(project_id)))
        return RoomAlias(f"#{localpart}:{self.domain}")

    def reserved_alias(self, name: str) -> RoomAlias:
        """An alias in our namespace that no project can have: in a project's, ``=`` only
        starts an escape followed by two hex digits (escape_localpart)."""
        assert not re.match(r"[0-9a-f]{2}", name), name
        return RoomAlias(f"#{self.alias_template.format(projectid='=' + name)}:{self.domain}")

    def crm_user_id_of(self, mxid: str) -> str | None:
        """The CRM user id behind a puppet mxid, or None when mxid is not one of ours."""
        localpart, _, server = mxid.removeprefix("@").partition(":")
        if server != self.domain:
            return None
        match = _template_regex(self.username_template, "{userid}").fullmatch(localpart)
        return unescape_localpart(match.group(1)) if match else None

    def project_id_of(self, alias: str) -> str | None:
        localpart, _, server = alias.removeprefix("#").partition(":")
        if server != self.domain:
            return None
        match = _template_regex(self.alias_template, "{projectid}").fullmatch(localpart)
        if not match:
            return None
        project_id = unescape_localpart(match.group(1))
        # Only the alias project_alias makes: not a reserved one, nor another spelling.
        return project_id if escape_localpart(project_id) == match.group(1) else None

    def user_namespace_regex(self) -> str:
        prefix, _, suffix = self.username_template.partition("{userid}")
        return f"@{re.escape(prefix)}.+{re.escape(suffix)}:{re.escape(self.domain)}"

    def alias_namespace_regex(self) -> str:
        prefix, _, suffix = self.alias_template.partition("{projectid}")
        return f"#{re.escape(prefix)}.+{re.escape(suffix)}:{re.escape(self.domain)}"


# Ids the REST facade puts in URLs. Room ids of version 12 rooms are "!" + URL-safe base64,
# and event ids are "$" + URL-safe base64: dropping the sigil keeps them URL-safe. Anything
# else (older room versions with ":server") is wrapped in base64url with an "x" prefix.
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def _to_url_id(value: str, sigil: str) -> str:
    body = value[1:]
    if value.startswith(sigil) and _URL_SAFE.fullmatch(body) and not body.startswith("x"):
        return body
    return "x" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def _from_url_id(url_id: str, sigil: str) -> str | None:
    if not url_id or not _URL_SAFE.fullmatch(url_id):
        return None
    if not url_id.startswith("x"):
        return sigil + url_id
    padded = url_id[1:] + "=" * (-len(url_id[1:]) % 4)
    try:
        value = base64.urlsafe_b64decode(padded).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return value if value.startswith(sigil) else None


def conversation_id_for_room(room_id: str) -> str:
    return _to_url_id(room_id, "!")


def room_id_for_conversation(conversation_id: str) -> str | None:
    return _from_url_id(conversation_id, "!")


def message_id_for_event(event_id: str) -> str:
    return _to_url_id(event_id, "$")


def event_id_for_message(message_id: str) -> str | None:
    return _from_url_id(message_id, "$")
