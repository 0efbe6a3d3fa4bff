"""Attachments by URL: files that the CRM's own file server holds (``attachments.import_from``).

The CRM's page uploads to the CRM and sends the file's URL. For a URL under one of the
configured prefixes the bridge fetches the file, checks it as an upload (size limit, type
from the bytes) and stores it in the Matrix media repository, so the message is an ordinary
Matrix file that Element users see. The fetch is a server-side request to a URL a client
chose, so it is fenced:

* only URLs under a configured prefix, and every redirect must land under one too; the URL
  is compared as the client will send it (normalised), and a path with dot segments or an
  encoded dot, slash or backslash is refused;
* the address connected to is checked after resolution (no DNS trick reaches an internal
  host): loopback, link-local, private and other special addresses are refused unless a
  prefix names that very address as its host (``http://10.0.0.5:8080/files/``);
* one timeout for the whole fetch (``attachments.import_timeout``), which is also the
  deadline for all the imports of one send, and the upload's size limit while reading.

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
from yarl import URL

from ..context import CONFIG
from ..errors import BadRequest, PayloadTooLarge

MAX_REDIRECTS = 3
CONCURRENCY = 3  # imports of one send fetched at once
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


# In a path, these would be undone by the client or the server (``/uploads/../admin``,
# ``%2e%2e``, an encoded slash or backslash): refused rather than guessed at.
_DOT_SEGMENTS = (".", "..")
_ENCODED = ("%2e", "%2f", "%5c", "\\")


def checked(url: str, under: list[str]) -> URL | None:
    """The URL exactly as it will be sent, if it is a plain http(s) URL (no user info, no dot
    segments, no encoded dot, slash or backslash in its path) under one of the prefixes,
    compared after normalisation with the prefix's own scheme, host and port; else None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    path = parts.path.lower()
    if any(code in path for code in _ENCODED):
        return None
    if any(segment in _DOT_SEGMENTS for segment in path.split("/")):
        return None
    try:
        normal = URL(url).with_fragment(None)
        target = URL(str(normal), encoded=True)
    except (ValueError, TypeError):
        return None
    for prefix in under:
        try:
            mine = URL(prefix)
        except (ValueError, TypeError):
            continue
        same_origin = (mine.scheme, mine.host, mine.port) == (
            target.scheme, target.host, target.port
        )  # fmt: skip
        if same_origin and target.raw_path.startswith(mine.raw_path):
            return target
    return None


def allowed(url: str, under: list[str]) -> bool:
    return checked(url, under) is not None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _special(ip: Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 addresses that carry an IPv4 one: judged by that (::ffff:127.0.0.1 is
        # loopback too; 6to4 2002:0a00:0001:: and NAT64 64:ff9b::10.0.0.1 reach 10.0.0.1).
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _special(embedded):
            return True
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


async def fetch_all(app: web.Application, urls: list[str]) -> list[tuple[str, bytes]]:
    """All of one send's imports, in order: at most CONCURRENCY at a time and one deadline
    (``attachments.import_timeout`` from now) for them all, so a send with many attachments
    is held no longer than one import. The first failure cancels the rest."""
    deadline = asyncio.get_running_loop().time() + _timeout(app)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(url: str) -> tuple[str, bytes]:
        async with gate:
            return await fetch(app, url, deadline)

    tasks = [asyncio.ensure_future(one(url)) for url in urls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _timeout(app: web.Application) -> float:
    return float(app[CONFIG].get("attachments.import_timeout") or 10)


async def fetch(app: web.Application, url: str, deadline: float | None = None) -> tuple[str, bytes]:
    """(the file name the URL shows, its bytes), or a 4xx saying why not. Given a deadline
    (the loop's clock), the fetch ends by then."""
    under = prefixes(app)
    target = checked(url, under)
    if target is None:
        raise ImportFailed(
            "Each attachment must be a file returned by /api/chat/upload, or a URL under "
            "attachments.import_from"
        )
    limit = int(app[CONFIG]["api.max_upload_size"])
    timeout = _timeout(app)
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + timeout
    named = _named(under)
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(named), use_dns_cache=False)
    try:
        # One clock for the whole fetch (redirects, body): no task of its own to orphan.
        async with asyncio.timeout_at(deadline):
            async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
                return await _follow(session, target, under, named, limit)
    except TimeoutError as e:
        raise ImportFailed(f"Fetching the attachments took longer than {timeout:g} s") from e
    except aiohttp.ClientError as e:
        raise ImportFailed(f"The attachment could not be fetched ({type(e).__name__})") from e


async def _follow(
    session: aiohttp.ClientSession, url: URL, under: list[str], named: set[Address], limit: int
) -> tuple[str, bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        host = url.host or ""
        if not check_address(host, named):
            raise ImportFailed(f"The file's host {host} is an address not allowed")
        # The URL object as checked, sent as is (encoded): nothing normalises it after.
        async with session.get(url, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                location = urljoin(str(url), response.headers.get("Location", ""))
                target = checked(location, under)
                if target is None:
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


def _name_of(url: URL) -> str:
    return unquote(url.raw_path.rsplit("/", 1)[-1])
