"""--web.config.file: the exporter-toolkit format node_exporter users know.

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
    basic_auth_users:
      prometheus: $2y$10$...                           # bcrypt hash
    http_server_config:
      headers: {X-Frame-Options: deny}

Python's ssl cannot ask for a client certificate without verifying it, which
is what Go's RequestClientCert and RequireAnyClientCert do; rather than
silently verifying (or silently not), those settings are refused.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# A bcrypt hash of a random string: checked against when the user is unknown,
# so that a wrong user name costs as much time as a wrong password.
_DUMMY_HASH = b"$2b$10$CwTycUXWue0Thq9StjUM0uJ8.uNZtMZ8Eg0KKUd7bS9v9Hlb3h6ya"
_AUTH_CACHE_SECONDS = 300.0


class WebConfigError(Exception):
    pass


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass
class WebConfig:
    source: str
    tls: TLSServerConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    _cache: dict[bytes, float] = field(default_factory=dict, repr=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            if self.tls.client_ca_file:
                ctx.load_verify_locations(self.tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{self.source}: tls_server_config: {exc}") from None
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.tls.client_auth_type]
        ctx.minimum_version = TLS_VERSIONS[self.tls.min_version]
        if self.tls.max_version:
            ctx.maximum_version = TLS_VERSIONS[self.tls.max_version]
        return ctx

    def update_from(self, new: "WebConfig", context: ssl.SSLContext | None) -> None:
        """Apply a re-read file to the running server (SIGHUP, /-/reload).

        Users and headers apply at once; a rotated certificate and key are loaded
        into the live TLS context, so the next handshake presents them. What an
        SSLContext cannot take back in place needs a restart and is refused with
        this error rather than half applied: switching TLS on or off, and any
        change of client_auth_type, client_ca_file or the TLS versions (a CA once
        loaded stays trusted by that context)."""
        if (self.tls is None) != (new.tls is None):
            raise WebConfigError(f"{new.source}: tls_server_config: switching TLS on or off needs a restart")
        if self.tls is not None and new.tls is not None:
            fixed = ("client_auth_type", "client_ca_file", "min_version", "max_version")
            changed = [k for k in fixed if getattr(self.tls, k) != getattr(new.tls, k)]
            if changed:
                raise WebConfigError(f"{new.source}: tls_server_config.{changed[0]}: changing it needs a restart")
            if context is not None:
                try:
                    context.load_cert_chain(new.tls.cert_file, new.tls.key_file)
                except (OSError, ssl.SSLError) as exc:
                    raise WebConfigError(f"{new.source}: tls_server_config: {exc}") from None
        self.tls = new.tls
        self.users = dict(new.users)
        self.headers = dict(new.headers)
        self._cache.clear()

    def check_password(self, user: str, password: str) -> bool:
        """bcrypt is slow by design; a successful check is remembered a while
        (keyed by a hash of the credentials) so scrapes do not pay it each time."""
        import bcrypt

        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        if self._cache.get(key, 0) > now:
            return True
        hashed = self.users.get(user)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        except ValueError:
            ok = False
        if ok:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[key] = now + _AUTH_CACHE_SECONDS
        return ok


def load_web_config(path: str) -> WebConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_web_config(data, path)


def parse_web_config(data: Any, source: str) -> WebConfig:
    def fail(key: str, message: str) -> WebConfigError:
        return WebConfigError(f"{source}: {key}: {message}")

    if not isinstance(data, dict):
        raise fail("(top level)", "expected a mapping")
    allowed = {"tls_server_config", "basic_auth_users", "http_server_config"}
    for key in data:
        if key not in allowed:
            raise fail(str(key), f"unknown or unsupported key (supported: {', '.join(sorted(allowed))})")
    config = WebConfig(source)
    base = Path(source).parent

    tls = data.get("tls_server_config")
    if tls is not None:
        if not isinstance(tls, dict):
            raise fail("tls_server_config", "expected a mapping")
        tls_keys = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
        for key in tls:
            if key not in tls_keys:
                raise fail(f"tls_server_config.{key}", f"unsupported (supported: {', '.join(sorted(tls_keys))})")
        for key in ("cert_file", "key_file"):
            if not isinstance(tls.get(key), str) or not tls[key]:
                raise fail(f"tls_server_config.{key}", "required: a file path")
        auth_type = tls.get("client_auth_type", "NoClientCert")
        if auth_type in UNSUPPORTED_CLIENT_AUTH:
            raise fail(
                "tls_server_config.client_auth_type",
                f"{auth_type} asks for a client certificate without verifying it, which Python's ssl cannot do; "
                "use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file",
            )
        if auth_type not in CLIENT_AUTH_TYPES:
            raise fail("tls_server_config.client_auth_type",
                       f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {auth_type!r}")
        ca = tls.get("client_ca_file")
        if auth_type != "NoClientCert" and not ca:
            raise fail("tls_server_config.client_ca_file", f"required with client_auth_type {auth_type}")
        for key in ("min_version", "max_version"):
            if key in tls and tls[key] not in TLS_VERSIONS:
                raise fail(f"tls_server_config.{key}", f"expected one of {', '.join(TLS_VERSIONS)}, got {tls[key]!r}")

        def resolve(p: str | None) -> str | None:
            return None if p is None else str(base / p)

        config.tls = TLSServerConfig(
            cert_file=resolve(tls["cert_file"]), key_file=resolve(tls["key_file"]),
            client_auth_type=auth_type, client_ca_file=resolve(ca),
            min_version=tls.get("min_version", "TLS12"), max_version=tls.get("max_version"),
        )
        config.ssl_context()  # fail now, at load time, on unreadable files

    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise fail("basic_auth_users", "expected a mapping of user name to bcrypt hash")
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise fail(f"basic_auth_users.{user}", "expected a bcrypt hash ($2a$/$2b$/$2y$...)")
            config.users[str(user)] = hashed.encode()

    server = data.get("http_server_config")
    if server is not None:
        if not isinstance(server, dict) or set(server) - {"headers"}:
            raise fail("http_server_config", "only `headers` is supported")
        headers = server.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise fail("http_server_config.headers", "expected a mapping of header name to value")
        config.headers = dict(headers)
    return config
