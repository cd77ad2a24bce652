"""Tests of the PROXY protocol header parser (HAProxy PROXY protocol v1 and v2)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpproto._events import ProxyHeader
from smtpproto._proxy import ProxyHeaderError, parse_proxy_header

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LARGE = 100_000
TRAILER = b"EHLO client.example\r\n"


# Builders. The CRC32c here is the bitwise form, independent of the parser's table.


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def v2(ver_cmd: int, fam: int, block: bytes = b"", length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + block


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def inet(source: str, destination: str, source_port: int, port: int) -> bytes:
    return (
        IPv4Address(source).packed
        + IPv4Address(destination).packed
        + source_port.to_bytes(2, "big")
        + port.to_bytes(2, "big")
    )


def inet6(source: str, destination: str, source_port: int, port: int) -> bytes:
    return (
        IPv6Address(source).packed
        + IPv6Address(destination).packed
        + source_port.to_bytes(2, "big")
        + port.to_bytes(2, "big")
    )


def unix(source: bytes, destination: bytes) -> bytes:
    return source.ljust(108, b"\x00") + destination.ljust(108, b"\x00")


def with_crc32c(header: bytes, tlvs: bytes = b"") -> bytes:
    """Append ``tlvs`` and a CRC32C TLV to a v2 header and fix its length field."""
    body = header[16:] + tlvs + tlv(0x03, bytes(4))
    zeroed = header[:14] + len(body).to_bytes(2, "big") + body
    return zeroed[:-4] + crc32c(zeroed).to_bytes(4, "big")


def check_all_ways(data: bytes, expected: ProxyHeader) -> None:
    """Feed a whole header, each of its prefixes and the header with trailing bytes."""
    assert parse_proxy_header(data, LARGE) == (expected, len(data))
    assert parse_proxy_header(data, len(data)) == (expected, len(data))
    assert parse_proxy_header(bytearray(data), LARGE) == (expected, len(data))
    assert parse_proxy_header(memoryview(data), LARGE) == (expected, len(data))

    for end in range(len(data)):
        assert parse_proxy_header(data[:end], LARGE) is None, end
        assert parse_proxy_header(data[:end], len(data)) is None, end

    result = parse_proxy_header(data + TRAILER, LARGE)
    assert result == (expected, len(data))
    result = parse_proxy_header(memoryview(data + TRAILER), LARGE)
    assert result == (expected, len(data))


# Valid headers.

V1_MAX_IPV6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
V1_LONGEST_TCP6 = f"PROXY TCP6 {V1_MAX_IPV6} {V1_MAX_IPV6} 65535 65535\r\n".encode()
V1_LONGEST_UNKNOWN = (
    f"PROXY UNKNOWN {V1_MAX_IPV6} {V1_MAX_IPV6} 65535 65535\r\n".encode()
)

VALID_V1 = [
    pytest.param(
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET",
            protocol="STREAM",
            source_address="192.168.0.1",
            source_port=56324,
            destination_address="192.168.0.11",
            destination_port=443,
        ),
        id="tcp4",
    ),
    pytest.param(
        b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n",
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET",
            protocol="STREAM",
            source_address="255.255.255.255",
            source_port=65535,
            destination_address="0.0.0.0",
            destination_port=0,
        ),
        id="tcp4-extremes",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n",
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET6",
            protocol="STREAM",
            source_address="2001:db8::1",
            source_port=40000,
            destination_address="2001:db8::25",
            destination_port=25,
        ),
        id="tcp6",
    ),
    pytest.param(
        b"PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 :: 1 2\r\n",
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET6",
            protocol="STREAM",
            source_address="2001:db8::1",
            source_port=1,
            destination_address="::",
            destination_port=2,
        ),
        id="tcp6-uppercase-exploded",
    ),
    pytest.param(
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1025 587\r\n",
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET6",
            protocol="STREAM",
            source_address=str(IPv6Address("::ffff:192.0.2.1")),
            source_port=1025,
            destination_address="::1",
            destination_port=587,
        ),
        id="tcp6-ipv4-mapped",
    ),
    pytest.param(
        V1_LONGEST_TCP6,
        ProxyHeader(
            version=1,
            command="PROXY",
            family="INET6",
            protocol="STREAM",
            source_address=V1_MAX_IPV6,
            source_port=65535,
            destination_address=V1_MAX_IPV6,
            destination_port=65535,
        ),
        id="tcp6-longest",
    ),
    pytest.param(
        b"PROXY UNKNOWN\r\n",
        ProxyHeader(version=1, command="PROXY", family="UNSPEC", protocol="UNSPEC"),
        id="unknown",
    ),
    pytest.param(
        V1_LONGEST_UNKNOWN,
        ProxyHeader(version=1, command="PROXY", family="UNSPEC", protocol="UNSPEC"),
        id="unknown-107-bytes",
    ),
    pytest.param(
        b"PROXY UNKNOWN any\x00thing \xff\r goes\r\n",
        ProxyHeader(version=1, command="PROXY", family="UNSPEC", protocol="UNSPEC"),
        id="unknown-ignored-rest",
    ),
]

INET_BLOCK = inet("198.51.100.7", "203.0.113.25", 51234, 25)
INET_EVENT = ProxyHeader(
    version=2,
    command="PROXY",
    family="INET",
    protocol="STREAM",
    source_address="198.51.100.7",
    source_port=51234,
    destination_address="203.0.113.25",
    destination_port=25,
)
SSL_VALUE = b"\x07\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client")

VALID_V2 = [
    pytest.param(v2(0x21, 0x11, INET_BLOCK), INET_EVENT, id="inet-stream"),
    pytest.param(
        v2(0x21, 0x12, INET_BLOCK),
        dataclasses.replace(INET_EVENT, protocol="DGRAM"),
        id="inet-dgram",
    ),
    pytest.param(
        v2(0x21, 0x21, inet6("2001:db8::7", "2001:db8::25", 65535, 0)),
        ProxyHeader(
            version=2,
            command="PROXY",
            family="INET6",
            protocol="STREAM",
            source_address="2001:db8::7",
            source_port=65535,
            destination_address="2001:db8::25",
            destination_port=0,
        ),
        id="inet6-stream",
    ),
    pytest.param(
        v2(0x21, 0x31, unix(b"/run/proxy.sock", b"/run/smtp.sock")),
        ProxyHeader(
            version=2,
            command="PROXY",
            family="UNIX",
            protocol="STREAM",
            source_address="/run/proxy.sock",
            destination_address="/run/smtp.sock",
        ),
        id="unix-stream",
    ),
    pytest.param(
        v2(0x21, 0x32, unix(b"\x00abstract", b"/tmp/\xff\x00junk")),
        ProxyHeader(
            version=2,
            command="PROXY",
            family="UNIX",
            protocol="DGRAM",
            source_address="\x00abstract",
            destination_address="/tmp/\udcff",
        ),
        id="unix-abstract-and-undecodable",
    ),
    pytest.param(
        v2(0x21, 0x31, b"/" * 216),
        ProxyHeader(
            version=2,
            command="PROXY",
            family="UNIX",
            protocol="STREAM",
            source_address="/" * 108,
            destination_address="/" * 108,
        ),
        id="unix-paths-without-nul",
    ),
    pytest.param(
        v2(0x20, 0x00),
        ProxyHeader(version=2, command="LOCAL", family="UNSPEC", protocol="UNSPEC"),
        id="local",
    ),
    pytest.param(
        # The spec says to skip the block of a LOCAL header, so it is never parsed.
        v2(0x20, 0x11, INET_BLOCK[:5] + b"\xff\xff\xff"),
        ProxyHeader(version=2, command="LOCAL", family="INET", protocol="STREAM"),
        id="local-ignores-block",
    ),
    pytest.param(
        v2(0x21, 0x00, b"\x01\x02\x03\x04\x05"),
        ProxyHeader(version=2, command="PROXY", family="UNSPEC", protocol="UNSPEC"),
        id="proxy-unspec-family",
    ),
    pytest.param(
        v2(0x21, 0x10, INET_BLOCK),
        ProxyHeader(version=2, command="PROXY", family="INET", protocol="UNSPEC"),
        id="proxy-unspec-protocol",
    ),
    pytest.param(
        v2(
            0x21,
            0x11,
            INET_BLOCK
            + tlv(0x01, b"smtp")
            + tlv(0x02, b"mx.example.com")
            + tlv(0x04, b"")
            + tlv(0x20, SSL_VALUE)
            + tlv(0xE0, b"\x00" * 300),
        ),
        dataclasses.replace(
            INET_EVENT,
            tlvs=(
                (0x01, b"smtp"),
                (0x02, b"mx.example.com"),
                (0x04, b""),
                (0x20, SSL_VALUE),
                (0xE0, b"\x00" * 300),
            ),
        ),
        id="inet-tlvs",
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID_V1 + VALID_V2)
def test_valid_header(data: bytes, expected: ProxyHeader) -> None:
    check_all_ways(data, dataclasses.replace(expected, raw=data))


def test_crc32c_reference_value() -> None:
    # The standard check value of CRC-32C (Castagnoli) for the digits 1 to 9.
    assert crc32c(b"123456789") == 0xE3069283


def test_valid_crc32c_tlv() -> None:
    data = with_crc32c(v2(0x21, 0x11, INET_BLOCK), tlv(0x05, b"id-42"))
    checksum = data[-4:]
    expected = dataclasses.replace(
        INET_EVENT, tlvs=((0x05, b"id-42"), (0x03, checksum)), raw=data
    )

    check_all_ways(data, expected)


def test_v2_padding_after_address_block_is_tlvs() -> None:
    data = v2(0x21, 0x11, INET_BLOCK + tlv(0x04, b"\x00\x00\x00"))

    result = parse_proxy_header(data, LARGE)

    assert result is not None
    assert result[0].tlvs == ((0x04, b"\x00\x00\x00"),)


# Invalid headers.

CRC_HEADER = with_crc32c(v2(0x21, 0x11, INET_BLOCK))

INVALID = [
    pytest.param(b"EHLO client.example\r\n", LARGE, "signature", id="smtp-command"),
    pytest.param(b"\x16\x03\x01\x02\x00", LARGE, "signature", id="tls-client-hello"),
    pytest.param(b"proxy TCP4", LARGE, "signature", id="v1-lowercase"),
    pytest.param(b"PROXY\r\n", LARGE, "signature", id="v1-no-space"),
    pytest.param(b"PROXY\tTCP4", LARGE, "signature", id="v1-tab"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\r", LARGE, "signature", id="v2-signature"),
    pytest.param(b"\r\n\r\n\r\n", LARGE, "signature", id="v2-short-signature"),
    pytest.param(
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", LARGE, "protocol", id="v1-family-tcp5"
    ),
    pytest.param(
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", LARGE, "protocol", id="v1-family-udp4"
    ),
    pytest.param(b"PROXY UNKNOWNX\r\n", LARGE, "protocol", id="v1-unknown-suffix"),
    pytest.param(b"PROXY unknown\r\n", LARGE, "protocol", id="v1-lowercase-family"),
    pytest.param(
        b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", LARGE, "protocol", id="v1-double-space"
    ),
    pytest.param(b"PROXY \r\n", LARGE, "protocol", id="v1-empty-family"),
    pytest.param(
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
        LARGE,
        "source address",
        id="v1-tcp4-with-ipv6",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n",
        LARGE,
        "destination address",
        id="v1-tcp6-with-ipv4",
    ),
    pytest.param(
        b"PROXY TCP4 192.168.000.1 5.6.7.8 1 2\r\n",
        LARGE,
        "source address",
        id="v1-ipv4-leading-zero",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", LARGE, "source address", id="v1-ipv4-short"
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        LARGE,
        "source address",
        id="v1-ipv4-octet-256",
    ),
    pytest.param(
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        LARGE,
        "source address",
        id="v1-ipv6-scope",
    ),
    pytest.param(
        b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
        LARGE,
        "source address",
        id="v1-ipv6-two-gaps",
    ),
    pytest.param(
        b"PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n",
        LARGE,
        "source address",
        id="v1-ipv6-seven-groups",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0443 25\r\n",
        LARGE,
        "source port",
        id="v1-port-leading-zero",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        LARGE,
        "destination port",
        id="v1-port-65536",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 100000\r\n",
        LARGE,
        "destination port",
        id="v1-port-six-digits",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", LARGE, "source port", id="v1-port-minus"
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", LARGE, "source port", id="v1-port-plus"
    ),
    pytest.param(
        "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(),
        LARGE,
        "source port",
        id="v1-port-arabic-digit",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        LARGE,
        "missing the destination port",
        id="v1-missing-port",
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", LARGE, "fields", id="v1-extra-field"
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", LARGE, "fields", id="v1-trailing-space"
    ),
    pytest.param(b"PROXY UNKNOWN\n", LARGE, "bare LF", id="v1-bare-lf"),
    pytest.param(
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        LARGE,
        "source address",
        id="v1-bare-cr",
    ),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * 93, LARGE, "no CRLF", id="v1-no-crlf-in-107"
    ),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", LARGE, "no CRLF", id="v1-108-bytes"
    ),
    pytest.param(
        b"PROXY UNKNOWN " + b"x" * 92 + b"\r", LARGE, "no CRLF", id="v1-cr-at-107"
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 31, "max_size", id="v1-over-max-size"
    ),
    pytest.param(b"PROXY UNKNOWN\r", 14, "max_size", id="v1-prefix-at-max-size"),
    pytest.param(b"", 0, "max_size", id="empty-max-size-zero"),
    pytest.param(b"", -1, "max_size", id="empty-max-size-negative"),
    pytest.param(v2(0x21, 0x11, INET_BLOCK), 27, "max_size", id="v2-over-max-size"),
    pytest.param(SIGNATURE + b"\x21\x11", 14, "max_size", id="v2-prefix-at-max-size"),
    pytest.param(v2(0x11, 0x11, INET_BLOCK), LARGE, "version", id="v2-version-1"),
    pytest.param(v2(0x31, 0x11, INET_BLOCK), LARGE, "version", id="v2-version-3"),
    pytest.param(v2(0x22, 0x11, INET_BLOCK), LARGE, "command", id="v2-command-2"),
    pytest.param(v2(0x2F, 0x11, INET_BLOCK), LARGE, "command", id="v2-command-15"),
    pytest.param(v2(0x21, 0x41, INET_BLOCK), LARGE, "family", id="v2-family-4"),
    pytest.param(v2(0x21, 0x13, INET_BLOCK), LARGE, "protocol", id="v2-protocol-3"),
    pytest.param(v2(0x20, 0xF0), LARGE, "family", id="v2-local-family-15"),
    pytest.param(
        v2(0x21, 0x11, INET_BLOCK[:8]), LARGE, "12 bytes", id="v2-inet-block-short"
    ),
    pytest.param(
        v2(0x21, 0x21, INET_BLOCK), LARGE, "36 bytes", id="v2-inet6-block-short"
    ),
    pytest.param(
        v2(0x21, 0x31, b"/" * 215), LARGE, "216 bytes", id="v2-unix-block-short"
    ),
    pytest.param(
        v2(0x21, 0x11, INET_BLOCK + tlv(0x01, b"smtp")[:5]),
        LARGE,
        "runs past the end",
        id="v2-tlv-overrun",
    ),
    pytest.param(
        v2(0x21, 0x11, INET_BLOCK + b"\x01\x00\x05abcd"),
        LARGE,
        "runs past the end",
        id="v2-tlv-length-one-too-many",
    ),
    pytest.param(
        v2(0x21, 0x11, INET_BLOCK + tlv(0x04, b"") + b"\x01\x00"),
        LARGE,
        "TLV header",
        id="v2-tlv-truncated-header",
    ),
    pytest.param(
        CRC_HEADER[:-1] + bytes([CRC_HEADER[-1] ^ 1]),
        LARGE,
        "CRC32C",
        id="v2-crc32c-mismatch",
    ),
    pytest.param(
        v2(0x21, 0x11, INET_BLOCK + tlv(0x03, b"\x00\x00\x00")),
        LARGE,
        "CRC32C",
        id="v2-crc32c-short-value",
    ),
    pytest.param(
        with_crc32c(v2(0x21, 0x11, INET_BLOCK), tlv(0x03, bytes(4))),
        LARGE,
        "more than one CRC32C",
        id="v2-two-crc32c",
    ),
]


@pytest.mark.parametrize(("data", "max_size", "match"), INVALID)
def test_invalid_header(data: bytes, max_size: int, match: str) -> None:
    with pytest.raises(ProxyHeaderError, match=match):
        parse_proxy_header(data, max_size)
    # Bytes after an invalid header never make it valid.
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data + TRAILER, max_size)


@pytest.mark.parametrize(("data", "max_size", "match"), INVALID)
def test_invalid_header_error_message(data: bytes, max_size: int, match: str) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_proxy_header(data, max_size)

    message = str(info.value)
    assert message[0].islower()
    assert not message.endswith(".")


# Early results: reject as soon as a byte rules out every valid header, and wait
# while a valid header can still follow.

EARLY_REJECT = [
    pytest.param(b"E", id="first-byte"),
    pytest.param(b"PROXY TCP5", id="v1-family"),
    pytest.param(b"PROXY TCP5 1", id="v1-family-complete"),
    pytest.param(b"PROXY  ", id="v1-empty-family"),
    pytest.param(b"PROXY TCP4 1.2.3 ", id="v1-ipv4-complete"),
    pytest.param(b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ", id="v1-ipv6-complete"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8  ", id="v1-empty-port"),
    pytest.param(b"PROXY TCP4 1.2.3.04", id="v1-ipv4-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4.", id="v1-ipv4-fifth-number"),
    pytest.param(b"PROXY TCP4 256", id="v1-ipv4-number"),
    pytest.param(b"PROXY TCP4 1.2.3.4 ::", id="v1-tcp4-ipv6-character"),
    pytest.param(b"PROXY TCP6 :::", id="v1-ipv6-triple-colon"),
    pytest.param(b"PROXY TCP6 12345", id="v1-ipv6-group-length"),
    pytest.param(b"PROXY TCP6 1::2::", id="v1-ipv6-two-gaps"),
    pytest.param(b"PROXY TCP6 ::1.2.3.4.", id="v1-ipv6-dotted-tail"),
    pytest.param(b"PROXY TCP6 ::1%", id="v1-ipv6-scope"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 00", id="v1-port-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", id="v1-port-range"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", id="v1-extra-space"),
    pytest.param(b"PROXY TCP4 1.2.3.4\r ", id="v1-cr-in-line"),
    pytest.param(SIGNATURE + b"\x11", id="v2-version"),
    pytest.param(SIGNATURE + b"\x23", id="v2-command"),
    pytest.param(SIGNATURE + b"\x21\x51", id="v2-family"),
    pytest.param(SIGNATURE + b"\x21\x1f", id="v2-protocol"),
]


@pytest.mark.parametrize("data", EARLY_REJECT)
def test_early_reject(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data, LARGE)


WAIT = [
    pytest.param(b"", id="empty"),
    pytest.param(b"P", id="v1-first-byte"),
    pytest.param(b"PROXY", id="v1-prefix-no-space"),
    pytest.param(b"PROXY UNK", id="v1-family-prefix"),
    pytest.param(b"PROXY TCP4 1.2.3.", id="v1-ipv4-prefix"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 6553", id="v1-port-prefix"),
    pytest.param(b"PROXY TCP4 1.2.3.4 ", id="v1-after-address"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0", id="v1-port-zero"),
    pytest.param(b"PROXY TCP6 ::ffff:1.2", id="v1-ipv6-dotted-prefix"),
    pytest.param(b"PROXY TCP6 2001:DB8::", id="v1-ipv6-prefix"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", id="v1-before-lf"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * 92, id="v1-106-bytes"),
    pytest.param(b"\r", id="v2-first-byte"),
    pytest.param(SIGNATURE, id="v2-signature"),
    pytest.param(SIGNATURE + b"\x21\x11\xff", id="v2-half-length"),
    pytest.param(v2(0x21, 0x11, INET_BLOCK)[:-1], id="v2-one-byte-short"),
    pytest.param(v2(0x21, 0x11, length=0xFFFF), id="v2-largest-length"),
]


@pytest.mark.parametrize("data", WAIT)
def test_wait_for_more(data: bytes) -> None:
    assert parse_proxy_header(data, LARGE) is None


def test_v1_ending_exactly_at_107_bytes() -> None:
    data = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"

    result = parse_proxy_header(data + b"x" * 200, LARGE)

    assert len(data) == 107
    assert result is not None
    assert result[1] == 107


def test_v1_does_not_read_past_107_bytes() -> None:
    # An LF after byte 107 must not end the line.
    data = b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n"

    with pytest.raises(ProxyHeaderError, match="no CRLF"):
        parse_proxy_header(data, LARGE)


def test_v1_max_size_below_spec_bound() -> None:
    data = b"PROXY UNKNOWN\r\n"

    assert parse_proxy_header(data, 15) is not None
    assert parse_proxy_header(data[:14], 15) is None
    with pytest.raises(ProxyHeaderError, match="max_size"):
        parse_proxy_header(data, 14)


def test_v2_over_max_size_rejected_at_length_field() -> None:
    data = v2(0x21, 0x11, length=4096)

    with pytest.raises(ProxyHeaderError, match="max_size"):
        parse_proxy_header(data, 4111)
    assert parse_proxy_header(data, 4112) is None


def test_v2_reads_only_announced_length() -> None:
    data = v2(0x21, 0x11, INET_BLOCK)
    # The bytes after the header look like a TLV that would run past any end.
    result = parse_proxy_header(data + b"\x01\xff\xff", LARGE)

    assert result == (dataclasses.replace(INET_EVENT, raw=data), len(data))


def test_buffer_not_locked_after_error() -> None:
    # The caller may resize its bytearray while handling the error, so the parser
    # must not keep an exported buffer alive in the traceback.
    buffer = bytearray(b"PROXY TCP9 ")

    try:
        parse_proxy_header(buffer, LARGE)
    except ProxyHeaderError:
        buffer.clear()

    assert buffer == b""


def test_memoryview_slice() -> None:
    data = b"junk" + b"PROXY UNKNOWN\r\n" + TRAILER

    result = parse_proxy_header(memoryview(data)[4:], LARGE)

    assert result is not None
    assert result[0].raw == b"PROXY UNKNOWN\r\n"
    assert result[1] == 15


# Properties.

PREFIXES = [
    b"",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN",
    SIGNATURE,
    SIGNATURE + b"\x21\x11",
    SIGNATURE + b"\x21\x11\x00\x0c",
    SIGNATURE + b"\x21\x21\x00\x24",
    SIGNATURE + b"\x21\x31\x00\xd8",
    v2(0x21, 0x11, INET_BLOCK, length=30),
]

arbitrary_input = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(PREFIXES),
    st.binary(max_size=300),
)


@given(data=arbitrary_input, max_size=st.integers(-1, 400))
def test_arbitrary_bytes_raise_only_proxy_header_error(
    data: bytes, max_size: int
) -> None:
    try:
        result = parse_proxy_header(data, max_size)
    except ProxyHeaderError:
        return
    if result is not None:
        header, size = result
        assert 0 < size <= min(len(data), max_size)
        assert header.raw == data[:size]


@given(data=arbitrary_input, max_size=st.integers(0, 400))
def test_arbitrary_bytes_answers_consistent_by_length(
    data: bytes, max_size: int
) -> None:
    # Fed longer and longer prefixes, the parser waits, then either rejects for good
    # or returns the same header for good.
    outcome: tuple[ProxyHeader, int] | ProxyHeaderError | None = None
    for end in range(len(data) + 1):
        try:
            current: tuple[ProxyHeader, int] | ProxyHeaderError | None = (
                parse_proxy_header(data[:end], max_size)
            )
        except ProxyHeaderError as error:
            current = error
        if isinstance(outcome, ProxyHeaderError):
            assert isinstance(current, ProxyHeaderError), end
        elif outcome is not None:
            assert current == outcome, end
        outcome = current


ipv6_text = st.builds(
    lambda address, style: style(address),
    st.ip_addresses(v=6),
    st.sampled_from(
        [
            str,
            lambda a: str(a).upper(),
            lambda a: a.exploded,
            lambda a: a.exploded.upper(),
        ]
    ),
)
ports = st.integers(0, 65535)


@st.composite
def v1_tcp_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    if draw(st.booleans()):
        family = "TCP4"
        source = draw(st.ip_addresses(v=4).map(str))
        destination = draw(st.ip_addresses(v=4).map(str))
    else:
        family = "TCP6"
        source = draw(ipv6_text)
        destination = draw(ipv6_text)
    source_port = draw(ports)
    destination_port = draw(ports)
    line = f"PROXY {family} {source} {destination} {source_port} {destination_port}"
    data = line.encode() + b"\r\n"
    expected = ProxyHeader(
        version=1,
        command="PROXY",
        family="INET" if family == "TCP4" else "INET6",
        protocol="STREAM",
        source_address=str(IPv6Address(source) if family == "TCP6" else source),
        source_port=source_port,
        destination_address=str(
            IPv6Address(destination) if family == "TCP6" else destination
        ),
        destination_port=destination_port,
        raw=data,
    )
    return data, expected


@st.composite
def v1_unknown_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    rest = draw(st.none() | st.binary(max_size=91).map(lambda b: b.replace(b"\n", b"")))
    data = b"PROXY UNKNOWN" + (b"" if rest is None else b" " + rest) + b"\r\n"
    expected = ProxyHeader(
        version=1, command="PROXY", family="UNSPEC", protocol="UNSPEC", raw=data
    )
    return data, expected


unix_paths = st.binary(max_size=107).map(lambda b: b.replace(b"\x00", b""))
tlv_lists = st.lists(
    st.tuples(
        st.integers(0, 255).filter(lambda kind: kind != 0x03),
        st.binary(max_size=40),
    ),
    max_size=5,
)


@st.composite
def v2_headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    command = draw(st.sampled_from([0x0, 0x1]))
    family = draw(st.sampled_from([0x0, 0x1, 0x2, 0x3]))
    protocol = draw(st.sampled_from([0x0, 0x1, 0x2]))
    ver_cmd = 0x20 | command
    fam = family << 4 | protocol
    expected = ProxyHeader(
        version=2,
        command=["LOCAL", "PROXY"][command],
        family=["UNSPEC", "INET", "INET6", "UNIX"][family],
        protocol=["UNSPEC", "STREAM", "DGRAM"][protocol],
    )

    if command == 0 or family == 0 or protocol == 0:
        data = v2(ver_cmd, fam, draw(st.binary(max_size=64)))
        return data, dataclasses.replace(expected, raw=data)

    if family == 3:
        source, destination = draw(unix_paths), draw(unix_paths)
        block = unix(source, destination)
        expected = dataclasses.replace(
            expected,
            source_address=source.decode("utf-8", "surrogateescape"),
            destination_address=destination.decode("utf-8", "surrogateescape"),
        )
    else:
        build = inet if family == 1 else inet6
        addresses = st.ip_addresses(v=4) if family == 1 else st.ip_addresses(v=6)
        source_ip, destination_ip = str(draw(addresses)), str(draw(addresses))
        source_port, destination_port = draw(ports), draw(ports)
        block = build(source_ip, destination_ip, source_port, destination_port)
        expected = dataclasses.replace(
            expected,
            source_address=source_ip,
            source_port=source_port,
            destination_address=destination_ip,
            destination_port=destination_port,
        )

    tlvs = draw(tlv_lists)
    data = v2(ver_cmd, fam, block + b"".join(tlv(kind, value) for kind, value in tlvs))
    if draw(st.booleans()):
        data = with_crc32c(data)
        tlvs.append((0x03, data[-4:]))
    return data, dataclasses.replace(expected, tlvs=tuple(tlvs), raw=data)


valid_headers = v1_tcp_headers() | v1_unknown_headers() | v2_headers()


@given(case=valid_headers)
def test_valid_header_property(case: tuple[bytes, ProxyHeader]) -> None:
    data, expected = case

    assert parse_proxy_header(data, len(data)) == (expected, len(data))
    assert parse_proxy_header(data + TRAILER, LARGE) == (expected, len(data))
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data, len(data) - 1)


@given(case=valid_headers, cut=st.integers(0, 1 << 16))
def test_valid_header_prefix_waits(case: tuple[bytes, ProxyHeader], cut: int) -> None:
    data, _ = case
    end = cut % len(data)

    assert parse_proxy_header(data[:end], len(data)) is None
    assert parse_proxy_header(data[:end], LARGE) is None
