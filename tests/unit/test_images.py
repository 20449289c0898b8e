"""Image checks and the remote-image fetcher (bridge.api.images), without a Codex worker.

Sizes are read from headers built here; fetches go to a tiny server on
127.0.0.1 (`tests.images.serving_images`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct

import pytest

from bridge.api.conversation import ImageRef, Said, with_checked_images
from bridge.api.images import (
    FetchPolicy,
    RemoteFetches,
    check_image,
    checked_data_url,
    fetch_image,
    sniff,
)
from bridge.config import ImageSettings
from bridge.errors import InvalidRequest, ServiceUnavailable
from tests.harness import wait_until
from tests.images import bomb_png, data_url, png, serving_images

SETTINGS = ImageSettings()


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x00" * 9
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def _gif(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, *frame, 0)
    return head + descriptor + b"\x02\x02\x4c\x01\x00\x3b"


def _webp(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("data", "mime", "size"),
    [
        (png(3, 2), "image/png", (3, 2)),
        (_jpeg(800, 600), "image/jpeg", (800, 600)),
        (_gif((10, 10), (4, 5)), "image/gif", (10, 10)),
        (
            _webp(b"VP8 ", b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", 320, 240)),
            "image/webp",
            (320, 240),
        ),
        (_webp(b"VP8L", b"\x2f" + struct.pack("<I", 99 | (49 << 14))), "image/webp", (100, 50)),
        (
            _webp(
                b"VP8X", b"\x00" * 4 + (6999).to_bytes(3, "little") + (4999).to_bytes(3, "little")
            ),
            "image/webp",
            (7000, 5000),
        ),
    ],
)
def test_each_supported_format_reports_its_pixel_size_from_the_header(
    data: bytes, mime: str, size: tuple[int, int]
) -> None:
    info = sniff(data)
    assert info is not None
    assert (info.mime, (info.width, info.height)) == (mime, size)


def test_png_declaring_14500_pixels_square_is_too_large_although_the_file_is_small() -> None:
    bomb = bomb_png()
    assert len(bomb) < 2048
    with pytest.raises(InvalidRequest) as caught:
        check_image(bomb, "messages[0].content[0].image_url.url", SETTINGS)
    assert caught.value.code == "image_too_large"
    assert "14500x14500" in caught.value.message
    assert caught.value.param == "messages[0].content[0].image_url.url"


def test_gif_frame_larger_than_its_logical_screen_counts_with_its_own_size() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_image(_gif((10, 10), (9000, 9000)), "p", SETTINGS)
    assert caught.value.code == "image_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        png()[:20],  # truncated inside IHDR
        b"\xff\xd8\xff\xda\x00\x02",  # JPEG scan before any frame header
        png(0, 1),
        b"",
    ],
)
def test_unknown_or_broken_images_are_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_image(data, "p", SETTINGS)
    assert caught.value.code == "invalid_image"


async def test_data_url_larger_than_max_bytes_is_refused_from_its_length() -> None:
    settings = ImageSettings(max_bytes=4096)
    with pytest.raises(InvalidRequest) as caught:
        await checked_data_url(data_url(png() + b"\x00" * 8192), "p", settings)
    assert caught.value.code == "image_too_large"


async def test_data_url_that_is_not_base64_is_invalid_image() -> None:
    with pytest.raises(InvalidRequest) as caught:
        await checked_data_url("data:image/png;base64,@@@@", "p", SETTINGS)
    assert caught.value.code == "invalid_image"


async def test_data_url_with_a_wrong_declared_type_is_passed_on_with_the_real_one() -> None:
    url = await checked_data_url(data_url(png(), mime="image/jpeg"), "p", SETTINGS)
    assert url.startswith("data:image/png;base64,")
    same = data_url(png())
    assert await checked_data_url(same, "p", SETTINGS) == same


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd12::1", "private"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_fetch_policy_refuses_non_public_and_metadata_addresses(address: str, why: str) -> None:
    verdict = FetchPolicy(()).verdict("img.example", ipaddress.ip_address(address))
    assert verdict is not None and why in verdict
    refusal = FetchPolicy(()).refusal(address, ipaddress.ip_address(address))
    assert refusal is not None
    assert why in refusal and "SSRF" in refusal


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("::127.0.0.1", "carrying an IPv4"),  # IPv4-compatible (deprecated)
        ("::ffff:0:127.0.0.1", "carrying an IPv4"),  # IPv4-translated
        ("64:ff9b:1::7f00:1", "carrying an IPv4"),  # RFC 8215 local-use NAT64
        ("::8.8.8.8", "carrying an IPv4"),  # refused outright, public or not
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 well-known prefix, unwrapped
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo client 127.0.0.1
        ("::ffff:169.254.169.254", "metadata"),
    ],
)
def test_fetch_policy_refuses_ipv6_forms_when_they_carry_a_non_public_ipv4_address(
    address: str, why: str
) -> None:
    verdict = FetchPolicy(()).verdict("img.example", ipaddress.ip_address(address))
    assert verdict is not None and why in verdict


def test_fetch_policy_judges_the_embedded_ipv4_address_when_it_is_public() -> None:
    policy = FetchPolicy(())
    assert policy.verdict("img.example", ipaddress.ip_address("::ffff:8.8.8.8")) is None
    assert policy.verdict("img.example", ipaddress.ip_address("64:ff9b::808:808")) is None


def test_an_allowed_mapped_network_does_not_unlock_the_metadata_address_inside_it() -> None:
    mapped = FetchPolicy(("::ffff:169.254.0.0/112",))
    assert mapped.verdict("x", ipaddress.ip_address("::ffff:169.254.169.254")) is not None
    assert mapped.verdict("x", ipaddress.ip_address("169.254.169.254")) is not None
    # Networks match the IPv4 address reached, whatever IPv6 form carries it.
    link_local = FetchPolicy(("169.254.0.0/16",))
    assert link_local.verdict("x", ipaddress.ip_address("::ffff:169.254.1.1")) is None
    assert link_local.verdict("x", ipaddress.ip_address("::ffff:169.254.169.254")) is not None
    six_to_four = FetchPolicy(("2002::/16",))
    assert six_to_four.verdict("x", ipaddress.ip_address("2002:7f00:1::")) is not None
    exact = FetchPolicy(("::127.0.0.1",))
    assert exact.verdict("x", ipaddress.ip_address("::127.0.0.1")) is None


def test_refusal_of_a_host_name_does_not_tell_the_client_its_internal_address() -> None:
    refusal = FetchPolicy(()).refusal("intranet.corp", ipaddress.ip_address("10.1.2.3"))
    assert refusal is not None
    assert "intranet.corp resolves to a non-public address" in refusal
    assert "10.1.2.3" not in refusal and "private" not in refusal


def test_fetch_policy_allows_listed_hosts_and_networks_but_not_metadata_in_a_wide_one() -> None:
    policy = FetchPolicy(("images.internal", "10.0.0.0/8", "169.254.0.0/16"))
    assert policy.refusal("images.internal", ipaddress.ip_address("192.168.1.1")) is None
    assert policy.refusal("other", ipaddress.ip_address("10.9.8.7")) is None
    assert policy.refusal("other", ipaddress.ip_address("169.254.1.1")) is None
    assert policy.refusal("other", ipaddress.ip_address("169.254.169.254")) is not None
    assert policy.refusal("other", ipaddress.ip_address("93.184.215.14")) is None
    exact = FetchPolicy(("169.254.169.254",))
    assert exact.refusal("other", ipaddress.ip_address("169.254.169.254")) is None


async def test_a_host_name_resolving_to_loopback_is_refused_without_connecting() -> None:
    async with serving_images() as server:
        with pytest.raises(InvalidRequest) as caught:
            await fetch_image(f"http://localhost:{server.port}/pixel.png", "p", SETTINGS)
        assert caught.value.code == "invalid_image_url"
        assert "non-public address" in caught.value.message and "SSRF" in caught.value.message
        assert "127.0.0.1" not in caught.value.message  # the resolved address stays in the log
        assert server.hits == []


async def test_fetch_follows_three_redirects_and_refuses_a_fourth() -> None:
    settings = ImageSettings(fetch_allow=("127.0.0.1",))
    async with serving_images() as server:
        url = await fetch_image(f"{server.base_url}/redirect/2", "p", settings)
        assert url == data_url(png())
        with pytest.raises(InvalidRequest) as caught:
            await fetch_image(f"{server.base_url}/redirect/3", "p", settings)
    assert caught.value.code == "invalid_image_url"
    assert "redirects more than 3 times" in caught.value.message


async def test_redirect_to_the_metadata_address_is_refused_before_connecting() -> None:
    settings = ImageSettings(fetch_allow=("127.0.0.1",))
    async with serving_images() as server:
        with pytest.raises(InvalidRequest) as caught:
            await fetch_image(f"{server.base_url}/to-metadata", "p", settings)
    assert caught.value.code == "invalid_image_url"
    assert "169.254.169.254" in caught.value.message and "metadata" in caught.value.message


async def test_fetch_that_outlasts_the_timeout_is_invalid_image_url() -> None:
    settings = ImageSettings(fetch_allow=("127.0.0.1",), fetch_timeout_s=0.3)
    async with serving_images() as server:
        with pytest.raises(InvalidRequest) as caught:
            await fetch_image(f"{server.base_url}/stall.png", "p", settings)
    assert caught.value.code == "invalid_image_url"
    assert "longer than 0.3s" in caught.value.message


async def test_remote_images_switched_off_are_invalid_image_url() -> None:
    settings = ImageSettings(fetch_remote=False, fetch_allow=("127.0.0.1",))
    async with serving_images() as server:
        with pytest.raises(InvalidRequest) as caught:
            await fetch_image(f"{server.base_url}/pixel.png", "p", settings)
        assert server.hits == []
    assert caught.value.code == "invalid_image_url"
    assert "images.fetch_remote" in caught.value.message


# --- fetches bounded bridge-wide and per request (review item 2) ---------------------------

# Longer than any fetch here takes; the stalled fetch is cancelled, never timed out.
STALL_TIMEOUT_S = 60.0
SLOT_WAIT_S = 0.5
SETTLE_S = 10.0


async def test_a_fetch_beyond_the_bridge_wide_bound_waits_then_is_503_without_connecting() -> None:
    settings = ImageSettings(fetch_allow=("127.0.0.1",), fetch_timeout_s=STALL_TIMEOUT_S)
    fetches = RemoteFetches(1, wait_s=SLOT_WAIT_S)
    async with serving_images() as server:
        stalled = asyncio.create_task(
            fetch_image(f"{server.base_url}/stall.png", "p", settings, fetches=fetches)
        )
        try:
            await wait_until(lambda: server.hits == ["/stall.png"], timeout=SETTLE_S)
            assert fetches.in_use == 1
            with pytest.raises(ServiceUnavailable) as caught:
                await fetch_image(f"{server.base_url}/pixel.png", "p", settings, fetches=fetches)
            assert caught.value.code == "server_busy" and caught.value.retry_after is not None
            assert server.hits == ["/stall.png"]  # the refused fetch never connected
        finally:
            stalled.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stalled
        assert fetches.in_use == 0
        # The freed slot serves the next fetch.
        url = await fetch_image(f"{server.base_url}/pixel.png", "p", settings, fetches=fetches)
        assert url == data_url(png())


async def test_a_requests_remote_images_are_400_when_together_above_max_total_bytes() -> None:
    padded = png() + b"\x00" * 700  # bytes after IEND: still a valid PNG header
    settings = ImageSettings(fetch_allow=("127.0.0.1",), max_total_bytes=1024)
    fetches = RemoteFetches(8, wait_s=SLOT_WAIT_S)
    async with serving_images(pixel=padded) as server:
        one = [Said("user", "look", (ImageRef(f"{server.base_url}/pixel.png", "img0"),))]
        checked = await with_checked_images(one, settings, param="messages", fetches=fetches)
        assert isinstance(checked[0], Said) and checked[0].images[0].checked
        two = [
            Said(
                "user",
                "look",
                (
                    ImageRef(f"{server.base_url}/pixel.png", "img0"),
                    ImageRef(f"{server.base_url}/pixel.png?again", "img1"),
                ),
            )
        ]
        with pytest.raises(InvalidRequest) as caught:
            await with_checked_images(two, settings, param="messages", fetches=fetches)
    assert caught.value.code == "invalid_image_url"
    assert "total more than 1024 bytes" in caught.value.message
    assert fetches.in_use == 0
