"""A threaded SMTP server on the bare smtpproto engine and the standard library.

Each connection gets a thread that reads from a blocking socket, feeds the bytes
to a ServerConnection, replies to its command events and writes the output. Every
accepted message goes to a callback. STARTTLS works when a certificate is given.

    python threaded_server.py --port 8025 [--cert cert.pem --key key.pem]
"""

from __future__ import annotations

import argparse
import socket
import ssl
import threading
from collections.abc import Callable

from smtpproto import (
    NEED_DATA,
    PAUSED,
    Bdat,
    ConnectionClosed,
    DataChunk,
    DataComplete,
    DataRejected,
    Envelope,
    ServerConnection,
    StartTLS,
)

#: Called with the envelope and the content of each accepted message.
MessageCallback = Callable[[Envelope, bytes], None]

# Events that need no reply. Every other event is a command, and the engine
# sends its reply only when the application calls accept() or send_reply().
NOTIFICATIONS = (Bdat, DataChunk, DataRejected)


class ThreadedSMTPServer:
    """Serve SMTP on ``host``:``port`` with one thread per connection."""

    def __init__(
        self,
        on_message: MessageCallback,
        host: str = "127.0.0.1",
        port: int = 8025,
        *,
        hostname: str = "localhost",
        tls_context: ssl.SSLContext | None = None,
        idle_timeout: float = 300,
    ) -> None:
        self.on_message = on_message
        self.hostname = hostname
        self.tls_context = tls_context
        self.idle_timeout = idle_timeout
        self.listener = socket.create_server((host, port))
        # accept() wakes up this often to check whether stop() was called.
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.sessions: set[Session] = set()
        self.lock = threading.Lock()
        self.accept_thread = threading.Thread(target=self.accept_loop, daemon=True)

    def start(self) -> None:
        self.accept_thread.start()

    def stop(self) -> None:
        """Stop accepting and drop open connections without a reply."""
        self.stopping.set()
        self.accept_thread.join()
        self.listener.close()
        with self.lock:
            for session in self.sessions:
                session.abort()

    def accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            session = Session(self, sock, peer)
            with self.lock:
                self.sessions.add(session)
            threading.Thread(target=self.serve, args=(session,), daemon=True).start()

    def serve(self, session: Session) -> None:
        try:
            session.run()
        except OSError as error:
            print(f"connection from {session.peer[0]} failed: {error}")
        finally:
            with self.lock:
                self.sessions.discard(session)
            session.sock.close()


class Session:
    """One client connection: the loop that reads, feeds the engine, replies, writes."""

    def __init__(
        self, server: ThreadedSMTPServer, sock: socket.socket, peer: tuple[str, int]
    ) -> None:
        self.server = server
        self.sock = sock  # replaced by an ssl.SSLSocket after STARTTLS
        self.peer = peer

    def abort(self) -> None:
        """Wake up a blocked recv() with end of input; called from another thread."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def run(self) -> None:
        server = self.server
        self.sock.settimeout(server.idle_timeout)
        conn = ServerConnection(
            server.hostname, tls_available=server.tls_context is not None
        )
        conn.session.peer = self.peer
        conn.send_reply(220, f"{server.hostname} ESMTP threaded example")

        # The content of the message being received and the envelope it belongs
        # to. RSET, EHLO or STARTTLS can end a BDAT transaction between chunks,
        # and the engine then starts a new envelope.
        content = bytearray()
        content_envelope: Envelope | None = None

        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                # The end of a batch of pipelined commands: send all replies
                # in one write, then wait for more input.
                self.sock.sendall(conn.data_to_send())
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    conn.timeout()  # queues 421 and closes the session
                    continue
                conn.receive_data(data)  # b"" means the peer closed its side
            elif event is PAUSED:
                raise RuntimeError("the engine waits for a reply that was not sent")
            elif isinstance(event, ConnectionClosed):
                self.sock.sendall(conn.data_to_send())
                close_gently(self.sock)
                return
            elif isinstance(event, DataChunk):
                if content_envelope is not conn.envelope:
                    content_envelope = conn.envelope
                    content.clear()
                content += event.data
            elif isinstance(event, DataComplete):
                if content_envelope is not conn.envelope:
                    content.clear()  # a message without content
                server.on_message(conn.envelope, bytes(content))
                content.clear()
                content_envelope = None
                conn.accept()  # 250; the engine then starts a new envelope
            elif isinstance(event, DataRejected):
                # The engine has sent the error reply itself (size, bare LF).
                content.clear()
                content_envelope = None
            elif isinstance(event, StartTLS):
                if server.tls_context is None:
                    raise RuntimeError("STARTTLS is offered only with a context")
                conn.accept()  # 220 Ready to start TLS
                self.sock.sendall(conn.data_to_send())
                self.sock = server.tls_context.wrap_socket(self.sock, server_side=True)
                conn.tls_established()
            elif not isinstance(event, NOTIFICATIONS):
                # HELO, EHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, HELP, QUIT and
                # unknown commands: the engine's default reply. AUTH is not
                # offered because no auth_mechanisms were given.
                conn.accept()


def close_gently(sock: socket.socket) -> None:
    """Close after the client has read the last reply.

    Closing with unread input makes the kernel send a TCP reset, which can
    destroy the last reply in flight. Reading until the client closes, for at
    most one second, avoids that.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1)
        while sock.recv(65536):
            pass
    except OSError:
        pass


def print_message(envelope: Envelope, content: bytes) -> None:
    recipients = ", ".join(envelope.rcpt_tos)
    print(
        f"message from {envelope.mail_from} to {recipients}: {len(content)} octets",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=8025, help="TCP port; 0 lets the system choose"
    )
    parser.add_argument("--cert", help="PEM certificate chain; enables STARTTLS")
    parser.add_argument("--key", help="PEM private key for --cert")
    args = parser.parse_args()

    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)

    server = ThreadedSMTPServer(
        print_message, args.host, args.port, tls_context=tls_context
    )
    server.start()
    print(f"listening on {args.host}:{server.port}", flush=True)
    try:
        server.accept_thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
