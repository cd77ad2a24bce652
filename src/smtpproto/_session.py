"""Session and Envelope: the state of one connection and of one mail transaction.

Both are plain classes with an instance ``__dict__`` on purpose: handler hooks may add
attributes of their own to coordinate between hooks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Envelope", "Session"]


class Session:
    """State built up during one client connection.

    The engine replaces the session after a successful STARTTLS (RFC 3207, section 4.2:
    the server forgets what it learned before TLS), keeping only ``peer`` and
    ``proxy_data``.
    """

    def __init__(self) -> None:
        #: The client's address as the transport reports it (set by the I/O layer).
        self.peer: Any = None
        #: TLS details as a dict once TLS is active (set by the I/O layer).
        self.ssl: dict[str, Any] | None = None
        #: Domain or address literal from the accepted HELO, EHLO or LHLO.
        self.host_name: str | None = None
        #: True after an accepted EHLO or LHLO, False after HELO.
        self.extended_smtp: bool = False
        #: None before any AUTH, then True or False after the last AUTH's final reply.
        self.authenticated: bool | None = None
        #: What the application's credential check returned on success.
        self.auth_data: Any = None
        #: The PROXY protocol header, when one was read.
        self.proxy_data: Any = None

    def __repr__(self) -> str:
        return (
            f"<Session peer={self.peer!r} host_name={self.host_name!r} "
            f"extended_smtp={self.extended_smtp} authenticated={self.authenticated}>"
        )


class Envelope:
    """State of one mail transaction: reverse-path, forward-paths and content.

    A new envelope starts on RSET, on an accepted HELO or EHLO, after the reply to
    the message content, and after STARTTLS (RFC 5321, sections 4.1.1.1 and 4.1.4).
    """

    def __init__(self) -> None:
        #: Reverse-path from MAIL FROM; ``"<>"`` for the null reverse-path.
        self.mail_from: str | None = None
        #: MAIL FROM parameters as ``KEYWORD`` or ``KEYWORD=value`` strings.
        self.mail_options: list[str] = []
        #: True when MAIL FROM carried the SMTPUTF8 parameter.
        self.smtp_utf8: bool = False
        #: Forward-paths of the accepted RCPT TO commands, in order.
        self.rcpt_tos: list[str] = []
        #: RCPT TO parameters of all accepted recipients, in order.
        self.rcpt_options: list[str] = []
        #: Message content, filled by the I/O layer if it collects the body.
        self.content: bytes | str | None = None
        #: Message content as bytes, filled by the I/O layer if it collects the body.
        self.original_content: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"<Envelope mail_from={self.mail_from!r} rcpt_tos={self.rcpt_tos!r} "
            f"mail_options={self.mail_options!r}>"
        )
