"""Routes as Windows finds them: bypass lists, PAC files, WPAD and fallback lists.

The probers know two kinds of route: direct, and one static HTTP proxy. This
module turns every other kind into those, per target URL, the way WinHTTP and
Defender do, and runs the attempts in their failover order:

- `proxy:` with `bypass:`: DIRECT for a URL the bypass list matches (WinHTTP
  semantics, see bypass_match), the proxy otherwise. A proxy that is down is
  not bypassed (WinHTTP has no fallback to direct for a named proxy).
- `pac:`: the script is fetched (on `pac_route:` or directly), kept with its
  validators and fetched again, conditionally, every `pac_interval`; it is
  evaluated per target URL in a sandbox (probes/pac.py) and the answer is
  cached per (route, URL, script version), never per probe. Its entries are
  tried in order; the next one is tried only when a proxy cannot be reached
  (`proxy_unreachable`), as WinHTTP fails over. The entry that carried the
  probe is reported (metrics.ROUTE_PROXY_INFO).
- `wpad: true`: the PAC URL is found by DNS: http://wpad.<domain>/wpad.dat for
  the search domain, walking up one label at a time while two or more labels
  remain (DNS devolution); the first name that resolves is used. DHCP option
  252 is not looked at.
- `fallback: [a, b, ...]`: the member routes in order, starting with the one
  that last carried a successful probe (Defender keeps the last proxy that
  worked); the next member is tried when a member cannot be used
  (MEMBER_FAILOVER: PAC unreachable or broken, proxy unreachable, connection
  refused, timed out or reset, name not resolved).

A PAC that cannot be fetched fails its route's probes with `pac_unreachable`
and a broken one with `pac_error`; neither ever becomes DIRECT unless a
`fallback:` list says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Iterator, Mapping
from urllib.parse import urlsplit

from . import metrics as m
from .config import Config, ProbeJob, Route, Target
from .metrics import PHASES
from .probes._http import Validators
from .probes.fetch import TLSPolicy, fetch
from .probes.env import ProbeEnv
from .probes.pac import MAX_SCRIPT, PacError, PacSandbox, PacTimeout, parse_result, proxy_label
from .probes.result import ProbeResult
from .reasons import Reason

log = logging.getLogger("exporter.routes")

PAC_FETCH_TIMEOUT = 10.0  # seconds for one fetch of a PAC file
PAC_RETRY_SECONDS = 15.0  # a failed fetch is tried again after this long
WPAD_FILE = "wpad.dat"
RESOLV_CONF = "/etc/resolv.conf"
MAX_PLANS = 65536  # evaluated (route, URL) answers kept

# Reasons after which WinHTTP tries the next entry of a PAC answer.
FAILOVER = frozenset({Reason.PROXY_UNREACHABLE})
# Reasons after which a fallback list tries its next member: the member's path cannot be used.
MEMBER_FAILOVER = FAILOVER | {
    Reason.PAC_UNREACHABLE, Reason.PAC_ERROR, Reason.CONNECT_REFUSED, Reason.CONNECT_TIMEOUT,
    Reason.CONNECTION_RESET, Reason.DNS_ERROR,
}


@dataclass(frozen=True)
class Hop:
    """One way to send a request: direct (proxy None) or through one proxy.
    `via` is the route that chose it (a fallback's member), `how` says why
    (e.g. "PAC entry 2 of 3", "bypass *.contoso.com")."""

    route: Route  # concrete: direct or static proxy, named after the job's route
    label: str  # DIRECT or host:port
    via: str
    how: str = ""


class RouteFailure(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------- bypass lists


def bypass_match(entries: tuple[str, ...], url: str) -> str | None:
    """The bypass entry that sends `url` DIRECT, or None.

    WinHTTP semantics (netsh winhttp set proxy bypass-list=, ProxyCfg): entries
    are host names or addresses, `*` a wildcard (`*.contoso.com`, `10.*`),
    optionally with a scheme (`https://host`) or a port (`host:8080`);
    `<local>` matches host names without a dot. Case does not matter."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    for entry in entries:
        if entry == "<local>":
            if "." not in host and ":" not in host:
                return entry
            continue
        pattern = entry
        want_scheme = None
        if "://" in pattern:
            want_scheme, _, pattern = pattern.partition("://")
        want_port = None
        if pattern.count(":") == 1 and pattern.rsplit(":", 1)[1].isdigit():
            pattern, _, port_text = pattern.rpartition(":")
            want_port = int(port_text)
        pattern = pattern.strip("[]")
        if want_scheme is not None and want_scheme != scheme:
            continue
        if want_port is not None and want_port != port:
            continue
        if fnmatch.fnmatchcase(host, pattern):
            return entry
    return None


# ----------------------------------------------------------------------------- WPAD


def search_domain(resolv_conf: str = RESOLV_CONF) -> str | None:
    """The first search domain of resolv.conf (the last `search` or `domain` line wins)."""
    try:
        text = Path(resolv_conf).read_text(errors="replace")
    except OSError:
        return None
    domain = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in ("search", "domain"):
            domain = fields[1].strip(".").lower()
    return domain or None


def wpad_candidates(domain: str) -> list[str]:
    """wpad.<domain>, then one label shorter each time while two labels remain:
    dept.corp.example.com -> wpad.dept.corp.example.com, wpad.corp.example.com,
    wpad.example.com (a single-label domain gives wpad.<domain> only)."""
    labels = [label for label in domain.strip(".").lower().split(".") if label]
    if not labels:
        return []
    out = []
    while True:
        out.append("wpad." + ".".join(labels))
        if len(labels) <= 2:
            return out
        labels = labels[1:]


# ----------------------------------------------------------------------------- PAC sources


@dataclass(frozen=True)
class PacScript:
    url: str
    text: str
    validators: Validators = Validators()  # a file:// script has none


@dataclass(frozen=True)
class PacFetch:
    """The last fetch of one route's PAC file (or WPAD discovery)."""

    url: str  # the PAC URL (WPAD: the one found; "" when none was found)
    ok: bool
    at: float
    duration: float
    detail: str = ""
    not_modified: bool = False


class PacSource:
    """One route's PAC script: fetched on demand, kept, refreshed every interval."""

    def __init__(self, route: Route, fetch_route: Route):
        self.route = route
        self.fetch_route = fetch_route
        self.script: PacScript | None = None
        self.last: PacFetch | None = None
        self._task: asyncio.Task | None = None

    def fresh(self, now: float) -> bool:
        if self.last is None:
            return False
        age = now - self.last.at
        return age < (self.route.pac_interval if self.last.ok else PAC_RETRY_SECONDS)

    async def current(self, env: ProbeEnv) -> PacScript:
        """The script to evaluate, or RouteFailure(pac_unreachable)."""
        if not self.fresh(time.time()):
            if self._task is None or self._task.done():
                # Its own task: a probe that gives up waiting does not cancel the fetch.
                self._task = asyncio.get_running_loop().create_task(self._refresh(env))
            await asyncio.shield(self._task)
        assert self.last is not None
        if not self.last.ok or self.script is None:
            raise RouteFailure(Reason.PAC_UNREACHABLE, self.last.detail)
        return self.script

    async def _refresh(self, env: ProbeEnv) -> None:
        started = time.time()
        try:
            url = await self._locate()
            self.last = await self._fetch(url, env, started)
        except RouteFailure as failure:
            self.last = PacFetch("", False, started, time.time() - started, failure.detail)
        except Exception as exc:  # noqa: BLE001 - a bug here must not take the route's probes with it
            log.exception("PAC fetch for route %s failed", self.route.name)
            self.last = PacFetch(self.route.pac or "", False, started, time.time() - started, f"PAC fetch failed: {exc}")
        if not self.last.ok:
            log.warning("route %s: %s", self.route.name, self.last.detail)

    async def _locate(self) -> str:
        assert self.route.pac is not None
        return self.route.pac

    async def _fetch(self, url: str, env: ProbeEnv, started: float) -> PacFetch:
        parts = urlsplit(url)
        if parts.scheme == "file":
            try:
                data = await asyncio.to_thread(_read_capped, parts.path)
            except OSError as exc:
                return PacFetch(url, False, started, time.time() - started,
                                f"cannot read the PAC file {parts.path}: {exc.strerror or exc}")
            if data is None:
                return PacFetch(url, False, started, time.time() - started,
                                f"the PAC file {parts.path} is larger than {MAX_SCRIPT} bytes")
            self.script = PacScript(url, _decode(data))
            return PacFetch(url, True, started, time.time() - started)
        cached = self.script if self.script is not None and self.script.url == url else None
        conditional = cached.validators.conditional() if cached is not None else []
        fetched = await fetch(url, self.fetch_route, env.connect_to, env.limits, timeout=PAC_FETCH_TIMEOUT,
                              headers=conditional, body_cap=MAX_SCRIPT, tls=TLSPolicy(env.ssl_context, env.trust),
                              errors=env.errors)
        failure, answer = fetched.failure, fetched.answer
        if failure is not None or answer is None:
            words = f"{failure.reason}: {failure.detail}" if failure is not None else "no answer"
            return PacFetch(url, False, started, time.time() - started, f"PAC file {url}: {words}")
        duration = time.time() - started
        if answer.status == 304 and cached is not None:
            return PacFetch(url, True, started, duration, not_modified=True)
        if answer.status != 200:
            return PacFetch(url, False, started, duration, f"PAC file {url}: HTTP {answer.status} {answer.reason_phrase}".rstrip())
        if answer.truncated:
            return PacFetch(url, False, started, duration, f"PAC file {url} is larger than {MAX_SCRIPT} bytes")
        self.script = PacScript(url, _decode(answer.body), answer.validators)
        return PacFetch(url, True, started, duration)


class WpadSource(PacSource):
    """A PAC source whose URL is found by DNS (WPAD), again on every refresh."""

    def __init__(self, route: Route, fetch_route: Route, resolv_conf: str = RESOLV_CONF):
        super().__init__(route, fetch_route)
        self.resolv_conf = resolv_conf

    async def _locate(self) -> str:
        domain = self.route.wpad_domain or search_domain(self.resolv_conf)
        if not domain:
            raise RouteFailure(Reason.PAC_UNREACHABLE,
                               f"WPAD: no search domain in {self.resolv_conf} and no wpad_domain configured")
        candidates = wpad_candidates(domain)
        loop = asyncio.get_running_loop()
        for host in candidates:
            try:
                await loop.getaddrinfo(host, 80)
            except OSError:
                continue
            return f"http://{host}/{WPAD_FILE}"
        raise RouteFailure(Reason.PAC_UNREACHABLE,
                           f"WPAD: none of {', '.join(candidates)} resolves (DHCP option 252 is not used)")


def _read_capped(path: str) -> bytes | None:
    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT + 1)
    return None if len(data) > MAX_SCRIPT else data


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ----------------------------------------------------------------------------- the route book


ProbeFn = Callable[[ProbeJob, ProbeEnv], Awaitable[ProbeResult]]


class RouteBook:
    """Per configuration: the PAC sources, evaluated answers and last-known-good members."""

    def __init__(self, config: Config, *, sandbox: PacSandbox | None = None, trust=None,
                 resolv_conf: str = RESOLV_CONF):
        self.config = config
        self._trust = trust
        self.env: ProbeEnv | None = None  # for PAC fetches outside a probe (CRL routes): the probes' env
        self.routes: Mapping[str, Route] = config.routes
        self.sandbox = sandbox or PacSandbox()
        self.sources: dict[str, PacSource] = {}
        for route in self.routes.values():
            fetch_route = self.routes[route.pac_route] if route.pac_route else Route(f"{route.name} (PAC)")
            if route.kind == "pac":
                self.sources[route.name] = PacSource(route, dataclasses.replace(fetch_route, name=route.name))
            elif route.kind == "wpad":
                # WPAD files are fetched directly (the discovery is on the local network).
                self.sources[route.name] = WpadSource(route, Route(route.name), resolv_conf)
        # (route, url) -> (script digest, entries or the PacError's words)
        self._answers: OrderedDict[tuple[str, str], tuple[str, tuple | str]] = OrderedDict()
        self._pending: dict[tuple, asyncio.Future] = {}  # evaluations under way
        self._stalled: dict[str, str] = {}  # script digest -> why: a script that ran past its bound
        self.last_good: dict[str, str] = {}  # fallback route -> member that last carried a success
        self.evaluations: dict[tuple[str, str], int] = {}  # (route, ok|error) -> count

    def close(self) -> None:
        self.sandbox.close()

    # ------------------------------------------------------------------ facts about routes

    def configured(self, route: Route) -> bool:
        """Has the route any proxy configuration (static proxy, PAC, WPAD)?"""
        if route.kind == "fallback":
            return any(self.configured(self.routes[m]) for m in route.fallback)
        return route.kind != "direct"

    def members(self, route: Route) -> list[Route]:
        """The routes a job on `route` tries, in order (fallback: last good first)."""
        if route.kind != "fallback":
            return [route]
        members = [self.routes[name] for name in route.fallback]
        good = self.last_good.get(route.name)
        if good is not None:
            members.sort(key=lambda r: r.name != good)
        return members

    # ------------------------------------------------------------------ planning

    def _env(self, env: ProbeEnv | None) -> ProbeEnv:
        if env is not None:
            self.env = self.env or env
            return env
        if self.env is None:
            self.env = ProbeEnv.from_config(self.config, trust=self._trust)
        return self.env

    async def plan(self, route: Route, url: str, env: ProbeEnv | None = None, *,
                   name: str | None = None) -> tuple[Hop, ...]:
        """The hops for `url` on a non-fallback `route`, in the order to try them,
        named `name` (the job's route). RouteFailure when the route cannot say."""
        name = name or route.name
        if route.kind == "direct":
            return (Hop(Route(name), "DIRECT", route.name),)
        if route.kind == "proxy":
            entry = bypass_match(route.bypass, url) if route.bypass else None
            if entry is not None:
                return (Hop(Route(name), "DIRECT", route.name, f"bypass list entry {entry}"),)
            return (Hop(Route(name, route.proxy), proxy_label(route.proxy), route.name),)
        source = self.sources[route.name]
        script = await source.current(self._env(env))
        entries = await self._answer(route, source, script, url)
        count = len(entries)
        return tuple(
            Hop(Route(name, entry.proxy), entry.label, route.name,
                f"{'WPAD' if route.kind == 'wpad' else 'PAC'} {script.url} entry {i + 1} of {count}")
            for i, entry in enumerate(entries))

    async def _answer(self, route: Route, source: PacSource, script, url: str):
        from .probes.pac import script_digest

        digest = script_digest(script.text)
        key = (route.name, url)
        hit = self._answers.get(key)
        if hit is None or hit[0] != digest:
            # One evaluation per (route, URL, script), however many probes ask at once.
            pending = self._pending.get((key, digest))
            if pending is None:
                pending = asyncio.ensure_future(self._evaluate(route.name, script, digest, url))
                self._pending[(key, digest)] = pending
                pending.add_done_callback(lambda _: self._pending.pop((key, digest), None))
            hit = (digest, await asyncio.shield(pending))
            self._answers[key] = hit
            while len(self._answers) > MAX_PLANS:
                self._answers.popitem(last=False)
        self._answers.move_to_end(key)
        if isinstance(hit[1], str):
            raise RouteFailure(Reason.PAC_ERROR, f"PAC {script.url}: {hit[1]}")
        return hit[1]

    async def _evaluate(self, route: str, script, digest: str, url: str) -> tuple | str:
        """The parsed answer for `url`, or the PacError's words."""
        try:
            if digest in self._stalled:
                raise PacError(self._stalled[digest])
            value = await self.sandbox.evaluate(script.text, url, urlsplit(url).hostname or "")
            result: tuple | str = parse_result(value)
            self._count(route, "ok")
        except PacTimeout as exc:
            # A script that loops for one URL is broken: do not spend a second on every other.
            self._stalled[digest] = f"the PAC script ran past its bound once ({exc})"
            result = str(exc)
            self._count(route, "error")
        except PacError as exc:
            result = str(exc)
            self._count(route, "error")
        return result

    def _count(self, route: str, result: str) -> None:
        self.evaluations[(route, result)] = self.evaluations.get((route, result), 0) + 1

    async def hops_for(self, route: Route, url: str, env: ProbeEnv | None = None) -> tuple[Hop, ...]:
        """The hops `route` would use for `url` (a CRL or AIA fetch), in failover order: those of
        its first member (fallback: last good first) that can say; RouteFailure if none can."""
        failure: RouteFailure | None = None
        for member in self.members(route):
            try:
                return await self.plan(member, url, env, name=route.name)
            except RouteFailure as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    # ------------------------------------------------------------------ running a job

    async def run(self, job: ProbeJob, env: ProbeEnv, probe: ProbeFn) -> tuple[ProbeResult, Hop | None]:
        """Probe `job` over its route's hops in failover order: (result, the hop that carried it,
        or the last one tried; None when no hop could be chosen)."""
        route = job.route
        started_at = time.time()
        began = time.monotonic()
        deadline = began + job.budget.probe
        notes: list[str] = []
        result: ProbeResult | None = None
        hop: Hop | None = None
        fallback = route.kind == "fallback"
        for member in self.members(route):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    hops = await self.plan(member, job.target.url, env, name=route.name)
            except (RouteFailure, TimeoutError) as exc:
                failure = exc if isinstance(exc, RouteFailure) else RouteFailure(
                    Reason.PAC_UNREACHABLE, f"route {member.name}: the PAC file did not arrive within the probe's timeout")
                result, hop = _failed(failure, started_at), None
                notes.append(f"{member.name}: {failure.reason}: {failure.detail}")
                if fallback:
                    continue
                break
            for i, candidate in enumerate(hops):
                now = time.monotonic()
                if now >= deadline:
                    break
                # The next proxy gets what is left of the probe's deadline.
                sub = dataclasses.replace(job, route=candidate.route, spent=job.spent + now - began)
                result, hop = await probe(sub, env), candidate
                if result.success or result.reason not in FAILOVER:
                    break
                if len(hops) > 1:
                    notes.append(f"{candidate.label} ({candidate.how}): {result.reason}: {result.detail}")
            assert result is not None
            if result.success or not fallback or result.reason not in MEMBER_FAILOVER:
                break
            if len(hops) == 1:
                notes.append(f"{member.name} ({hop.label if hop else '?'}): {result.reason}: {result.detail}")
        if result is None:
            result, hop = _failed(RouteFailure(Reason.TIMEOUT, "no time left to try the route"), started_at), None
        if fallback and result.success and hop is not None:
            self.last_good[route.name] = hop.via
        if not result.success and len(notes) > 1:
            result = dataclasses.replace(result, detail="; ".join(notes))
        return result, hop

    # ------------------------------------------------------------------ `check --routes`

    async def describe(self, route: Route, target: Target, env: ProbeEnv | None = None) -> list[tuple[str, str]]:
        """[(member route, "PROXY a:8080; DIRECT" or the failure)] for `target` on `route`."""
        out = []
        members = [self.routes[n] for n in route.fallback] if route.kind == "fallback" else [route]
        for member in members:
            try:
                hops = await self.plan(member, target.url, env)
                text = "; ".join("DIRECT" if h.route.proxy is None else f"PROXY {h.label}" for h in hops)
                how = hops[0].how if len(hops) == 1 and hops[0].how.startswith("bypass") else ""
                out.append((member.name, text + (f" ({how})" if how else "")))
            except RouteFailure as failure:
                out.append((member.name, f"{failure.reason}: {failure.detail}"))
        return out

    # ------------------------------------------------------------------ metrics (no I/O)

    def samples(self) -> Iterator[tuple]:
        """The PAC series as (spec, label values, value) samples (exposition.Sample); no I/O."""
        for name, source in sorted(self.sources.items()):
            if source.last is None:
                continue
            yield m.PAC_FETCH_SUCCESS, (name, source.last.url), source.last.ok
            yield m.PAC_FETCH_DURATION, (name, source.last.url), source.last.duration
            for result in ("ok", "error"):
                yield m.PAC_EVALUATIONS, (name, result), self.evaluations.get((name, result), 0)


def static_label(route: Route) -> str:
    return proxy_label(route.proxy)


def _failed(failure: RouteFailure, started_at: float) -> ProbeResult:
    return ProbeResult(
        success=False, reason=failure.reason, started_at=started_at, duration=time.time() - started_at,
        phases=tuple((p, 0.0) for p in PHASES), detail=failure.detail,
    )


# ----------------------------------------------------------------------------- host settings


def describe_route(route: Route, routes: Mapping[str, Route]) -> str:
    """A route as the host side describes settings: 'proxy host:port', 'pac URL', 'wpad', 'direct'.
    A fallback list is described by its first member that is not direct (what Defender uses first)."""
    if route.kind == "fallback":
        for name in route.fallback:
            text = describe_route(routes[name], routes)
            if text != "direct":
                return text
        return "direct"
    if route.kind == "proxy":
        return f"proxy {proxy_label(route.proxy)}"
    if route.kind == "pac":
        return f"pac {route.pac}"
    return route.kind  # wpad | direct


def host_route_checks(snapshot, routes: Mapping[str, Route]) -> tuple[tuple[str, str, str], ...]:
    """(route, expected, found) for the `defender` and `system` routes, where the endpoint's
    settings were read. Defender: its policy (ProxyServer, else ProxyPacUrl, else direct). System:
    WinHTTP's advanced settings if any, else `netsh winhttp show proxy`'s proxy, else SYSTEM's
    Internet settings (KB2623724's order), else direct."""
    out = []
    defender = getattr(snapshot, "defender_proxy", None)
    if defender is not None and "defender" in routes:
        out.append(("defender", describe_route(routes["defender"], routes), defender.describe()))
    winhttp = getattr(snapshot, "winhttp", None)
    advproxy = getattr(snapshot, "winhttp_advproxy", None)
    internet = getattr(snapshot, "system_internet", None)
    if "system" in routes and (winhttp is not None or advproxy is not None or internet is not None):
        if advproxy is not None and advproxy.configured:
            found = advproxy.describe()
        elif winhttp is not None and winhttp.configured and winhttp.proxy:
            from .hostside.proxysettings import ProxySettings

            found = ProxySettings(parsed=True, proxy=winhttp.proxy).describe()
        elif internet is not None and internet.configured:
            found = internet.describe()
        else:
            found = "direct"
        out.append(("system", describe_route(routes["system"], routes), found))
    return tuple(out)
