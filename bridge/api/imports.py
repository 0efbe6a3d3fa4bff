"""Attachments by URL: files that the CRM's own file server holds (``attachments.import_from``).

The CRM's page uploads to the CRM and sends the file's URL. For a URL under one of the
configured prefixes the bridge fetches the file, checks it as an upload (size limit, type
from the bytes) and stores it in the Matrix media repository, so the message is an ordinary
Matrix file that Element users see. The fetch is a server-side request to a URL a client
chose, so it is fenced:

* only URLs under a configured prefix, and every redirect must land under one too;
* the address connected to is checked after resolution (no DNS trick reaches an internal
  host): loopback, link-local, private and other special addresses are refused unless a
  prefix names that very address as its host (``http://10.0.0.5:8080/files/``);
* one timeout for the whole fetch (``attachments.import_timeout``), and the upload's size
  limit while reading.

Any failure is a 4xx that says what went wrong, raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from ..context import CONFIG
from ..errors import BadRequest, PayloadTooLarge

MAX_REDIRECTS = 3
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImportFailed(BadRequest):
    errcode = "M_IMPORT_FAILED"


def prefixes(app: web.Application) -> list[str]:
    """The configured prefixes; one without a path gets "/" (so that the prefix
    ``https://crm.example.com`` does not also match ``https://crm.example.com.evil.net``)."""
    out = []
    for prefix in app[CONFIG].get("attachments.import_from") or []:
        prefix = str(prefix or "")
        if prefix and not urlsplit(prefix).path:
            prefix += "/"
        if prefix:
            out.append(prefix)
    return out


def allowed(url: str, under: list[str]) -> bool:
    """Under one of the prefixes, and a plain http(s) URL (no user info) whose host and port,
    as parsed, are the prefix's own."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        return False
    for prefix in under:
        if not url.startswith(prefix):
            continue
        mine = urlsplit(prefix)
        if (mine.hostname, mine.port) == (parts.hostname, parts.port):
            return True
    return False


def _special(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def _named(under: list[str]) -> set[Address]:
    """The addresses the prefixes name as their host: those may be special."""
    out: set[Address] = set()
    for prefix in under:
        try:
            out.add(ipaddress.ip_address((urlsplit(prefix).hostname or "").strip("[]")))
        except ValueError:
            continue
    return out


class _CheckedResolver(AbstractResolver):
    """aiohttp connects only to what the resolver returns: the check sits where the
    address is chosen, so a name that resolves twice cannot slip past it."""

    def __init__(self, named: set[Address]) -> None:
        self.named = named
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept = [r for r in found if check_address(r["host"], self.named)]
        if not kept:
            raise ImportFailed(f"The file's host {host} resolves to an address not allowed")
        return kept

    async def close(self) -> None:
        await self.inner.close()


def check_address(host: str, named: set[Address]) -> bool:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True  # a name: checked once resolved
    return ip in named or not _special(ip)


async def fetch(app: web.Application, url: str) -> tuple[str, bytes]:
    """(the file name the URL shows, its bytes), or a 4xx saying why not."""
    under = prefixes(app)
    if not allowed(url, under):
        raise ImportFailed(
            "Each attachment must be a file returned by /api/chat/upload, or a URL under "
            "attachments.import_from"
        )
    config = app[CONFIG]
    limit = int(config["api.max_upload_size"])
    timeout = float(config.get("attachments.import_timeout") or 10)
    named = _named(under)
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(named), use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(
            connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session:
            return await asyncio.wait_for(_follow(session, url, under, named, limit), timeout)
    except TimeoutError as e:
        raise ImportFailed(f"Fetching the attachment took longer than {timeout:g} s") from e
    except aiohttp.ClientError as e:
        raise ImportFailed(f"The attachment could not be fetched ({type(e).__name__})") from e


async def _follow(
    session: aiohttp.ClientSession, url: str, under: list[str], named: set[Address], limit: int
) -> tuple[str, bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        host = urlsplit(url).hostname or ""
        if not check_address(host, named):
            raise ImportFailed(f"The file's host {host} is an address not allowed")
        async with session.get(url, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                target = urljoin(url, response.headers.get("Location", ""))
                if not allowed(target, under):
                    raise ImportFailed("The attachment's URL redirects outside import_from")
                url = target
                continue
            if response.status != 200:
                raise ImportFailed(f"The attachment's URL answered HTTP {response.status}")
            if (response.content_length or 0) > limit:
                raise PayloadTooLarge("The attachment is larger than the allowed size")
            return _name_of(url), await _read(response, limit)
    raise ImportFailed("The attachment's URL redirects too many times")


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("The attachment is larger than the allowed size")
        chunks.append(chunk)
    return b"".join(chunks)


def _name_of(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])
