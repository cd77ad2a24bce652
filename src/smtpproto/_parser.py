"""Pure functions from the argument of one command line to its parsed parts.

Every function either returns the parsed value or raises :class:`CommandError`
carrying the reply the engine sends. Grammar references are to RFC 5321,
section 4.1.2, unless a comment names another RFC.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from . import _replies as replies
from ._replies import Reply

__all__ = ["CommandError", "parse_params", "parse_path_argument", "split_path"]

Parameters = tuple[tuple[str, "str | None"], ...]


class CommandError(Exception):
    """A command argument is invalid; ``reply`` is what the client gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


_ATEXT: Final = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8: Final = "\u0080-\U0010ffff"


def _mailbox_pattern(utf8: bool) -> re.Pattern[str]:
    extra = _UTF8 if utf8 else ""
    atom = f"[{_ATEXT}{extra}]+"
    dot_string = rf"{atom}(?:\.{atom})*"
    # qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is a backslash
    # followed by any printable ASCII character or space.
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{extra}]|\\[\x20-\x7e])*"'
    label = rf"[A-Za-z0-9{extra}](?:[A-Za-z0-9{extra}\-]*[A-Za-z0-9{extra}])?"
    domain = rf"{label}(?:\.{label})*"
    literal = r"\[[^\[\]\\\s]+\]"
    return re.compile(
        rf"(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})\Z"
    )


_MAILBOX_ASCII: Final = _mailbox_pattern(False)
_MAILBOX_UTF8: Final = _mailbox_pattern(True)
_SOURCE_ROUTE: Final = re.compile(
    r"@[^,:@<>\s]+(?:,@[^,:@<>\s]+)*:"
)  # RFC 5321, section 4.1.1.3: accept the route syntax, then ignore the route
_KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
# esmtp-value is 1*(%d33-60 / %d62-126); RFC 6531 adds UTF-8 characters.
_VALUE_ASCII: Final = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_VALUE_UTF8: Final = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_MAX_PATH: Final = 256  # RFC 5321, section 4.5.3.1.3, brackets included


def split_path(argument: str, keyword: str, syntax_error: Reply) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the text inside the brackets and the rest.

    Spaces after the colon are tolerated, as most servers do; a path without angle
    brackets is a syntax error (RFC 5321, section 4.1.2: ``Path = "<" ... ">"``).
    """
    if argument[: len(keyword) + 1].upper() != keyword + ":":
        raise CommandError(syntax_error)
    rest = argument[len(keyword) + 1 :].lstrip(" ")
    if not rest.startswith("<"):
        raise CommandError(syntax_error)

    # Find the closing bracket outside any quoted local part.
    in_quotes = False
    escaped = False
    for index in range(1, len(rest)):
        char = rest[index]
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            tail = rest[index + 1 :]
            if tail and not tail.startswith(" "):
                raise CommandError(syntax_error)
            return rest[1:index], tail.strip(" ")
    raise CommandError(syntax_error)


def parse_path_argument(
    inner: str, *, utf8: bool, null_allowed: bool, postmaster_allowed: bool
) -> str:
    """Validate the text inside a path's brackets and return the mailbox.

    :return: the mailbox without any source route, ``"<>"`` for the null path.
    :raises CommandError: with ``553 5.1.7``/``501 5.1.3`` for a malformed address.
    """
    bad = replies.BAD_SENDER_ADDRESS if null_allowed else replies.BAD_RECIPIENT_ADDRESS
    if inner == "":
        if null_allowed:
            return "<>"
        raise CommandError(bad)
    if len(inner) + 2 > _MAX_PATH:
        raise CommandError(bad)

    route = _SOURCE_ROUTE.match(inner)
    mailbox = inner[route.end() :] if route else inner
    # RFC 5321, section 4.1.1.3: "Postmaster" without a domain must be accepted.
    if postmaster_allowed and route is None and mailbox.lower() == "postmaster":
        return mailbox

    match = (_MAILBOX_UTF8 if utf8 else _MAILBOX_ASCII).match(mailbox)
    if match is None:
        raise CommandError(bad)
    domain = match.group("domain")
    if domain.startswith("[") and not _valid_address_literal(domain[1:-1]):
        raise CommandError(bad)
    return mailbox


def _valid_address_literal(text: str) -> bool:
    """Check the inside of an address literal (RFC 5321, section 4.1.3)."""
    if text[:5].upper() == "IPV6:":
        if "%" in text:
            # ipaddress accepts a zone index ("%eth0"); IPv6-addr in RFC 5321,
            # section 4.1.3 has none.
            return False
        try:
            ipaddress.IPv6Address(text[5:])
        except ValueError:
            return False
        return True
    if ":" in text:
        # General-address-literal: a standardized tag, a colon, then dcontent.
        tag, _, content = text.partition(":")
        return bool(_KEYWORD.match(tag)) and bool(content) and content.isprintable()
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_valid_domain_argument(text: str) -> bool:
    """Check a HELO/EHLO argument: a domain or an address literal, leniently.

    Many clients send names that are not valid domains (underscores, bare host
    names), so only whitespace-free printable text is required, as Postfix does by
    default; an address literal must still be well formed.
    """
    if not text.isprintable() or " " in text:
        return False
    if text.startswith("["):
        return text.endswith("]") and _valid_address_literal(text[1:-1])
    return True


def parse_params(text: str, *, utf8: bool) -> Parameters:
    """Parse ``KEYWORD[=value]`` ESMTP parameters separated by spaces.

    Keywords are upper-cased (RFC 5321, section 2.4: they are case-insensitive);
    values keep their case. Several spaces between parameters are tolerated.

    :raises CommandError: ``501 5.5.4`` for bad syntax or a repeated keyword.
    """
    if not text:
        return ()
    value_pattern = _VALUE_UTF8 if utf8 else _VALUE_ASCII
    seen: set[str] = set()
    params = []
    for word in text.split(" "):
        if not word:
            continue
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.match(keyword):
            raise CommandError(replies.PARAM_SYNTAX)
        if equals and not value_pattern.match(value):
            raise CommandError(replies.PARAM_SYNTAX)
        keyword = keyword.upper()
        if keyword in seen:
            raise CommandError(replies.PARAM_DUPLICATE)
        seen.add(keyword)
        params.append((keyword, value if equals else None))
    return tuple(params)


_XTEXT: Final = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+\Z")


def is_valid_xtext(value: str) -> bool:
    """Check xtext (RFC 3461, section 4): printable ASCII with ``+XX`` escapes.

    Escapes that decode to control characters are refused, so a value can never
    smuggle CR or LF into logs or headers.
    """
    if not _XTEXT.match(value):
        return False
    for escape in re.findall(r"\+([0-9A-F]{2})", value):
        code = int(escape, 16)
        if code < 0x20 or code == 0x7F:
            return False
    return True
