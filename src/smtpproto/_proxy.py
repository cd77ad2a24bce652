"""PROXY protocol header parser (HAProxy PROXY protocol, versions 1 and 2).

This module owns the bytes a proxy sends before the SMTP dialogue starts.
:func:`parse_proxy_header` turns them into a :class:`ProxyHeader` event, returns
``None`` while more bytes are needed, or rejects them. It keeps no state, so the caller passes the whole buffer again
after each read.

The rules come from "The PROXY protocol, Versions 1 & 2" by Willy Tarreau
(``doc/proxy-protocol.txt`` in the HAProxy sources). Comments name its sections: 2.1
for the text header (version 1) and 2.2 for the binary header (version 2).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Final

from ._events import ProxyHeader

__all__ = ["ProxyHeaderError", "parse_proxy_header"]

#: First bytes of a version 1 header: "PROXY" and exactly one space (section 2.1).
V1_PREFIX: Final = b"PROXY "
#: Maximum length of a version 1 header, CRLF included (section 2.1).
V1_MAX_LENGTH: Final = 107
#: First 12 bytes of a version 2 header (section 2.2).
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Length of the version 2 header before its variable part (section 2.2).
V2_FIXED_LENGTH: Final = 16

_V1_PROTOCOLS: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_FIELD_NAMES: Final = (
    "source address",
    "destination address",
    "source port",
    "destination port",
)
_IPV4_CHARACTERS: Final = b"0123456789."
# Section 2.1 allows hexadecimal groups and one "::". The dotted IPv4 tail is not in
# the spec's wording, but glibc's inet_ntop() formats IPv4-mapped addresses that way
# (::ffff:192.0.2.1), so senders may emit it. It is accepted, as inet_pton() does.
_IPV6_CHARACTERS: Final = b"0123456789abcdefABCDEF:."
# Longest IPv6 text form: six groups of four digits and a dotted IPv4 address.
_IPV6_MAX_LENGTH: Final = 45

_V2_COMMANDS: Final = {0x0: "LOCAL", 0x1: "PROXY"}
_V2_FAMILIES: Final = {0x0: "UNSPEC", 0x1: "INET", 0x2: "INET6", 0x3: "UNIX"}
_V2_PROTOCOLS: Final = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
# Size of the address block of each family (section 2.2, union proxy_addr).
_V2_ADDRESS_SIZES: Final = {"INET": 12, "INET6": 36, "UNIX": 216}
_UNIX_PATH_SIZE: Final = 108
_TLV_HEADER_SIZE: Final = 3
_TLV_CRC32C: Final = 0x03


class ProxyHeaderError(Exception):
    """The bytes at the start of the connection can never form a valid PROXY header.

    The message starts lowercase, has no final period and names the invalid part.
    """


def parse_proxy_header(
    buffer: bytes | bytearray | memoryview, max_size: int
) -> tuple[ProxyHeader, int] | None:
    """Parse a PROXY protocol version 1 or 2 header at the start of ``buffer``.

    The parser reads at most ``min(max_size, 107)`` bytes of a version 1 header and
    exactly the announced length of a version 2 header, so the bytes that follow the
    header stay untouched. Addresses are returned in Python's ``ipaddress`` text form,
    so ``2001:DB8:0:0::1`` becomes ``2001:db8::1``.

    :param buffer: bytes received so far on the connection
    :param max_size: maximum length of the whole header in bytes
    :return: the event and the number of bytes the header takes, or ``None`` when
        more bytes are needed
    :raises ProxyHeaderError: if no bytes appended to ``buffer`` can make a valid
        header of at most ``max_size`` bytes. The check runs on every byte, except
        that a version 1 IPv6 address gets its full check only when its field ends.
    """
    max_size = max(max_size, 0)
    if not buffer:
        if max_size == 0:
            raise _too_long(max_size)
        return None

    first = buffer[0]
    if first == V1_PREFIX[0]:
        return _parse_v1(buffer, max_size)
    if first == V2_SIGNATURE[0]:
        return _parse_v2(buffer, max_size)
    raise ProxyHeaderError(
        f"invalid PROXY protocol signature: {bytes(buffer[:12])!r} starts neither "
        f"with {V1_PREFIX!r} nor with {V2_SIGNATURE!r}"
    )


def _too_long(max_size: int) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"invalid PROXY header: longer than max_size ({max_size} bytes)"
    )


# Version 1: one line of US-ASCII text (section 2.1).


def _parse_v1(
    buffer: bytes | bytearray | memoryview, max_size: int
) -> tuple[ProxyHeader, int] | None:
    # Section 2.1: a receiver that finds no CRLF in the first 107 bytes should declare
    # the line invalid, so no byte past that bound is ever looked at.
    limit = min(V1_MAX_LENGTH, max_size)
    window = bytes(buffer[:limit])
    line_end = window.find(b"\n")

    if line_end < 0:
        # A CR as the last byte may be the start of the CRLF.
        _check_v1_prefix(window.removesuffix(b"\r"))
        if len(window) < limit:
            return None
        if limit == V1_MAX_LENGTH:
            raise ProxyHeaderError(
                f"invalid PROXY v1 header: no CRLF in the first {V1_MAX_LENGTH} bytes"
            )
        raise _too_long(max_size)

    # Section 2.1: a single LF must not be taken as the end of the line.
    if window[line_end - 1] != ord("\r"):
        raise ProxyHeaderError(
            "invalid PROXY v1 header: the line ends with a bare LF instead of CRLF"
        )

    size = line_end + 1
    event = _parse_v1_line(window[: line_end - 1], raw=window[:size])
    return event, size


def _check_v1_prefix(partial: bytes) -> None:
    """Raise ProxyHeaderError if no line that starts with ``partial`` can be valid.

    Complete fields get the full check. The field still being received is checked to
    be a possible beginning of a valid field.
    """
    length = min(len(partial), len(V1_PREFIX))
    if partial[:length] != V1_PREFIX[:length]:
        raise ProxyHeaderError(
            f"invalid PROXY v1 signature: {partial[:length]!r} is not {V1_PREFIX!r}"
        )
    if len(partial) <= len(V1_PREFIX):
        return

    *complete, current = partial[len(V1_PREFIX) :].split(b" ")
    if not complete:
        if not any(protocol.startswith(current) for protocol in _V1_PROTOCOLS):
            raise _bad_v1_protocol(current)
        return

    protocol = complete[0]
    if protocol == b"UNKNOWN":
        # Section 2.1: the receiver ignores everything between UNKNOWN and the CRLF.
        return
    if protocol not in _V1_PROTOCOLS:
        raise _bad_v1_protocol(protocol)

    values = complete[1:]
    if len(values) >= len(_V1_FIELD_NAMES):
        raise _too_many_v1_fields(protocol)
    for index, value in enumerate(values):
        if index < 2:
            _parse_v1_address(protocol, index, value)
        else:
            _parse_v1_port(index, value)

    index = len(values)
    if index >= 2:
        possible = _is_port_prefix(current)
        expected = "a decimal number from 0 to 65535 without leading zeros"
    elif protocol == b"TCP4":
        possible = _is_ipv4_prefix(current)
        expected = "an IPv4 address"
    else:
        possible = _is_ipv6_prefix(current)
        expected = "an IPv6 address"
    if not possible:
        raise ProxyHeaderError(
            f"invalid PROXY v1 {_V1_FIELD_NAMES[index]}: {current!r} is not the "
            f"beginning of {expected}"
        )


def _parse_v1_line(line: bytes, *, raw: bytes) -> ProxyHeader:
    """Build the event from a complete line without its CRLF."""
    if not line.startswith(V1_PREFIX):
        raise ProxyHeaderError(
            f"invalid PROXY v1 signature: {line[:6]!r} is not {V1_PREFIX!r}"
        )
    protocol, *values = line[len(V1_PREFIX) :].split(b" ")

    if protocol == b"UNKNOWN":
        # Section 2.1: the receiver ignores everything between UNKNOWN and the CRLF.
        return ProxyHeader(
            version=1, command="PROXY", family="UNSPEC", protocol="UNSPEC", raw=raw
        )
    if protocol not in _V1_PROTOCOLS:
        raise _bad_v1_protocol(protocol)
    if len(values) > len(_V1_FIELD_NAMES):
        raise _too_many_v1_fields(protocol)

    # Fields are checked left to right so that the error names the first bad one.
    addresses = [
        _parse_v1_address(protocol, i, value) for i, value in enumerate(values[:2])
    ]
    ports = [_parse_v1_port(i, value) for i, value in enumerate(values[2:], start=2)]
    if len(values) < len(_V1_FIELD_NAMES):
        raise ProxyHeaderError(
            f"invalid PROXY v1 {protocol.decode()} header: missing the "
            f"{_V1_FIELD_NAMES[len(values)]}"
        )

    return ProxyHeader(
        version=1,
        command="PROXY",
        # Version 2's names for both versions: TCP4 and TCP6 are stream
        # connections over IPv4 and IPv6.
        family="INET" if protocol == b"TCP4" else "INET6",
        protocol="STREAM",
        source_address=addresses[0],
        destination_address=addresses[1],
        source_port=ports[0],
        destination_port=ports[1],
        raw=raw,
    )


def _parse_v1_address(protocol: bytes, index: int, value: bytes) -> str:
    # Section 2.1: the protocol field dictates the address format. The characters are
    # checked first because ipaddress also accepts an IPv6 scope such as "%eth0".
    if protocol == b"TCP4":
        family = "IPv4"
        allowed = _IPV4_CHARACTERS
    else:
        family = "IPv6"
        allowed = _IPV6_CHARACTERS
    if not value or value.translate(None, allowed):
        raise _bad_v1_address(index, value, family)

    text = value.decode("ascii")
    try:
        address = IPv4Address(text) if family == "IPv4" else IPv6Address(text)
    except ValueError:
        raise _bad_v1_address(index, value, family) from None
    return str(address)


def _parse_v1_port(index: int, value: bytes) -> int:
    if not _is_port(value):
        raise ProxyHeaderError(
            f"invalid PROXY v1 {_V1_FIELD_NAMES[index]}: {value!r} is not a decimal "
            f"number from 0 to 65535 without leading zeros"
        )
    return int(value)


def _is_decimal(digits: bytes, maximum: int) -> bool:
    # Section 2.1 forbids leading zeros in IPv4 numbers and in ports, so that they
    # cannot be read as octal.
    return (
        digits.isdigit()
        and len(digits) <= len(str(maximum))
        and (digits == b"0" or not digits.startswith(b"0"))
        and int(digits) <= maximum
    )


def _is_port(value: bytes) -> bool:
    return _is_decimal(value, 65535)


def _is_port_prefix(value: bytes) -> bool:
    # Every nonempty beginning of a valid number is itself a valid number.
    return not value or _is_port(value)


def _is_ipv4_prefix(value: bytes) -> bool:
    if value.translate(None, _IPV4_CHARACTERS):
        return False
    *numbers, current = value.split(b".")
    if len(numbers) > 3:
        return False
    if not all(_is_decimal(number, 255) for number in numbers):
        return False
    return not current or _is_decimal(current, 255)


def _is_ipv6_prefix(value: bytes) -> bool:
    # NOTE: these are necessary conditions only. A beginning such as nine groups
    # passes here and gets rejected by ipaddress when the field ends.
    if value.translate(None, _IPV6_CHARACTERS) or len(value) > _IPV6_MAX_LENGTH:
        return False
    if b":::" in value or value.count(b"::") > 1:
        return False
    *groups, current = value.split(b":")
    if any(len(group) > 4 or b"." in group for group in groups):
        return False
    if b"." in current:
        return _is_ipv4_prefix(current)
    return len(current) <= 4


def _bad_v1_protocol(protocol: bytes) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"invalid PROXY v1 protocol: {protocol!r} is not TCP4, TCP6 or UNKNOWN"
    )


def _too_many_v1_fields(protocol: bytes) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"invalid PROXY v1 {protocol.decode()} header: more than "
        f"{len(_V1_FIELD_NAMES)} fields after the protocol"
    )


def _bad_v1_address(index: int, value: bytes, family: str) -> ProxyHeaderError:
    return ProxyHeaderError(
        f"invalid PROXY v1 {_V1_FIELD_NAMES[index]}: {value!r} is not an {family} "
        f"address"
    )


# Version 2: a binary header with a fixed part and a variable part (section 2.2).


def _parse_v2(
    buffer: bytes | bytearray | memoryview, max_size: int
) -> tuple[ProxyHeader, int] | None:
    fixed = bytes(buffer[:V2_FIXED_LENGTH])
    length = min(len(fixed), len(V2_SIGNATURE))
    if fixed[:length] != V2_SIGNATURE[:length]:
        raise ProxyHeaderError(
            f"invalid PROXY v2 signature: {fixed[:length]!r} is not {V2_SIGNATURE!r}"
        )
    if len(fixed) > 12:
        _check_v2_version_command(fixed[12])
    if len(fixed) > 13:
        _check_v2_family_protocol(fixed[13])
    if len(fixed) < V2_FIXED_LENGTH:
        if len(fixed) >= max_size:
            raise _too_long(max_size)
        return None

    # Section 2.2: the 15th and 16th bytes give, in network byte order, the number of
    # bytes after the fixed part, and the receiver must always skip exactly that many.
    size = V2_FIXED_LENGTH + int.from_bytes(fixed[14:16], "big")
    if size > max_size:
        raise _too_long(max_size)
    if len(buffer) < size:
        return None
    return _parse_v2_header(bytes(buffer[:size])), size


def _check_v2_version_command(value: int) -> None:
    # Section 2.2: the high nibble is the version and receivers accept only 2. The low
    # nibble is the command, and receivers drop connections with unassigned values.
    if value >> 4 != 2:
        raise ProxyHeaderError(
            f"invalid PROXY v2 version: {value >> 4} in byte 13 ({value:#04x}), "
            f"expected 2"
        )
    if value & 0xF not in _V2_COMMANDS:
        raise ProxyHeaderError(
            f"invalid PROXY v2 command: {value & 0xF} in byte 13 ({value:#04x}), "
            f"expected 0 (LOCAL) or 1 (PROXY)"
        )


def _check_v2_family_protocol(value: int) -> None:
    # Section 2.2: receivers reject address families and transport protocols other
    # than the ones the spec lists.
    if value >> 4 not in _V2_FAMILIES:
        raise ProxyHeaderError(
            f"invalid PROXY v2 address family: {value >> 4} in byte 14 "
            f"({value:#04x}), expected 0 to 3"
        )
    if value & 0xF not in _V2_PROTOCOLS:
        raise ProxyHeaderError(
            f"invalid PROXY v2 transport protocol: {value & 0xF} in byte 14 "
            f"({value:#04x}), expected 0 to 2"
        )


def _parse_v2_header(raw: bytes) -> ProxyHeader:
    """Build the event from a whole version 2 header whose fixed part is valid."""
    command = _V2_COMMANDS[raw[12] & 0xF]
    family = _V2_FAMILIES[raw[13] >> 4]
    protocol = _V2_PROTOCOLS[raw[13] & 0xF]

    # Section 2.2: for LOCAL the receiver discards the whole block after the fixed
    # part, and for an UNSPEC family or protocol it ignores the address information.
    # The layout of that block is then unknown, so it is not read as TLVs either.
    if command == "LOCAL" or family == "UNSPEC" or protocol == "UNSPEC":
        return ProxyHeader(
            version=2, command=command, family=family, protocol=protocol, raw=raw
        )

    block = raw[V2_FIXED_LENGTH:]
    address_size = _V2_ADDRESS_SIZES[family]
    if len(block) < address_size:
        raise ProxyHeaderError(
            f"invalid PROXY v2 header: {len(block)} bytes after the fixed part, "
            f"fewer than the {address_size} bytes of {family} addresses"
        )

    source: str
    destination: str
    source_port: int | None = None
    destination_port: int | None = None
    if family == "UNIX":
        source = _unix_path(block[:_UNIX_PATH_SIZE])
        destination = _unix_path(block[_UNIX_PATH_SIZE:address_size])
    else:
        # Addresses, then ports, all in network byte order.
        address_type = IPv4Address if family == "INET" else IPv6Address
        width = (address_size - 4) // 2
        source = str(address_type(block[:width]))
        destination = str(address_type(block[width : 2 * width]))
        source_port = int.from_bytes(block[2 * width : 2 * width + 2], "big")
        destination_port = int.from_bytes(block[2 * width + 2 : address_size], "big")

    tlvs = _parse_tlvs(raw, V2_FIXED_LENGTH + address_size)
    _verify_crc32c(raw, V2_FIXED_LENGTH + address_size, tlvs)
    return ProxyHeader(
        version=2,
        command=command,
        family=family,
        protocol=protocol,
        source_address=source,
        source_port=source_port,
        destination_address=destination,
        destination_port=destination_port,
        tlvs=tlvs,
        raw=raw,
    )


def _unix_path(field: bytes) -> str:
    """Decode a 108-byte ``sun_path`` field as UTF-8 with surrogateescape.

    Undecodable bytes survive a round trip, as with ``os.fsdecode`` in a UTF-8 locale.
    """
    path = field.rstrip(b"\x00")
    if not path.startswith(b"\x00"):
        # A filesystem path ends at its first NUL byte.
        path = path.partition(b"\x00")[0]
    # NOTE: a Linux abstract socket name (first byte NUL) keeps its leading NUL and
    # loses any trailing NUL bytes, because padding and name cannot be distinguished.
    return path.decode("utf-8", "surrogateescape")


def _parse_tlvs(raw: bytes, offset: int) -> tuple[tuple[int, bytes], ...]:
    """Split ``raw`` from ``offset`` to its end into (type, value) pairs, in order."""
    # Section 2.2: each TLV is a type byte, a two-byte length in network byte order
    # and that many bytes of value. A TLV cannot be shorter than its 3-byte header.
    tlvs: list[tuple[int, bytes]] = []
    while offset < len(raw):
        if len(raw) - offset < _TLV_HEADER_SIZE:
            raise ProxyHeaderError(
                f"invalid PROXY v2 TLV at byte {offset}: only {len(raw) - offset} "
                f"bytes left, fewer than the 3 bytes of a TLV header"
            )
        start = offset + _TLV_HEADER_SIZE
        end = start + int.from_bytes(raw[offset + 1 : start], "big")
        if end > len(raw):
            raise ProxyHeaderError(
                f"invalid PROXY v2 TLV of type {raw[offset]:#04x} at byte {offset}: "
                f"its {end - start}-byte value runs past the end of the header "
                f"({len(raw) - start} bytes left)"
            )
        tlvs.append((raw[offset], raw[start:end]))
        offset = end
    return tuple(tlvs)


def _verify_crc32c(
    raw: bytes, tlv_offset: int, tlvs: tuple[tuple[int, bytes], ...]
) -> None:
    """Check the PP2_TYPE_CRC32C TLV, if any, against the header."""
    # Section 2.2.3: a receiver that supports the checksum sets the 4 value bytes to
    # zero, computes the CRC32c of the whole header and rejects the header if the
    # result differs from the value received.
    position = tlv_offset
    checksums: list[tuple[int, bytes]] = []
    for kind, value in tlvs:
        if kind == _TLV_CRC32C:
            checksums.append((position + _TLV_HEADER_SIZE, value))
        position += _TLV_HEADER_SIZE + len(value)
    if not checksums:
        return
    if len(checksums) > 1:
        raise ProxyHeaderError("invalid PROXY v2 header: more than one CRC32C TLV")

    start, value = checksums[0]
    if len(value) != 4:
        raise ProxyHeaderError(
            f"invalid PROXY v2 CRC32C TLV: {len(value)} bytes of value instead of 4"
        )
    expected = int.from_bytes(value, "big")
    actual = _crc32c(raw[:start] + bytes(4) + raw[start + 4 :])
    if actual != expected:
        raise ProxyHeaderError(
            f"invalid PROXY v2 header: the CRC32C TLV contains {expected:#010x} "
            f"but the header's CRC32c is {actual:#010x}"
        )


def _make_crc32c_table() -> tuple[int, ...]:
    # Section 2.2.3 uses the CRC32c (Castagnoli) of RFC 4960 appendix B: reflected
    # polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF.
    def entry(byte: int) -> int:
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        return crc

    return tuple(entry(byte) for byte in range(256))


_CRC32C_TABLE: Final = _make_crc32c_table()


def _crc32c(data: bytes) -> int:
    # Pure Python, so the time grows with the header length, which max_size bounds.
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
