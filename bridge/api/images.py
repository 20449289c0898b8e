"""Client images, checked before Codex sees them: `data:` URLs measured, `http(s)` URLs fetched.

Codex decodes every image it is given, so a small file declaring a huge
canvas (a decompression bomb) costs a worker gigabytes. Every image is
measured here from its header alone — byte size, format (PNG, JPEG, GIF,
WebP) and pixel dimensions — against `[images]` settings, and anything
else is a 400 before a worker is involved.

Remote images are fetched by the bridge, never by Codex: the body is read
with a size cap, its type must be `image/*`, the whole fetch (redirects
included, at most `MAX_REDIRECTS`, each re-checked) has one timeout, and
every address a host name resolves to must be public — not loopback,
private, link-local, multicast, unspecified, reserved or a cloud metadata
address — unless the host or its network is in `images.fetch_allow`. The
connection goes to exactly the addresses that were checked (the resolver
that checks them is the one aiohttp connects with), so a second DNS answer
cannot point it elsewhere. Codex receives the bytes as a `data:` URL.

Fetches happen before a request is admitted (no key cap or worker slot is
held yet), so they have bounds of their own: at most
`images.max_concurrent_fetches` run at once bridge-wide (`RemoteFetches`;
each reads at most `images.max_bytes`, so that also bounds the bytes in
flight), one more waits up to `codex.queue_timeout_s` and is then a 503
with Retry-After; and one request's remote images together may total at
most `images.max_total_bytes` (`ByteBudget`).

Knows HTTP fetching, image headers and the image settings; no OpenAI shapes
beyond the error codes, no Codex.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

import aiohttp
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bridge.config import ImageSettings
from bridge.errors import InvalidRequest, ServiceUnavailable

log = structlog.get_logger("bridge.images")

# Redirects followed per fetch; each hop's host is checked again.
MAX_REDIRECTS: Final = 3
# Read size while streaming a remote body; the cap is checked per chunk.
FETCH_CHUNK_BYTES: Final = 64 * 1024
# Base64 payloads larger than this are decoded off the event loop.
INLINE_DECODE_BYTES: Final = 1024 * 1024
# Remote images of one request fetched at once, so one request cannot take
# every bridge-wide fetch slot.
MAX_FETCHES_PER_REQUEST: Final = 4
# Fetch slots free up as fetches end (each within images.fetch_timeout_s).
FETCH_RETRY_AFTER_S: Final = 2.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS
# task metadata, Alibaba). Most are link-local or private already; named so
# the refusal says what they are, and an allowed network does not unlock
# them: only their exact address or host name in images.fetch_allow does.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
# IPv6 ranges whose last 32 bits are an IPv4 address: RFC 6052 NAT64
# well-known prefix, IPv4-compatible (RFC 4291, deprecated) and
# IPv4-translated (RFC 2765). Mapped, 6to4 and Teredo are unwrapped by
# `ipaddress` itself.
_LOW_32_IPV4_CARRIERS: Final = tuple(
    ipaddress.ip_network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96")
)
# Refused outright unless their exact address is allowed: deprecated or
# rare forms no public image host uses, and RFC 8215 local-use NAT64, where
# the network chooses where the IPv4 address sits.
_OPAQUE_IPV4_CARRIERS: Final = tuple(
    ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48")
)

_PNG: Final = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (SOF0..SOF15 minus DHT, JPG and DAC).
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True, slots=True)
class ImageInfo:
    mime: str
    width: int
    height: int


def _invalid_image(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid image: {why}. Supported formats: PNG, JPEG, GIF and WebP.",
        param=param,
        code="invalid_image",
    )


def _bad_url(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"Could not use the image URL: {why}.", param=param, code="invalid_image_url"
    )


# -- image headers -------------------------------------------------------------------------
def sniff(data: bytes) -> ImageInfo | None:
    """Format and pixel size from the header alone; None for anything else or a broken header."""
    try:
        if data.startswith(_PNG) and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return _info("image/png", width, height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _gif(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(data)
    except (struct.error, IndexError):
        return None
    return None


def _info(mime: str, width: int, height: int) -> ImageInfo | None:
    return ImageInfo(mime, width, height) if width > 0 and height > 0 else None


def _gif(data: bytes) -> ImageInfo | None:
    # Frames may reach beyond the logical screen: the canvas is their union.
    width, height = struct.unpack("<HH", data[6:10])
    pos = 13 + _color_table(data[10])
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:  # image descriptor
            left, top, w, h = struct.unpack("<HHHH", data[pos + 1 : pos + 9])
            width, height = max(width, left + w), max(height, top + h)
            flags = data[pos + 9]
            pos += 10 + _color_table(flags) + 1  # + LZW minimum code size
        elif block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:  # trailer or garbage: nothing more to measure
            break
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        pos += 1
    return _info("image/gif", width, height)


def _color_table(flags: int) -> int:
    return (3 << ((flags & 7) + 1)) if flags & 0x80 else 0


def _jpeg(data: bytes) -> ImageInfo | None:
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return _info("image/jpeg", width, height)
        pos += 2 + length
    return None


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return _info("image/webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and data[20] == 0x2F:
        (bits,) = struct.unpack("<I", data[21:25])
        return _info("image/webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _info("image/webp", width, height)
    return None


def check_image(data: bytes, param: str, settings: ImageSettings) -> ImageInfo:
    """The image's format and size, or a 400 naming the limit it breaks."""
    if len(data) > settings.max_bytes:
        raise _too_large(param, f"{len(data)} bytes, above the limit of {settings.max_bytes}")
    info = sniff(data)
    if info is None:
        raise _invalid_image(param, "the data is not a PNG, JPEG, GIF or WebP image")
    if info.width * info.height > settings.max_pixels:
        raise _too_large(
            param,
            f"{info.width}x{info.height} pixels, above the limit of {settings.max_pixels} pixels",
        )
    return info


def _too_large(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"Image too large: {what}.", param=param, code="image_too_large")


# -- data: URLs ----------------------------------------------------------------------------
async def checked_data_url(url: str, param: str, settings: ImageSettings) -> str:
    """A checked `data:` URL for Codex: the client's own when it is already base64 of that type."""
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise _invalid_image(param, "the data: URL has no ',' before its data")
    params = [p.strip().lower() for p in header.split(";")]
    is_base64 = params[-1] == "base64"
    if is_base64:
        # Decoded size from the encoded length: refuse before decoding.
        if (len(payload) * 3) // 4 - 2 > settings.max_bytes:
            raise _too_large(param, f"more than {settings.max_bytes} bytes")
        if len(payload) > INLINE_DECODE_BYTES:
            data = await asyncio.to_thread(_b64decode, payload, param)
        else:
            data = _b64decode(payload, param)
    else:
        if len(payload) > 3 * settings.max_bytes:
            raise _too_large(param, f"more than {settings.max_bytes} bytes")
        data = unquote_to_bytes(payload)
    info = check_image(data, param, settings)
    if is_base64 and params[0] == info.mime and len(params) == 2:
        return url
    return to_data_url(data, info)


def _b64decode(payload: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_image(param, "the data: URL is not valid base64") from None


def to_data_url(data: bytes, info: ImageInfo) -> str:
    return f"data:{info.mime};base64,{base64.b64encode(data).decode('ascii')}"


# -- remote images -------------------------------------------------------------------------
class FetchPolicy:
    """Which addresses a fetch may connect to: public ones, and what the operator allows.

    An IPv6 address that carries an IPv4 one (mapped, compatible, translated,
    NAT64, 6to4, Teredo) is judged by the IPv4 address inside: every check,
    the allow-list's and the metadata rule included, runs on it (only an
    exact allowed address may also name the outer form). The forms
    that are deprecated or whose IPv4 position is the network's own choice
    (`::/96`, `::ffff:0:0:0/96`, `64:ff9b:1::/48`) are refused outright
    unless their exact address is allowed.
    """

    def __init__(self, allow: tuple[str, ...]) -> None:
        self._hosts: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self._hosts.add(entry.strip().lower().rstrip("."))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def _exactly_allowed(self, *addresses: IPAddress) -> bool:
        return any(
            net.num_addresses == 1 and address in net
            for net in self._networks
            for address in addresses
        )

    def verdict(self, host: str, address: IPAddress) -> str | None:
        """Why `host` at `address` must not be fetched (for the log, never the client), or None."""
        if self.host_allowed(host):
            return None
        inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        subject: IPAddress = inner if inner is not None else address
        if self._exactly_allowed(address, subject):
            return None
        if address.version == 6 and any(address in net for net in _OPAQUE_IPV4_CARRIERS):
            if address.is_loopback or address.is_unspecified:
                return _non_public(address)
            return "an IPv6 form carrying an IPv4 address (IPv4-compatible, -translated or NAT64)"
        if subject in METADATA_ADDRESSES:
            # Only an exact entry unlocks a metadata service, not a wide CIDR.
            return _non_public(subject)
        # Networks are matched against the address actually reached: an
        # allowed IPv6 range never unlocks the IPv4 addresses it can carry.
        if any(subject in net for net in self._networks):
            return None
        return _non_public(subject)

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """What the client is told when `host` at `address` must not be fetched, or None.

        A literal address is the client's own: it hears why. A host name's
        addresses are the operator's network layout: the client hears only
        that it is not public; the address and reason go to the log.
        """
        why = self.verdict(host, address)
        if why is None:
            return None
        bare = host.strip("[]")
        if bare.split("%", 1)[0] == str(address) or _is_literal(bare):
            where = f"{bare} is {why}"
        else:
            log.warning("image fetch refused", host=host, address=str(address), reason=why)
            where = f"{host} resolves to a non-public address"
        return (
            f"{where}; the bridge refuses to fetch from such addresses (SSRF guard) "
            "unless the operator lists the host or network in images.fetch_allow"
        )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, in any form that connects to it, or None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _LOW_32_IPV4_CARRIERS) and not (
        address.is_loopback or address.is_unspecified
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _non_public(address: IPAddress) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a reserved, non-public address"
    return None


class _CheckingResolver(AbstractResolver):
    """Resolves like the system does, then refuses unless every address passes the policy.

    aiohttp connects to exactly the addresses returned here, so what was
    checked is what is used.
    """

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self.refused: str | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            refusal = self._policy.refusal(host, address)
            if refusal is not None:
                self.refused = refusal
                raise OSError(refusal)
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        pass


class RemoteFetches:
    """Bridge-wide: at most `limit` remote image fetches at once; one more waits at most `wait_s`."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self.wait_s = wait_s
        self.in_use = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable(
                "The bridge is fetching too many remote images at once; retry shortly.",
                code="server_busy",
                retry_after=FETCH_RETRY_AFTER_S,
            ) from None
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
            self._slots.release()


IMAGE_FETCHES: Final = web.AppKey("image_fetches", RemoteFetches)


class ByteBudget:
    """The bytes one request's remote images may total (`images.max_total_bytes`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, size: int, param: str) -> None:
        self.used += size
        if self.used > self.limit:
            raise _bad_url(
                param,
                f"this request's remote images total more than {self.limit} bytes "
                "(images.max_total_bytes)",
            )

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


async def fetch_image(
    url: str,
    param: str,
    settings: ImageSettings,
    *,
    fetches: RemoteFetches | None = None,
    budget: ByteBudget | None = None,
) -> str:
    """Fetches an `http(s)` image URL under the SSRF guard; a checked `data:` URL for Codex.

    With `fetches`, the fetch waits for a bridge-wide slot first (503 when
    none frees up in time); with `budget`, its bytes count against the
    request's total.
    """
    if not settings.fetch_remote:
        raise _bad_url(
            param,
            "this bridge does not fetch remote images (images.fetch_remote is off); "
            "send the image inline as a data: URL",
        )
    budget = budget if budget is not None else ByteBudget(settings.max_total_bytes)
    async with fetches.slot() if fetches is not None else contextlib.nullcontext():
        return await _fetch(url, param, settings, budget)


async def _fetch(url: str, param: str, settings: ImageSettings, budget: ByteBudget) -> str:
    policy = FetchPolicy(settings.fetch_allow)
    resolver = _CheckingResolver(policy)
    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
            async with aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            ) as session:
                data = await _follow(session, URL(url), param, policy, settings, budget)
    except TimeoutError:
        raise _bad_url(
            param, f"fetching it took longer than {settings.fetch_timeout_s:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        raise _bad_url(param, resolver.refused or f"fetching it failed ({_reason(exc)})") from None
    except (ValueError, UnicodeError):
        raise _bad_url(param, "it is not a valid http(s) URL") from None
    return to_data_url(data, check_image(data, param, settings))


def _reason(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return type(exc).__name__


async def _follow(
    session: aiohttp.ClientSession,
    url: URL,
    param: str,
    policy: FetchPolicy,
    settings: ImageSettings,
    budget: ByteBudget,
) -> bytes:
    for _hop in range(MAX_REDIRECTS + 1):
        if url.scheme not in ("http", "https") or not url.host:
            raise _bad_url(param, f"'{url.scheme}:' URLs are not fetched, only http(s)")
        _check_literal(url.host, param, policy)
        async with session.get(
            url,
            allow_redirects=False,
            headers={"Accept": "image/*", "Accept-Encoding": "identity"},
        ) as response:
            if response.status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise _bad_url(param, f"it answered HTTP {response.status} without a Location")
                url = url.join(URL(location))
                continue
            if response.status != 200:
                raise _bad_url(param, f"fetching it answered HTTP {response.status}")
            if not response.content_type.startswith("image/"):
                raise _bad_url(
                    param, f"it serves '{response.content_type}', not an image/* content type"
                )
            if response.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise _bad_url(param, "it answered with a compressed body")
            return await _read_capped(response, param, settings.max_bytes, budget)
    raise _bad_url(param, f"it redirects more than {MAX_REDIRECTS} times")


def _check_literal(host: str, param: str, policy: FetchPolicy) -> None:
    """IP-literal hosts never reach the resolver: check them here."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return
    refusal = policy.refusal(host, address)
    if refusal is not None:
        raise _bad_url(param, refusal)


async def _read_capped(
    response: aiohttp.ClientResponse, param: str, limit: int, budget: ByteBudget
) -> bytes:
    length = response.content_length
    if length is not None and length > limit:
        raise _bad_url(param, f"it is {length} bytes, above the {limit} limit")
    if length is not None and length > budget.remaining:
        budget.charge(length, param)  # refused from the header: nothing of it is read
    body = bytearray()
    async for chunk in response.content.iter_chunked(FETCH_CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            raise _bad_url(param, f"it is larger than the {limit} byte limit")
        budget.charge(len(chunk), param)
    return bytes(body)
