"""Tests that use the smtp_server fixture of the smtpproto pytest plugin."""

import smtplib
from email.message import EmailMessage

import pytest


def send_welcome(host: str, port: int, address: str) -> None:
    """The code under test: send a welcome message through an SMTP server."""
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = address
    message["Subject"] = "Welcome"
    message.set_content("Thanks for signing up.\n")
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.send_message(message)


def test_welcome_message(smtp_server):
    send_welcome(smtp_server.host, smtp_server.port, "ann@example.org")

    [received] = smtp_server.messages
    assert received.mail_from == "shop@example.com"
    assert received.rcpt_tos == ("ann@example.org",)
    assert received.message["Subject"] == "Welcome"
    assert "Thanks for signing up." in received.message.get_content()


@pytest.mark.smtp_server(tls=True, auth_user=("shop", "secret"))
def test_login_over_starttls(smtp_server):
    with smtp_server.client() as client:
        client.starttls(context=smtp_server.client_ssl_context)
        client.login("shop", "secret")
        client.sendmail("shop@example.com", ["bob@example.org"], b"Subject: Hi\r\n\r\n")

    [received] = smtp_server.messages
    assert received.tls
    assert received.auth_data == b"shop"


@pytest.mark.parametrize("smtp_server", ["asyncio", "trio"], indirect=True)
def test_both_backends(smtp_server):
    with smtp_server.client() as client:
        client.sendmail("a@example.com", ["b@example.org"], b"Subject: Hi\r\n\r\n")
    assert len(smtp_server.messages) == 1
