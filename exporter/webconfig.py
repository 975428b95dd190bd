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

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .config import ConfigError, _Checker, load_yaml
from .config import _describe as _kind

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
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
# exporter-toolkit settings a node_exporter user may bring along, which this exporter does not do.
_TOOLKIT_UNSUPPORTED = {
    "": {"rate_limit"},
    "tls_server_config": {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                          "prefer_server_cipher_suites", "client_allowed_sans"},
    "http_server_config": {"http2"},
}


class WebConfigError(ConfigError):
    """A --web.config.file problem, in the config file's style: file: key.path: message."""


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

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_cert_chain(ctx, self.tls, _Checker(self.source, error=WebConfigError))
        if self.tls.client_ca_file:
            try:
                ctx.load_verify_locations(self.tls.client_ca_file)
            except (OSError, ssl.SSLError):
                raise WebConfigError(self.source, "tls_server_config.client_ca_file",
                                     f"{self.tls.client_ca_file}: holds no PEM certificate") from None
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.tls.client_auth_type]
        ctx.minimum_version = TLS_VERSIONS[self.tls.min_version]
        if self.tls.max_version:
            ctx.maximum_version = TLS_VERSIONS[self.tls.max_version]
        return ctx

    def summary(self) -> str:
        parts = [f"TLS, client certificates: {self.tls.client_auth_type}" if self.tls else "no TLS"]
        users = len(self.users)
        parts.append(f"{users} basic-auth user{'s' if users != 1 else ''}" if users else "no basic auth")
        return ", ".join(parts)

    def update_from(self, new: "WebConfig", context: ssl.SSLContext | None) -> None:
        """Apply a re-read file to the running server (SIGHUP, /-/reload).

        Users and headers apply at once; a rotated certificate and key are loaded
        into the live TLS context, so the next handshake presents them. What an
        SSLContext cannot take back in place needs a restart and is refused with
        this error rather than half applied: switching TLS on or off, and any
        change of client_auth_type, client_ca_file or the TLS versions (a CA once
        loaded stays trusted by that context)."""
        if (self.tls is None) != (new.tls is None):
            raise WebConfigError(new.source, "tls_server_config", "switching TLS on or off needs a restart")
        if self.tls is not None and new.tls is not None:
            fixed = ("client_auth_type", "client_ca_file", "min_version", "max_version")
            changed = [k for k in fixed if getattr(self.tls, k) != getattr(new.tls, k)]
            if changed:
                raise WebConfigError(new.source, f"tls_server_config.{changed[0]}", "changing it needs a restart")
            if context is not None:
                _load_cert_chain(context, new.tls, _Checker(new.source, error=WebConfigError))
        self.tls = new.tls
        self.users = dict(new.users)
        self.headers = dict(new.headers)


def load_web_config(path: str) -> WebConfig:
    check = _Checker(path, error=WebConfigError)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise check.fail("", f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise check.fail("", "not UTF-8 text") from None
    data = load_yaml(text, check)
    if data is None:
        # A half-written file must not switch TLS and basic auth off.
        raise check.fail("", "the file is empty; to serve without TLS and basic auth, start without --web.config.file")
    return parse_web_config(data, path)


def parse_web_config(data: Any, source: str) -> WebConfig:
    check = _Checker(source, error=WebConfigError)
    top = _mapping(check, data, "", _TOP_KEYS)
    config = WebConfig(source)
    base = Path(source).parent

    if top.get("tls_server_config") is not None:
        config.tls = _tls_server_config(check, top["tls_server_config"], base)
        config.ssl_context()  # fail now, at load time, on unreadable or mismatched files

    users = top.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict):
            raise check.fail("basic_auth_users", f"expected a mapping of user name to bcrypt hash, got {_kind(users)}")
        for user, hashed in users.items():
            path = f"basic_auth_users.{user}"
            if not isinstance(user, str) or not user or ":" in user:
                raise check.fail(path, "user names are non-empty strings without ':'")
            # Never echo the value: a plain password is the usual mistake here.
            if not isinstance(hashed, str) or not _BCRYPT_RE.fullmatch(hashed):
                raise check.fail(path, "expected a bcrypt hash ($2a$/$2b$/$2y$ and 56 more characters, "
                                       "e.g. from `htpasswd -nBC 10 USER`), got something else")
            config.users[user] = hashed.encode()

    server = top.get("http_server_config")
    if server is not None:
        server = _mapping(check, server, "http_server_config", {"headers"})
        headers = server.get("headers") or {}
        if not isinstance(headers, dict):
            raise check.fail("http_server_config.headers",
                             f"expected a mapping of header name to value, got {_kind(headers)}")
        for name, value in headers.items():
            if not isinstance(name, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise check.fail(f"http_server_config.headers.{name}", "not a valid header name")
            if not isinstance(value, str) or any(c in value for c in "\r\n"):
                raise check.fail(f"http_server_config.headers.{name}", "expected a string on one line")
        config.headers = dict(headers)
    return config


def _mapping(check: _Checker, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    for key in value if isinstance(value, dict) else ():
        if key in _TOOLKIT_UNSUPPORTED.get(path, ()):
            raise check.fail(f"{path}.{key}" if path else key, f"exporter-toolkit's `{key}` is not supported "
                             f"by this exporter (supported here: {', '.join(sorted(allowed))})")
    return check.mapping(value, path, allowed)


def _tls_server_config(check: _Checker, value: Any, base: Path) -> TLSServerConfig:
    tls = _mapping(check, value, "tls_server_config", _TLS_KEYS)
    files: dict[str, str | None] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        path = f"tls_server_config.{key}"
        if tls.get(key) is None:
            if key != "client_ca_file":
                raise check.fail(path, "required: a file path")
            files[key] = None
            continue
        files[key] = _readable_file(check, tls[key], path, base)
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type in UNSUPPORTED_CLIENT_AUTH:
        raise check.fail(
            "tls_server_config.client_auth_type",
            f"{auth_type} asks for a client certificate without verifying it, which Python's ssl cannot do; "
            "use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file",
        )
    if auth_type not in CLIENT_AUTH_TYPES:
        raise check.fail("tls_server_config.client_auth_type",
                         f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {_kind(auth_type)}")
    if auth_type != "NoClientCert" and not files["client_ca_file"]:
        raise check.fail("tls_server_config.client_ca_file", f"required with client_auth_type {auth_type}")
    for key in ("min_version", "max_version"):
        if key in tls and tls[key] not in TLS_VERSIONS:
            raise check.fail(f"tls_server_config.{key}",
                             f"expected one of {', '.join(TLS_VERSIONS)}, got {_kind(tls[key])}")
    min_version, max_version = tls.get("min_version", "TLS12"), tls.get("max_version")
    if max_version and TLS_VERSIONS[max_version] < TLS_VERSIONS[min_version]:
        raise check.fail("tls_server_config.max_version", f"{max_version} is below min_version {min_version}")
    return TLSServerConfig(
        cert_file=files["cert_file"], key_file=files["key_file"], client_auth_type=auth_type,
        client_ca_file=files["client_ca_file"], min_version=min_version, max_version=max_version,
    )


def _readable_file(check: _Checker, value: Any, path: str, base: Path) -> str:
    """A path relative to the web config's folder (as exporter-toolkit resolves it), readable now."""
    if not isinstance(value, str) or not value:
        raise check.fail(path, f"expected a file path, got {_kind(value)}")
    resolved = str(base / value)
    try:
        with open(resolved, "rb"):
            pass
    except (OSError, ValueError) as exc:
        raise check.fail(path, f"{resolved}: {_why(exc)}") from None
    return resolved


def _why(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read: {exc.strerror.lower()}"
    return "not a usable file path"


def _load_cert_chain(ctx: ssl.SSLContext, tls: TLSServerConfig, check: _Checker) -> None:
    """Load the pair into `ctx`; OpenSSL's own errors (`[SSL] PEM lib`) are turned into
    which file is wrong and how."""
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_passphrase)
        return
    except (OSError, ssl.SSLError, ValueError) as exc:
        failure = exc
    for key, name in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        try:
            data = Path(name).read_bytes()
        except (OSError, ValueError) as exc:
            raise check.fail(f"tls_server_config.{key}", f"{name}: {_why(exc)}") from None
        if key == "cert_file":
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError:
                raise check.fail("tls_server_config.cert_file", f"{name}: holds no PEM certificate") from None
        else:
            try:
                load_pem_private_key(data, password=None)
            except TypeError:
                raise check.fail("tls_server_config.key_file", f"{name}: the key is encrypted; give an "
                                 "unencrypted key (e.g. `openssl pkey -in KEY -out KEY.plain`)") from None
            except (ValueError, UnsupportedAlgorithm):
                raise check.fail("tls_server_config.key_file", f"{name}: holds no PEM private key") from None
    if isinstance(failure, ssl.SSLError) and "KEY_VALUES_MISMATCH" in str(failure):
        raise check.fail("tls_server_config.key_file", f"{tls.key_file}: does not match the certificate in cert_file")
    raise check.fail("tls_server_config.cert_file",
                     f"{tls.cert_file} with key_file {tls.key_file}: not a usable certificate and key "
                     f"(OpenSSL: {getattr(failure, 'reason', None) or 'unknown reason'})")


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would ask for a passphrase on the terminal.
    raise ValueError("encrypted key")

