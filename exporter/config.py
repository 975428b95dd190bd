"""Load and validate the configuration once, into frozen dataclasses.

Every error names the file, the key path and what was expected, e.g.

    config.yml: groups.maps.interval: expected a duration such as 30s or 5m, got 'soon'

The built-in catalogue (catalogue.yaml) goes through the same validation as
the `groups:` key of a user's file, so the two can never disagree on shape.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .budget import JobBudget
from .cabundle import read_bundle
from .catalogue import CONFIG_SOURCE, CONNECTIVITY_PROFILES, REGIONS, catalogue_groups

DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONCURRENCY = 64
DEFAULT_ROUTES = ("defender", "system")
# Groups whose legitimate chains are pinned to the bundled roots by default.
PINNED_GROUPS = ("maps", "submission")
SSL_OPTIONS_DEFAULT = 3  # Spynet SSLOptions: pinning and revocation checks on


class ConfigError(Exception):
    """A configuration problem: where it is and what was expected."""

    def __init__(self, source: str, key_path: str, message: str):
        # The last line of defence: whatever built the message, a URL's password never leaves.
        self.source = source
        self.key_path = redact_urls(key_path)
        self.message = redact_urls(message)
        where = f"{source}: {self.key_path}: " if key_path else f"{source}: "
        super().__init__(where + self.message)


# --------------------------------------------------------------------------- secrets

REDACTED = "<redacted>"
# scheme://user:password@ as urlsplit reads it: the password runs to the last @ of the authority.
_USERINFO_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\[\]\s'\"]*(?:@[^/?#@\[\]\s'\"]*)*)@"
)
# Shorter secrets would mangle ordinary words; the URL-shaped redaction still covers them.
_MIN_SECRET = 3


def redact_urls(text: str) -> str:
    """Every URL's password (or user-only token) replaced: `http://u:<redacted>@host`."""

    def replace(match: re.Match) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:{REDACTED}@" if colon else f"{match['scheme']}{REDACTED}@"

    return _USERINFO_RE.sub(replace, text)


def secrets_in(text: str) -> frozenset[str]:
    """The credentials written in a config file's URLs, in every form a message could show them."""
    found: set[str] = set()
    for match in _USERINFO_RE.finditer(text):
        user, colon, password = match["userinfo"].partition(":")
        if not colon:
            user, password = "", user
        for pw in {password, unquote(password)}:
            found.update({pw, quote(pw, safe=""), base64.b64encode(f"{unquote(user)}:{pw}".encode()).decode()})
    return frozenset(s for s in found if len(s) >= _MIN_SECRET)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class ProxyURL:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL as it may appear in logs, metrics and pages: never the password."""
        auth = f"{self.username}:<redacted>@" if self.username is not None else ""
        return f"http://{auth}{_host_for_url(self.host)}:{self.port}"

    def __str__(self) -> str:
        return self.redacted()


# Kinds of route (the `routes.<name>` keys that choose one; see exporter/routes.py).
ROUTE_KINDS = ("proxy", "pac", "wpad", "fallback")
DEFAULT_PAC_INTERVAL = 300.0


@dataclass(frozen=True)
class Route:
    """A named network path, as Windows finds it.

    - direct: nothing set (proxy None);
    - proxy: a static proxy, with an optional WinHTTP bypass list;
    - pac: a proxy auto-config script (URL or file), evaluated per target URL;
    - wpad: the PAC found by DNS (wpad.<domain>, walking up the search domain);
    - fallback: other routes tried in order (Defender's documented order).

    The probers only ever see a direct or static-proxy Route: exporter/routes.py
    turns the other kinds into one per attempt (routes.concrete).
    """

    name: str
    proxy: ProxyURL | None = None
    bypass: tuple[str, ...] = ()
    pac: str | None = None  # http(s):// or file:// URL (a path is stored as file://)
    pac_route: str | None = None  # route the PAC file is fetched on; None: direct
    pac_interval: float = DEFAULT_PAC_INTERVAL
    wpad: bool = False
    wpad_domain: str | None = None  # None: the search domain of /etc/resolv.conf
    fallback: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.fallback:
            return "fallback"
        if self.pac is not None:
            return "pac"
        if self.wpad:
            return "wpad"
        return "proxy" if self.proxy is not None else "direct"

    @property
    def static(self) -> bool:
        """Direct or one proxy for every URL: nothing to evaluate per target."""
        return self.kind in ("direct", "proxy") and not self.bypass


@dataclass(frozen=True)
class ConnectTo:
    """curl's --connect-to: HOST:PORT:ADDR:PORT; empty fields mean any / same."""

    from_host: str  # "" = any host
    from_port: int | None  # None = any port
    to_host: str  # "" = same host
    to_port: int | None  # None = same port

    def matches(self, host: str, port: int) -> bool:
        return (not self.from_host or self.from_host.lower() == host.lower()) and (
            self.from_port is None or self.from_port == port
        )

    def apply(self, host: str, port: int) -> tuple[str, int]:
        return (self.to_host or host, self.to_port if self.to_port is not None else port)


@dataclass(frozen=True)
class Expect:
    """What an answer must be for the probe to succeed (blackbox_exporter's
    valid_status_codes and fail_if_body_not_matches_regexp, plus a content kind).
    Empty: any answer from the endpoint counts."""

    statuses: tuple[int | str, ...] = ()  # codes (403) or classes ("2xx"); empty: any
    content: str | None = None  # one of CONTENT_KINDS: the body must be that kind of file
    body: re.Pattern[bytes] | None = None  # must match somewhere in the body (as far as it is kept)

    def allows(self, status: int) -> bool:
        return not self.statuses or any(
            status == s if isinstance(s, int) else str(status)[0] == s[0] for s in self.statuses)

    def merged_over(self, outer: "Expect") -> "Expect":
        """This target's expectations, each falling back to the group's."""
        return Expect(self.statuses or outer.statuses, self.content or outer.content, self.body or outer.body)


NO_EXPECT = Expect()


@dataclass(frozen=True)
class Target:
    url: str
    pattern: str
    scheme: str  # http | https
    host: str
    port: int
    request_target: str  # path and query, as sent in the request line
    source: str = CONFIG_SOURCE  # where the entry comes from: `article`, a named Microsoft page, `config`
    region: str | None = None  # the geography it serves (None: every geography)
    expect: Expect = NO_EXPECT  # the target's own `expect:` merged over its group's

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = _host_for_url(self.host)
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Group:
    name: str
    description: str
    routes: tuple[str, ...]
    interval: float
    timeout: float
    targets: tuple[Target, ...]
    # SHA-256 fingerprints of the roots legitimate chains must end at; empty = no pinning.
    expected_roots: frozenset[bytes] = frozenset()
    validate_maps: bool = False
    content: str | None = None  # what the endpoint serves, checked on every answer (`ctl`)
    enabled: bool = True  # disabled groups are validated and kept (Config.disabled_groups), never probed


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str | None = None
    ssl_options: int = SSL_OPTIONS_DEFAULT
    # MAPS groups' handshakes ask for a stapled OCSP response, as Windows' do (docs/maps-validation.md).
    ocsp_stapling: bool = True

    @property
    def pinning(self) -> bool:
        return self.ssl_options in (2, 3)

    @property
    def revocation(self) -> bool:
        return self.ssl_options in (1, 3)


@dataclass(frozen=True)
class Limits:
    """Caps that keep a hostile or broken peer from costing memory."""

    header_bytes: int = 32 * 1024
    body_bytes: int = 64 * 1024
    crl_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class ProbeJob:
    """One unit of scheduling: a target probed over one route."""

    group: Group
    target: Target
    route: Route
    # Of the probe's deadline, what earlier tries of this job used (a route's failover
    # to its next proxy, routes.py); 0 for a job as the config makes it.
    spent: float = field(default=0.0, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group.name, self.target.url, self.route.name)

    @property
    def budget(self) -> JobBudget:
        return JobBudget(self.group.timeout, spent=self.spent)


HOST_MODES = ("windows", "mdatp", "auto")


@dataclass(frozen=True)
class HostConfig:
    """The ``host:`` section: Defender's own tools on this machine (hostside/), off by default."""

    enabled: bool = False
    interval: float = 600.0  # seconds between collections
    timeout: float = 120.0   # seconds per command
    mpcmdrun: str = r"C:\Program Files\Windows Defender\MpCmdRun.exe"
    netsh: str = "netsh"
    reg: str = "reg"
    powershell: str = "powershell"
    mdatp: str = "mdatp"
    mode: str = "auto"  # windows | mdatp | auto (by platform)

    def effective_mode(self, platform: str | None = None) -> str:
        """``windows`` or ``mdatp`` (``auto`` resolved by ``sys.platform``)."""
        if self.mode != "auto":
            return self.mode
        return "windows" if (platform or sys.platform).startswith("win") else "mdatp"


@dataclass(frozen=True)
class Config:
    source: str
    interval: float
    timeout: float
    concurrency: int
    routes: Mapping[str, Route]
    connect_to: tuple[ConnectTo, ...]
    tls: TLSConfig
    limits: Limits
    groups: tuple[Group, ...]
    host: HostConfig = HostConfig()
    connectivity: str = "standard"  # the catalogue profile: standard | streamlined
    region: str = "all"  # the geography the site's endpoints use
    ctl_mirror_url: str | None = None  # internal mirror of the certificate trust lists
    # `enabled: false` groups, so that /config shows them and a file written from it is this config
    disabled_groups: tuple[Group, ...] = ()

    def jobs(self) -> list[ProbeJob]:
        return [
            ProbeJob(group, target, self.routes[route])
            for group in self.groups
            for target in group.targets
            for route in group.routes
        ]

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None) -> Config:
    """Validate the file at `path` (None: the built-in catalogue with defaults)."""
    if path is None:
        return _build({}, _Checker("<built-in>"))
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not UTF-8 text") from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<string>") -> Config:
    check = _Checker(source, secrets=secrets_in(text))
    data = load_yaml(text, check)
    if data is None:
        # A half-written file (an editor's or a config-management tool's moment)
        # must not quietly become the built-in catalogue without the site's proxies.
        raise check.fail("", "the file is empty; to run the built-in catalogue, start without --config.file")
    return _build(data, check)


def load_yaml(text: str, check: "_Checker") -> Any:
    """YAML as PyYAML's safe loader reads it, but a key given twice is an error
    (PyYAML keeps the last one silently: a second `defender:` route would
    replace the first)."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # reading starts here: a NUL byte fails already
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", check)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise check.fail("", f"invalid YAML: {where}{problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, root_path: str, check: "_Checker") -> None:
    pending: list[tuple[yaml.Node, str]] = [(root, root_path)]
    visited: set[int] = set()  # anchors share nodes; aliases may even loop
    while pending:
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend(reversed([(item, f"{path}[{i}]") for i, item in enumerate(node.value)]))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden
                    continue
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "(key)"
                key_path = f"{path}.{name}" if path else name
                line = key_node.start_mark.line + 1
                key = (key_node.tag, name)
                if isinstance(key_node, yaml.ScalarNode) and key in seen:
                    raise check.fail(key_path, f"given twice, at lines {seen[key]} and {line} "
                                               "(YAML would keep only the last)")
                seen[key] = line
            pending.extend(reversed([(value, f"{path}.{key.value}" if path else key.value)
                                     for key, value in node.value if isinstance(key, yaml.ScalarNode)]))


def bundled_root_pems() -> list[bytes]:
    folder = resources.files("exporter").joinpath("roots")
    return [f.read_bytes() for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".pem")]


def bundled_root_fingerprints() -> frozenset[bytes]:
    out = set()
    for pem in bundled_root_pems():
        cert = x509.load_pem_x509_certificate(pem)
        out.add(hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())
    return frozenset(out)


# --------------------------------------------------------------------------- validation

_TOP_KEYS = {
    "interval", "timeout", "concurrency", "routes", "connect_to", "tls", "limits", "groups", "host",
    "connectivity", "region", "ctl_mirror_url",
}
_HOST_KEYS = {"enabled", "interval", "timeout", "mode", "mpcmdrun", "netsh", "reg", "powershell", "mdatp"}
_GROUP_KEYS = {
    "description", "route", "interval", "timeout", "enabled", "targets", "expected_roots", "validate_maps", "content",
    "expect",
}
# What a body can be checked to be: a CRL signed by its issuer, a CTL cabinet, an X.509 certificate.
CONTENT_KINDS = ("crl", "ctl", "cert")
_EXPECT_KEYS = {"status", "content", "body"}
_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


class _Checker:
    """Typed accessors that raise ConfigError with the key path.

    Every message is built here, so this is where credentials are taken out:
    each password written in the file (as written, URL-decoded, and as a Basic
    token) is redacted wherever a mistake's shape puts it, in the key path as
    much as in an echoed value; ConfigError then redacts any URL's userinfo."""

    def __init__(self, source: str, *, secrets: frozenset[str] = frozenset(),
                 error: type[ConfigError] = ConfigError):
        self.source = source
        self.error = error  # the web config's checker raises WebConfigError
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted(secrets, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def fail(self, path: str, message: str) -> ConfigError:
        return self.error(self.source, self.redact(path), self.redact(message))

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path or "(top level)", f"expected a mapping, got {_describe(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path or "(top level)", f"keys must be strings, got {_describe(key)}")
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                raise self.fail(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return value

    def duration(self, value: Any, path: str) -> float:
        match = _DURATION_RE.match(value) if isinstance(value, str) and value else None
        if not match:
            raise self.fail(path, f"expected a duration such as 30s or 5m, got {_describe(value)}")
        seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _DURATION_UNITS) if n)
        if seconds <= 0:
            raise self.fail(path, f"expected a duration above zero, got {value!r}")
        return float(seconds)

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(path, f"expected a whole number from {lo} to {hi}, got {_describe(value)}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_describe(value)}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {_describe(value)}")
        return value

    def listing(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_describe(value)}")
        return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        value = redact_urls(value)  # before shortening, so no part of a password is left
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _build(data: Any, check: _Checker) -> Config:
    source = check.source
    top = check.mapping(data, "", _TOP_KEYS)

    interval = check.duration(top["interval"], "interval") if "interval" in top else DEFAULT_INTERVAL
    timeout = check.duration(top["timeout"], "timeout") if "timeout" in top else min(DEFAULT_TIMEOUT, interval)
    if timeout > interval:
        raise check.fail("timeout", f"must not exceed interval ({top.get('interval', '60s')})")
    concurrency = (
        check.integer(top["concurrency"], "concurrency", 1, 100_000) if "concurrency" in top else DEFAULT_CONCURRENCY
    )
    routes = _routes(check, top.get("routes"))
    connect_to = tuple(
        _connect_to(check, item, f"connect_to[{i}]")
        for i, item in enumerate(check.listing(top.get("connect_to", []) or [], "connect_to"))
    )
    tls = _tls(check, top.get("tls"))
    limits = _limits(check, top.get("limits"))

    connectivity = _choice(check, top, "connectivity", CONNECTIVITY_PROFILES)
    region = _choice(check, top, "region", REGIONS)
    ctl_mirror_url = None
    if top.get("ctl_mirror_url") is not None:
        ctl_mirror_url = _target(check, top["ctl_mirror_url"], "ctl_mirror_url").url
    catalogue = catalogue_groups(connectivity, region, ctl_mirror_url)
    user_groups = top.get("groups") or {}
    if not isinstance(user_groups, dict):
        raise check.fail("groups", f"expected a mapping of group names, got {_describe(user_groups)}")
    groups, disabled = [], []
    for name in list(catalogue) + [n for n in user_groups if n not in catalogue]:
        base = catalogue.get(name, {})
        override = user_groups.get(name)
        path = f"groups.{name}"
        if override is not None:
            check.mapping(override, path, _GROUP_KEYS)
        elif name in user_groups:  # `maps:` with nothing under it
            override = {}
        merged = {**base, **(override or {})}
        if name not in catalogue and "targets" not in merged:
            raise check.fail(path, _new_group_without_targets(name, catalogue))
        group = _group(check, name, merged, path, interval, timeout, routes)
        (groups if group.enabled else disabled).append(group)
    return Config(
        source=source, interval=interval, timeout=timeout, concurrency=concurrency, routes=routes,
        connect_to=connect_to, tls=tls, limits=limits, groups=tuple(groups), host=_host(check, top.get("host")),
        connectivity=connectivity, region=region, ctl_mirror_url=ctl_mirror_url, disabled_groups=tuple(disabled),
    )


def _choice(check: _Checker, top: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = top.get(key, choices[0])
    if value not in choices:
        raise check.fail(key, f"expected one of {', '.join(choices)}, got {_describe(value)}")
    return value


def _new_group_without_targets(name: str, catalogue: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(catalogue), n=1, cutoff=0.6) if isinstance(name, str) else []
    hint = f"; did you mean the catalogue group `{close[0]}`?" if close else ""
    return f"a new group needs `targets`{hint} (catalogue groups: {', '.join(catalogue)})"


def _host(check: _Checker, value: Any) -> HostConfig:
    """The optional host-side collectors (Defender's own tools on this machine)."""
    if value is None:
        return HostConfig()
    spec = check.mapping(value, "host", _HOST_KEYS)
    kwargs: dict[str, Any] = {}
    if "enabled" in spec:
        kwargs["enabled"] = check.boolean(spec["enabled"], "host.enabled")
    for key in ("interval", "timeout"):
        if key in spec:
            kwargs[key] = check.duration(spec[key], f"host.{key}")
    if "mode" in spec:
        if spec["mode"] not in HOST_MODES:
            raise check.fail("host.mode", f"expected one of {', '.join(HOST_MODES)}, got {_describe(spec['mode'])}")
        kwargs["mode"] = spec["mode"]
    for key in ("mpcmdrun", "netsh", "reg", "powershell", "mdatp"):
        if key in spec:
            kwargs[key] = check.string(spec[key], f"host.{key}")
    return HostConfig(**kwargs)


_ROUTE_KEYS = {"proxy", "bypass", "pac", "pac_route", "pac_interval", "wpad", "wpad_domain", "fallback"}


def _routes(check: _Checker, value: Any) -> dict[str, Route]:
    routes = {name: Route(name) for name in DEFAULT_ROUTES}
    if value is None:
        return routes
    if not isinstance(value, dict):
        raise check.fail("routes", f"expected a mapping of route names, got {_describe(value)}")
    for name, spec in value.items():
        path = f"routes.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
            raise check.fail(path, "route names are letters, digits, '_', '.', '-'")
        if isinstance(spec, str):  # `defender: http://proxy:3128`, the `proxy:` key forgotten
            raise check.fail(path, f"expected a mapping such as {{proxy: URL}}, got {_describe(spec)}")
        spec = {} if spec is None else check.mapping(spec, path, _ROUTE_KEYS)
        routes[name] = _route(check, name, spec, path)
    _check_route_references(check, routes)
    return routes


def _route(check: _Checker, name: str, spec: dict[str, Any], path: str) -> Route:
    kinds = [k for k in ROUTE_KINDS if spec.get(k) not in (None, False)]
    if len(kinds) > 1:
        raise check.fail(path, f"a route is one of proxy, pac, wpad or fallback, not {' and '.join(kinds)}")
    kind = kinds[0] if kinds else "direct"
    for key, needs in (("bypass", "proxy"), ("pac_route", "pac"), ("pac_interval", "pac"), ("wpad_domain", "wpad")):
        if spec.get(key) is not None and kind != needs:
            raise check.fail(f"{path}.{key}", f"only for a route with `{needs}:`")
    fields: dict[str, Any] = {}
    if kind == "proxy":
        fields["proxy"] = _proxy(check, spec["proxy"], f"{path}.proxy")
        if spec.get("bypass") is not None:
            fields["bypass"] = _bypass(check, spec["bypass"], f"{path}.bypass")
    elif kind == "pac":
        fields["pac"] = _pac_location(check, spec["pac"], f"{path}.pac")
        if spec.get("pac_route") is not None:
            fields["pac_route"] = check.string(spec["pac_route"], f"{path}.pac_route")
        if spec.get("pac_interval") is not None:
            fields["pac_interval"] = check.duration(spec["pac_interval"], f"{path}.pac_interval")
    elif kind == "wpad":
        if spec["wpad"] is not True:
            raise check.fail(f"{path}.wpad", f"expected true, got {_describe(spec['wpad'])}")
        if spec.get("wpad_domain") is not None:
            domain = check.string(spec["wpad_domain"], f"{path}.wpad_domain").strip(".").lower()
            if not _valid_host(domain) or "." not in domain:
                raise check.fail(f"{path}.wpad_domain", f"expected a DNS domain such as corp.example.com, got {_describe(spec['wpad_domain'])}")
            fields["wpad_domain"] = domain
        fields["wpad"] = True
    elif kind == "fallback":
        members = check.listing(spec["fallback"], f"{path}.fallback")
        if not members:
            raise check.fail(f"{path}.fallback", "expected at least one route name")
        for i, member in enumerate(members):
            check.string(member, f"{path}.fallback[{i}]")
        if len(set(members)) != len(members):
            raise check.fail(f"{path}.fallback", "a route is named twice")
        fields["fallback"] = tuple(members)
    return Route(name, **fields)


def _check_route_references(check: _Checker, routes: Mapping[str, Route]) -> None:
    """fallback members and pac_route name defined routes; no loops."""
    for route in routes.values():
        path = f"routes.{route.name}"
        for i, member in enumerate(route.fallback):
            target = routes.get(member)
            if target is None:
                raise check.fail(f"{path}.fallback[{i}]", f"unknown route {member!r} (defined: {', '.join(sorted(routes))})")
            if target.kind == "fallback":
                raise check.fail(f"{path}.fallback[{i}]", f"route {member!r} is itself a fallback list; name its members")
        if route.pac_route is not None:
            target = routes.get(route.pac_route)
            if target is None:
                raise check.fail(f"{path}.pac_route", f"unknown route {route.pac_route!r} (defined: {', '.join(sorted(routes))})")
            if not target.static:
                raise check.fail(f"{path}.pac_route", f"route {route.pac_route!r} must be direct or one proxy without bypass")


def _bypass(check: _Checker, value: Any, path: str) -> tuple[str, ...]:
    """WinHTTP's bypass list: a list, or one string split on ';' and blanks as netsh takes it."""
    items = re.split(r"[;\s]+", value) if isinstance(value, str) else check.listing(value, path)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str) and not item.strip():
            continue
        entry = check.string(item, f"{path}[{i}]").strip().lower()
        if entry != "<local>" and not re.fullmatch(r"(?:https?://)?[a-z0-9*_.:\[\]-]+", entry):
            raise check.fail(f"{path}[{i}]", f"expected a host name, address or pattern such as *.contoso.com or <local>, got {_describe(item)}")
        out.append(entry)
    return tuple(out)


def _pac_location(check: _Checker, value: Any, path: str) -> str:
    expected = "expected an http(s):// URL, a file:// URL or an absolute path of a PAC file"
    if not isinstance(value, str) or not value:
        raise check.fail(path, f"{expected}, got {_describe(value)}")
    if value.startswith("/"):
        return "file://" + value
    try:
        parts = urlsplit(value)
        parts.port
    except ValueError:
        raise check.fail(path, f"{expected}; the port is not a number from 1 to 65535") from None
    if parts.scheme in ("http", "https"):
        if not parts.hostname or not _valid_host(parts.hostname):
            raise check.fail(path, f"{expected}; the URL has no valid host")
        if parts.username is not None or parts.password is not None:
            raise check.fail(path, "PAC URLs must not carry credentials")
        return value
    if parts.scheme == "file" and parts.path.startswith("/") and parts.netloc in ("", "localhost"):
        return value
    raise check.fail(path, f"{expected}, got {_describe(value)}")


def _proxy(check: _Checker, value: Any, path: str) -> ProxyURL:
    expected = "expected a proxy URL http://[user:pass@]host:port"
    if value == "":
        raise check.fail(path, f"{expected}, got an empty string; for a direct route write `proxy: null`")
    if not isinstance(value, str):
        raise check.fail(path, f"{expected}, got {_describe(value)}")
    # Never echo the value back: it may hold a password.
    if "://" not in value:
        raise check.fail(path, f"{expected}; the scheme is missing (write http:// before the host)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise check.fail(path, f"{expected} (the port is not a number from 1 to 65535)") from None
    if parts.scheme != "http":
        raise check.fail(path, f"{expected}; only http:// proxies are supported")
    if not parts.hostname or port is None:
        raise check.fail(path, f"{expected}; host and port are required")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise check.fail(path, f"{expected}; no path or query")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ProxyURL(parts.hostname, port, user, password)


def _connect_to(check: _Checker, value: Any, path: str) -> ConnectTo:
    expected = "expected HOST:PORT:ADDR:PORT (curl's --connect-to; empty fields mean any/same)"
    if not isinstance(value, str):
        raise check.fail(path, f"{expected}, got {_describe(value)}")
    fields = _split_colons(value)
    if len(fields) != 4:
        raise check.fail(path, f"{expected}, got {value!r}")
    from_host, from_port, to_host, to_port = fields

    def port(text: str) -> int | None:
        if text == "":
            return None
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise check.fail(path, f"{expected}; {text!r} is not a port")
        return int(text)

    return ConnectTo(from_host.strip("[]"), port(from_port), to_host.strip("[]"), port(to_port))


def _split_colons(text: str) -> list[str]:
    """Split on colons outside [brackets], which is how IPv6 addresses are written."""
    fields, current, depth = [], "", 0
    for char in text:
        if char == ":" and depth == 0:
            fields.append(current)
            current = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        current += char
    fields.append(current)
    return fields


def _tls(check: _Checker, value: Any) -> TLSConfig:
    if value is None:
        return TLSConfig()
    spec = check.mapping(value, "tls", {"ca_file", "ssl_options", "ocsp_stapling"})
    ca_file = None
    if spec.get("ca_file") is not None:
        ca_file = check.string(spec["ca_file"], "tls.ca_file")
        try:
            bundle = read_bundle(ca_file, what="tls.ca_file")  # logs the certificates it skips
        except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise check.fail("tls.ca_file", f"cannot read {ca_file}: {reason}") from None
        if not bundle.certificates:
            why = f": {bundle.skipped[0]}" if bundle.skipped else ""
            raise check.fail("tls.ca_file", f"{ca_file} holds no {'usable ' if why else ''}PEM certificate{why}")
    ssl_options = SSL_OPTIONS_DEFAULT
    if "ssl_options" in spec:
        ssl_options = check.integer(spec["ssl_options"], "tls.ssl_options", 0, 3)
    ocsp_stapling = check.boolean(spec.get("ocsp_stapling", True), "tls.ocsp_stapling")
    return TLSConfig(ca_file, ssl_options, ocsp_stapling)


def _limits(check: _Checker, value: Any) -> Limits:
    if value is None:
        return Limits()
    spec = check.mapping(value, "limits", {"header_bytes", "body_bytes", "crl_bytes"})
    defaults = Limits()
    return Limits(
        header_bytes=check.integer(spec.get("header_bytes", defaults.header_bytes), "limits.header_bytes", 1024, 1 << 20),
        body_bytes=check.integer(spec.get("body_bytes", defaults.body_bytes), "limits.body_bytes", 0, 16 << 20),
        crl_bytes=check.integer(spec.get("crl_bytes", defaults.crl_bytes), "limits.crl_bytes", 1024, 256 << 20),
    )


def _group(
    check: _Checker, name: str, spec: dict[str, Any], path: str,
    interval: float, timeout: float, routes: Mapping[str, Route],
) -> Group:
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise check.fail(path, "group names are lower-case letters, digits and '_'")
    enabled = check.boolean(spec.get("enabled", True), f"{path}.enabled")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise check.fail(f"{path}.description", f"expected a string, got {_describe(description)}")
    route_value = spec.get("route", "defender")
    names = [route_value] if isinstance(route_value, str) else route_value
    if not isinstance(names, list) or not names:
        raise check.fail(f"{path}.route", f"expected a route name or a list of them, got {_describe(route_value)}")
    for i, rname in enumerate(names):
        if not isinstance(rname, str) or rname not in routes:
            where = f"{path}.route" if isinstance(route_value, str) else f"{path}.route[{i}]"
            raise check.fail(where, f"unknown route {_describe(rname)} (defined: {', '.join(sorted(routes))})")
    if len(set(names)) != len(names):
        raise check.fail(f"{path}.route", "a route is named twice")
    g_interval = check.duration(spec["interval"], f"{path}.interval") if "interval" in spec else interval
    g_timeout = check.duration(spec["timeout"], f"{path}.timeout") if "timeout" in spec else min(timeout, g_interval)
    if g_timeout > g_interval:
        raise check.fail(f"{path}.timeout", "must not exceed the group's interval")

    content = spec.get("content")
    if content is not None and content not in CONTENT_KINDS:
        raise check.fail(f"{path}.content", f"expected one of {', '.join(CONTENT_KINDS)}, got {_describe(content)}")
    group_expect = _expect(check, spec["expect"], f"{path}.expect") if "expect" in spec else NO_EXPECT
    if content is not None:  # `content:` is short for `expect: {content: ...}`
        group_expect = Expect(group_expect.statuses, group_expect.content or content, group_expect.body)
    targets_value = check.listing(spec.get("targets"), f"{path}.targets")
    targets = []
    seen: dict[str, int] = {}
    for i, item in enumerate(targets_value):
        target = _target(check, item, f"{path}.targets[{i}]", group_expect)
        if target.url in seen:
            raise check.fail(f"{path}.targets[{i}]",
                             f"{target.url} is listed twice (also as targets[{seen[target.url]}])")
        seen[target.url] = i
        targets.append(target)

    if "expected_roots" in spec and spec["expected_roots"] is not None:
        roots = frozenset(
            _fingerprint(check, fp, f"{path}.expected_roots[{i}]")
            for i, fp in enumerate(check.listing(spec["expected_roots"], f"{path}.expected_roots"))
        )
    elif name in PINNED_GROUPS or any(t.expect.content == "ctl" for t in targets):
        # For a trust list these are the roots its signer must chain to, not TLS pinning.
        roots = bundled_root_fingerprints()
    else:
        roots = frozenset()
    validate_maps = check.boolean(spec.get("validate_maps", name == "maps"), f"{path}.validate_maps")
    return Group(name, description, tuple(names), g_interval, g_timeout, tuple(targets), roots, validate_maps, content,
                 enabled)


def _expect(check: _Checker, value: Any, path: str) -> Expect:
    spec = check.mapping(value, path, _EXPECT_KEYS)
    statuses: list[int | str] = []
    if "status" in spec:
        for i, code in enumerate(check.listing(spec["status"], f"{path}.status")):
            where = f"{path}.status[{i}]"
            if isinstance(code, str) and re.fullmatch(r"[1-5]xx", code):
                statuses.append(code)
            else:
                if isinstance(code, str) and code.isdigit():
                    code = int(code)
                if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                    raise check.fail(where, f"expected an HTTP status (100-599) or a class such as 2xx, got "
                                            f"{_describe(code)}")
                statuses.append(code)
        if not statuses:
            raise check.fail(f"{path}.status", "expected at least one status")
    content = spec.get("content")
    if content is not None and content not in CONTENT_KINDS:
        raise check.fail(f"{path}.content", f"expected one of {', '.join(CONTENT_KINDS)}, got {_describe(content)}")
    body = None
    if "body" in spec:
        pattern = check.string(spec["body"], f"{path}.body")
        try:
            body = re.compile(pattern.encode())
        except re.error as exc:
            raise check.fail(f"{path}.body", f"not a valid regular expression: {exc}") from None
    return Expect(tuple(statuses), content, body)


def _target(check: _Checker, item: Any, path: str, group_expect: Expect = NO_EXPECT) -> Target:
    expect = group_expect
    if isinstance(item, str):
        url, pattern, source, region = item, None, CONFIG_SOURCE, None
    else:
        spec = check.mapping(item, path, {"url", "pattern", "source", "region", "expect"})
        if "expect" in spec:
            expect = _expect(check, spec["expect"], f"{path}.expect").merged_over(group_expect)
        if "url" not in spec:
            raise check.fail(path, "a target needs `url`")
        url, pattern = spec["url"], spec.get("pattern")
        if pattern is not None:
            pattern = check.string(pattern, f"{path}.pattern")
        source = check.string(spec.get("source", CONFIG_SOURCE), f"{path}.source")
        region = spec.get("region")
        if region is not None and (region not in REGIONS or region == "all"):
            raise check.fail(f"{path}.region", f"expected one of {', '.join(REGIONS[1:])}, got {_describe(region)}")
    url_path = f"{path}.url" if not isinstance(item, str) else path
    url = check.string(url, url_path)
    expected = "expected an http:// or https:// URL with a host name"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise check.fail(url_path, f"{expected}; the port is not a number from 1 to 65535 in {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise check.fail(url_path, f"{expected}, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise check.fail(url_path, "targets must not carry credentials")
    if parts.fragment:
        raise check.fail(url_path, f"{expected}; no #fragment")
    host = parts.hostname
    if not _valid_host(host):
        raise check.fail(url_path, f"{host!r} is not a valid host name")
    port = port or (443 if parts.scheme == "https" else 80)
    request_target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # One spelling per endpoint: `https://HOST:443` and `https://host/` are one
    # target (one job, one series), so a duplicate cannot hide behind spelling.
    target = Target("", "", parts.scheme, host, port, request_target, source, region, expect)
    normal = f"{parts.scheme}://{target.authority}{request_target}"
    return dataclasses.replace(target, url=normal, pattern=pattern or normal)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return len(host) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?", label) for label in host.rstrip(".").split(".")
    )


def _fingerprint(check: _Checker, value: Any, path: str) -> bytes:
    text = value.replace(":", "").strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", text):
        raise check.fail(path, f"expected a SHA-256 fingerprint (64 hex digits, colons allowed), got {_describe(value)}")
    return bytes.fromhex(text)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
