"""TLS that asks the server for a stapled OCSP response, for the handshakes whose revocation we judge.

Windows' chain engine takes a stapled OCSP response before any other revocation
source ("Certificate revocation list semantics", win32 docs), so a MAPS front
end that staples passes on Windows even when the system route reaches neither
its OCSP responder nor its CRLs. Asking for the staple needs the TLS
status_request extension (RFC 6066 8), which the standard library's `ssl`
cannot send. pyOpenSSL can: these handshakes run in OpenSSL through it.

It sits behind the same surface as the standard library's: StaplingContext is
an ssl.SSLContext whose wrap_bio() returns a StaplingTLS, an SSLObject look-
alike over the same two ssl.MemoryBIOs. So Connection (_conn.py) and asyncio's
own TLS transport (_portable.py) drive it unchanged, and what it raises is what
ssl raises (SSLWantReadError, SSLEOFError, SSLError with a `reason`), so the
probe reasons are the same. Only the groups that need it use it (MAPS groups:
see http.py); every other probe keeps the standard library's TLS.

The staple itself is kept as bytes (`ocsp_staple`, b"" when the server sent
none) and judged later, with the verified chain (assess.py), like any other
OCSP response.
"""

from __future__ import annotations

import ipaddress
import ssl

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

_CHUNK = 65536


class StaplingContext(ssl.SSLContext):
    """A client context like client_context() (no verification: the chain is checked afterwards,
    ALPN http/1.1, TLS 1.2 at least) whose connections ask for a stapled OCSP response."""

    def __new__(cls) -> "StaplingContext":
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        self.check_hostname = False
        self.verify_mode = ssl.CERT_NONE
        openssl = SSL.Context(SSL.TLS_CLIENT_METHOD)
        openssl.set_min_proto_version(SSL.TLS1_2_VERSION)
        openssl.set_verify(SSL.VERIFY_NONE)
        openssl.set_alpn_protos([b"http/1.1"])
        # OpenSSL calls this once the handshake has the server's answer, with b"" when it stapled
        # nothing. Returning True: a missing or bad staple never fails the handshake (Windows then
        # asks the other sources); the staple is judged with the verified chain.
        openssl.set_ocsp_client_callback(_keep_staple)
        self._openssl = openssl

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session=None) -> "StaplingTLS":
        if server_side:  # pragma: no cover - a probe is always the client
            raise ValueError("StaplingContext is for clients")
        return StaplingTLS(self._openssl, incoming, outgoing, server_hostname)


def _keep_staple(connection: SSL.Connection, staple: bytes, _data) -> bool:
    connection.get_app_data()[0] = bytes(staple)
    return True


class StaplingTLS:
    """The part of ssl.SSLObject that our transports use, over OpenSSL's connection object:
    bytes move between the caller's MemoryBIOs and OpenSSL's own around every call."""

    def __init__(self, context: SSL.Context, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_hostname: str | None) -> None:
        self._incoming, self._outgoing = incoming, outgoing
        self._conn = SSL.Connection(context, None)
        # Where the callback leaves the staple: a box of its own, not this object, so that the
        # connection and this wrapper form no reference cycle (freed at once, not by the GC).
        self._staple: list[bytes] = [b""]
        self._conn.set_app_data(self._staple)
        self._conn.set_connect_state()
        if server_hostname and not _is_address(server_hostname):
            self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
        self._conn.request_ocsp()
        self.server_hostname = server_hostname
        self.server_side = False

    @property
    def ocsp_staple(self) -> bytes:
        """The OCSP response the server stapled (DER, unverified); b"" if it sent none."""
        return self._staple[0]

    # ------------------------------------------------------------------ the SSLObject surface

    def do_handshake(self) -> None:
        self._call(self._conn.do_handshake)

    def read(self, n: int = 1024, buffer=None):
        data = self._call(self._recv, n)
        if buffer is None:
            return data
        buffer[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        return self._call(self._conn.sendall, bytes(data)) or len(data)

    def pending(self) -> int:
        return self._conn.pending()

    def unwrap(self) -> None:
        try:
            self._call(self._conn.shutdown)
        except ssl.SSLWantReadError:
            # Our close_notify is out; a probe does not wait for the peer's.
            pass

    def version(self) -> str | None:
        return self._conn.get_protocol_version_name() if self._conn.get_cipher_name() else None

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return name, self._conn.get_cipher_version() or "", self._conn.get_cipher_bits() or 0

    def compression(self) -> None:
        return None

    def selected_alpn_protocol(self) -> str | None:
        chosen = self._conn.get_alpn_proto_negotiated()
        return chosen.decode("ascii", "replace") if chosen else None

    def getpeercert(self, binary_form: bool = False):
        # Unverified, as with CERT_NONE in the standard library: the DER leaf, or an empty dict.
        if not binary_form:
            return {}
        leaf = self._conn.get_peer_certificate(as_cryptography=True)
        return leaf.public_bytes(Encoding.DER) if leaf is not None else None

    def get_unverified_chain(self) -> list[bytes]:
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        return [cert.public_bytes(Encoding.DER) for cert in chain]

    # ------------------------------------------------------------------ moving bytes

    def _recv(self, n: int) -> bytes:
        try:
            return self._conn.recv(n)
        except SSL.ZeroReturnError:
            return b""  # the peer's close_notify, as ssl.SSLObject.read has it

    def _call(self, operation, *args):
        data = self._incoming.read()
        if data:
            self._conn.bio_write(data)
        try:
            return operation(*args)
        except SSL.WantReadError:
            raise ssl.SSLWantReadError("The operation did not complete (read)") from None
        except SSL.WantWriteError:  # pragma: no cover - memory BIOs never refuse a write
            raise ssl.SSLWantWriteError("The operation did not complete (write)") from None
        except SSL.ZeroReturnError:
            raise ssl.SSLZeroReturnError("TLS/SSL connection has been closed (EOF)") from None
        except SSL.SysCallError as exc:
            raise ssl.SSLEOFError(f"EOF occurred in violation of protocol ({_words(exc)})") from None
        except SSL.Error as exc:
            raise _ssl_error(exc) from None
        finally:
            self._flush()

    def _flush(self) -> None:
        while True:
            try:
                chunk = self._conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                return
            if not chunk:
                return
            self._outgoing.write(chunk)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _words(exc: Exception) -> str:
    return " ".join(str(a) for a in exc.args) or type(exc).__name__


def _ssl_error(exc: SSL.Error) -> ssl.SSLError:
    """An ssl.SSLError with `reason` set the way the standard library sets it (WRONG_VERSION_NUMBER)."""
    # pyOpenSSL's args: [[(library, function, reason), ...]] from OpenSSL's error queue.
    queue = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons = [str(entry[2]) for entry in queue if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
    reason = reasons[-1].upper().replace(" ", "_") if reasons else "UNKNOWN"
    error = ssl.SSLError(1, f"[SSL: {reason}] {reasons[-1] if reasons else _words(exc)}")
    error.reason = reason
    error.library = "SSL"
    return error
