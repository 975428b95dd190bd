"""Request a URL over a route: the one way the exporter speaks HTTP.

    fetched = await fetch("http://crl.microsoft.com/pki/crl/products/x.crl", route,
                          connect_to, limits, timeout=5.0, body_cap=limits.crl_bytes, redirects=3)
    fetched.failure      # None, or a ProbeFailure with its one documented reason
    fetched.answer       # status, headers and the body (at most body_cap bytes kept)

Direct, or through the route's proxy: http:// URLs in absolute form (with
the proxy's credentials), https:// URLs through a CONNECT tunnel, as WinHTTP
does. Every step is bounded (the timeout covers all of it, redirects
included; headers and body are capped). An answer the proxy made in the
endpoint's place is a failure with a proxy reason (proxy_answer.judge), so a
caller never mistakes it for the endpoint's. The HTTP probers, the CRL
fetches and the AIA fetches all come through here; OCSP GET/POST can too
(method and a small body).

Redirects are followed only when asked (`redirects` = how many), on the same
route and through the same proxy, never from https to http; see
docs/maps-validation.md for what Windows' CryptNet does.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__
from ..config import ConnectTo, Limits, ProxyURL, Route
from ..reasons import Reason
from . import proxy_answer
from ._http import HTTPAnswer, answer_of, leftover, new_parser, read_body, read_response, request_bytes
from ._net import ProbeFailure, ProbeState, Stream, UnexpectedErrors, dial, redirect, start_tls, translate
from ._tls import TrustStore, presented_chain, tls_facts
from .result import TLSFacts

USER_AGENT = f"defender-connectivity-exporter/{__version__}"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# CryptNet fetches CRLs, CA certificates and CTLs through WinHTTP (KB 887196),
# whose redirect policy by default follows redirects except from https to http
# (WINHTTP_OPTION_REDIRECT_POLICY_DEFAULT = ..._DISALLOW_HTTPS_TO_HTTP), at most
# 10 of them (WinHttpRequestOption_MaxAutomaticRedirects). Whether CryptNet
# changes either is not documented: we follow WinHTTP's defaults, within the
# fetch's one timeout.
CRYPTNET_REDIRECTS = 10
# The most AIA chain building may take inside a fetch (whose own timeout comes first).
AIA_TIMEOUT = 15.0
# The most of a proxy's refusal of CONNECT that is read: enough for its error page's signature.
_CONNECT_ANSWER_BYTES = proxy_answer.SNIFF_BYTES


@dataclass(frozen=True)
class TLSPolicy:
    """How https:// URLs are checked: handshake without verification, then the
    chain verified against `trust` for the host name (see _tls.py)."""

    context: ssl.SSLContext
    trust: TrustStore
    # Fetches a presented chain's missing issuers (exporter.aia.IssuerCache, on the system route),
    # as Windows' chain engine does; None: no AIA chain building.
    aia: Any = None


@dataclass(frozen=True)
class Fetched:
    """What one fetch came to. `answer` is set whenever a complete answer
    arrived, also when it is a failure (the proxy's own answer); a failure
    before or while reading it leaves it None."""

    url: str  # the URL that gave the answer: the last one after redirects
    answer: HTTPAnswer | None
    failure: ProbeFailure | None
    peer: str = ""  # address connected to (the proxy's when there is one)
    proxy_status: int = 0  # the proxy's answer to CONNECT; 0 without a tunnel
    tls: TLSFacts | None = None
    redirected_from: tuple[str, ...] = ()  # URLs that redirected, in order

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class _Progress:
    """What is known of the fetch so far, for the result of a failure."""

    url: str
    peer: str = ""
    proxy_status: int = 0
    tls: TLSFacts | None = None
    answer: HTTPAnswer | None = None
    hops: list[str] = field(default_factory=list)


async def fetch(
    url: str,
    route: Route,
    connect_to: tuple[ConnectTo, ...],
    limits: Limits,
    *,
    timeout: float,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    body_cap: int | None = None,
    read_oversized: bool = False,
    redirects: int = 0,
    tls: TLSPolicy | None = None,
    state: ProbeState | None = None,
    errors: UnexpectedErrors | None = None,
) -> Fetched:
    """Request `url` over `route`; never raises (but for cancellation).

    body_cap: bytes of body kept (default limits.body_bytes); a longer body is
    `truncated`, and one announced longer is not read unless read_oversized.
    redirects: how many redirects to follow (0: a 3xx is the answer).
    errors: the caller's log of unexpected errors (_net.UnexpectedErrors) when
    no `state` is given (a state carries its own)."""
    if state is None:
        state = ProbeState(target=url) if errors is None else ProbeState(target=url, errors=errors)
    progress = _Progress(url)
    cap = limits.body_bytes if body_cap is None else body_cap
    try:
        async with asyncio.timeout(timeout):
            while True:
                answer = await _once(progress, route, connect_to, limits, state, method, headers, body, cap,
                                     read_oversized, tls)
                location = answer.header("location")
                if answer.status not in REDIRECT_STATUSES or not location or len(progress.hops) >= redirects:
                    break
                target = urljoin(progress.url, location.strip())
                scheme = urlsplit(target).scheme
                if scheme not in ("http", "https") or (urlsplit(progress.url).scheme, scheme) == ("https", "http") \
                        or (scheme == "https" and tls is None):
                    break  # not followed (WinHTTP's policy, or no TLS policy given): the 3xx is the answer
                state.log(f"redirect {answer.status} -> {target}")
                progress.hops.append(progress.url)
                progress.url = target
                if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                    method, body = "GET", b""
        failure = None
    except Exception as exc:  # noqa: BLE001 - every failure becomes a documented reason
        failure = translate(exc, state)
    state.clock.stop()
    return Fetched(progress.url, progress.answer, failure, progress.peer, progress.proxy_status, progress.tls,
                   tuple(progress.hops))


async def _once(progress: _Progress, route: Route, connect_to: tuple[ConnectTo, ...], limits: Limits,
                state: ProbeState, method: str, headers: Sequence[tuple[str, str]], body: bytes, cap: int,
                read_oversized: bool, tls: TLSPolicy | None) -> HTTPAnswer:
    parts = urlsplit(progress.url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ProbeFailure(Reason.HTTP_ERROR, f"cannot fetch {progress.url}: only http:// and https:// URLs")
    secure = parts.scheme == "https"
    if secure and tls is None:
        raise ProbeFailure(Reason.HTTP_ERROR, f"cannot fetch {progress.url}: no TLS policy given for https")
    port = parts.port or (443 if secure else 80)
    progress.answer = None
    progress.proxy_status = 0
    stream = await open_stream(host, port, route, connect_to, limits, state, tunnel=secure)
    try:
        progress.peer, progress.proxy_status = stream.peer, stream.proxy_status
        if secure:
            assert tls is not None
            ssl_object = await start_tls(stream, host, tls.context, state)
            # The `tls` phase runs on through the chain check (part of the handshake
            # on Windows, and in Go's for blackbox_exporter) until the request is sent:
            # the phases then add up to the probe's duration.
            presented = presented_chain(ssl_object)
            verdict = tls.trust.verify(presented, host)
            completion = None
            if verdict.reason is Reason.TLS_UNTRUSTED and tls.aia is not None:
                # The fetch's own timeout still bounds this (it is inside it).
                completion = await tls.aia.complete(
                    presented, lambda chain: tls.trust.verify(chain, host).reason is None, AIA_TIMEOUT)
                if completion.added:
                    verdict = tls.trust.verify(presented + list(completion.added), host)
                state.log(f"AIA: {len(completion.added)} issuer(s) from {', '.join(completion.fetched_from) or '-'}"
                          + "".join(f"; {t}" for t in (completion.error, completion.note) if t))
            progress.tls = tls_facts(ssl_object, presented, verdict, tls.trust.facts, completion)
            if verdict.reason is not None:
                # Windows would stop here; we stop too, with the chain on record.
                raise ProbeFailure(verdict.reason, verdict.error)
            root = progress.tls.root
            state.log(f"chain verified to {root.subject if root else '?'}")
        authority = parts.netloc.rpartition("@")[2]
        absolute = stream.proxy is not None and not secure
        target = _absolute(parts) if absolute else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fields = [("Host", authority), ("User-Agent", USER_AGENT), ("Accept", "*/*"), ("Connection", "close")]
        if absolute and stream.proxy is not None:
            fields += proxy_authorization(stream.proxy)
        fields += headers
        parser = new_parser(limits)
        await stream.conn.send(request_bytes(parser, method, target, fields, body))
        # The clock first: the log line (a trace callback) must not delay the phase's start.
        state.clock.begin("processing", "waiting for the first byte of the response")
        state.log(f"sent {method} {target} (Host: {authority})")
        response = await read_response(stream.conn, parser, state, limits.header_bytes)
        state.log(f"answer {response.status_code} {response.reason.decode('latin-1')}")
        # Through a proxy, an error's body may be the proxy's error page: keep its start to tell.
        keep = cap if stream.proxy is None or response.status_code < 400 else max(cap, proxy_answer.SNIFF_BYTES)
        kept, got, truncated = await read_body(stream.conn, parser, response, keep, read_oversized=read_oversized)
        answer = progress.answer = answer_of(response, kept[:cap], got, truncated or len(kept) > cap)
        state.clock.stop()
        if stream.proxy is not None and (made := proxy_answer.judge(answer, tunnel=secure)) is not None:
            reason, sign = made
            raise ProbeFailure(reason, f"the proxy answered {answer.status} {answer.reason_phrase} itself ({sign})",
                               http_status=answer.status)
        return answer
    finally:
        stream.abort()  # a probe owes the peer no goodbye


def _absolute(parts) -> str:
    """The absolute-form request target (RFC 9112 3.2.2): no user info, no fragment."""
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")


# ----------------------------------------------------------------------------- the route


async def open_stream(
    host: str, port: int, route: Route, connect_to: tuple[ConnectTo, ...], limits: Limits,
    state: ProbeState, *, tunnel: bool,
) -> Stream:
    """A TCP stream to host:port on a route: direct, or to the route's proxy,
    then (tunnel=True) through an HTTP CONNECT tunnel."""
    proxy = route.proxy
    if proxy is None:
        to_host, to_port = redirect(host, port, connect_to)
        if (to_host, to_port) != (host, port):
            state.log(f"connect_to: {host}:{port} -> {to_host}:{to_port}")
        state.log(f"route {route.name}: direct")
        return await dial(to_host, to_port, state, what="host")
    state.log(f"route {route.name}: proxy {proxy.redacted()}")
    state.dialing_proxy = True
    to_host, to_port = redirect(proxy.host, proxy.port, connect_to)
    stream = await dial(to_host, to_port, state, what="proxy")
    state.dialing_proxy = False
    stream.proxy = proxy
    if tunnel:
        try:
            await _connect_tunnel(stream, host, port, proxy, limits, state)
        except BaseException:
            stream.abort()  # the caller never gets this stream to close
            raise
    return stream


def proxy_authorization(proxy: ProxyURL) -> list[tuple[str, str]]:
    if proxy.username is None:
        return []
    token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
    return [("Proxy-Authorization", f"Basic {token}")]


async def _connect_tunnel(
    stream: Stream, host: str, port: int, proxy: ProxyURL, limits: Limits, state: ProbeState,
) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    state.clock.begin("proxy_connect", "waiting for the proxy's answer to CONNECT")
    parser = new_parser(limits)
    fields = [("Host", authority), ("User-Agent", USER_AGENT), *proxy_authorization(proxy)]
    await stream.conn.send(request_bytes(parser, "CONNECT", authority, fields))
    try:
        response = await read_response(stream.conn, parser, state, limits.header_bytes, first_byte_phase=None)
    except ProbeFailure as failure:
        raise ProbeFailure(Reason.PROXY_ERROR, f"proxy's answer to CONNECT: {failure.detail}") from None
    stream.proxy_status = status = response.status_code
    reason_phrase = response.reason.decode("latin-1")
    state.log(f"CONNECT {authority} -> {status} {reason_phrase}")
    if 200 <= status < 300:
        stream.conn.unread(leftover(parser))  # the tunnel's first bytes, if they came with the answer
        return
    answer = answer_of(response)
    if status != 407 and answer.header("x-squid-error") is None:
        # The body may be the proxy's error page, which tells a refusal from an error;
        # a proxy that never ends it must not turn the refusal into a timeout.
        try:
            async with asyncio.timeout(0.5):
                kept, got, truncated = await read_body(stream.conn, parser, response, _CONNECT_ANSWER_BYTES,
                                                       read_oversized=True)
            answer = answer_of(response, kept, got, truncated)
        except (ProbeFailure, TimeoutError, OSError):
            pass
    detail = f"proxy answered CONNECT {authority} with {status} {reason_phrase}".rstrip()
    made = proxy_answer.judge(answer, tunnel=False)
    if made is not None:
        detail += f" ({made[1]})"
    if status == 407 or (made is not None and made[0] == Reason.PROXY_AUTH_REQUIRED):
        raise ProbeFailure(Reason.PROXY_AUTH_REQUIRED, detail, http_status=status)
    if status == 403 or (made is not None and made[0] == Reason.PROXY_DENIED):
        raise ProbeFailure(Reason.PROXY_DENIED, detail, http_status=status)
    raise ProbeFailure(Reason.PROXY_ERROR, detail, http_status=status)
