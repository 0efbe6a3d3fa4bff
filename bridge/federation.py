"""Guests from other homeservers: who may be one, and the server ACL that enforces it.

A guest is a Matrix account on another server that the CRM lists on a project
(``guests: ["@partner:other.example"]``). The CRM stays the source of truth: the directory
invites listed guests whose server is allowed, removes the others, and writes
``m.room.server_acl`` so that the homeserver itself refuses events from any other server.
Matching follows server ACLs: by host, without the port (the Matrix spec compares server
names that way), with ``*`` and ``?`` globs.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import Config

ACL_EVENT = "m.room.server_acl"


def server_of(mxid: str) -> str:
    """The server name of a user id (``@a:b.example:8448`` → ``b.example:8448``)."""
    return mxid.partition(":")[2]


def host_of(server_name: str) -> str:
    """A server name without its port, lowercased: what server ACLs match on."""
    name = server_name.strip().lower()
    if name.startswith("["):  # an IPv6 literal, [::1]:8448
        return name[: name.find("]") + 1] if "]" in name else name
    host, sep, port = name.rpartition(":")
    return host if sep and port.isdigit() else name


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FederationPolicy:
    """``federation.*`` of the config, with this homeserver's own name."""

    own_server: str
    allowed_servers: tuple[str, ...] = ()
    direct_with_guests: bool = False
    members_may_invite: bool = False
    guest_level_setting: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> FederationPolicy:
        allowed = config.get("federation.allowed_servers") or []
        level = config.get("federation.guest_level")
        return cls(
            own_server=config.domain,
            allowed_servers=tuple(host_of(str(s)) for s in allowed if str(s).strip()),
            direct_with_guests=bool(config.get("federation.direct_with_guests", False)),
            members_may_invite=bool(config.get("federation.members_may_invite", False)),
            guest_level_setting=int(level) if level is not None else None,
        )

    def is_remote(self, mxid: str) -> bool:
        return host_of(server_of(mxid)) != host_of(self.own_server)

    def is_allowed(self, mxid: str) -> bool:
        """Whether a user's server may take part (a local user always may)."""
        return self.server_allowed(server_of(mxid))

    def server_allowed(self, server_name: str) -> bool:
        """This homeserver, or one whose users may be guests (media of guests, say)."""
        host = host_of(server_name)
        if host == host_of(self.own_server):
            return True
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allowed_servers)

    def guest_level(self, role_levels: Mapping[str, int]) -> int:
        """Below every CRM role: guests may post, but never pin, invite or redact others.
        A configured level is honoured up to one below the lowest role."""
        below_every_role = min(role_levels.values(), default=0) - 1
        if self.guest_level_setting is not None:
            return min(self.guest_level_setting, below_every_role)
        return below_every_role

    def server_acl(self) -> dict[str, Any]:
        """The room's ACL: this server and the allowed ones; IP literals only when named.

        Synapse checks its own name with the port when it writes the ACL (and refuses one
        that would shut itself out), and other servers' names without: both are listed.
        """
        return _acl(self.own_server, self.allowed_servers)

    def direct_acl(self) -> dict[str, Any]:
        """A new DM's ACL: this server alone, unless ``direct_with_guests`` lets the allowed
        servers in too."""
        return _acl(self.own_server, self.allowed_servers if self.direct_with_guests else ())

    def listed_guests(self, guests: Iterable[str]) -> list[str]:
        """The guests the directory should invite: listed, remote, and on an allowed server."""
        return sorted({g for g in guests if self.is_remote(g) and self.is_allowed(g)})


def _acl(own_server: str, allowed: Iterable[str]) -> dict[str, Any]:
    own = own_server.strip().lower()
    allow = sorted({own, host_of(own), *allowed})
    # IP-literal names only when one is listed (this server's own name may be one).
    literals = any(is_ip_literal(host_of(h)) for h in allow)
    return {"allow": allow, "deny": [], "allow_ip_literals": literals}
