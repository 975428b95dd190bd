"""MAPS verdicts: the findings, the causes, the hresults and the remedies.

Part of the public contract (the `reason`, `hresult` and `cause` labels of
defender_maps_validation_info). One table maps every reason a MAPS verdict
can carry to the hresult `MpCmdRun -ValidateMapsConnection` would print and to
a cause from the closed set below. Each row says whether Microsoft's article
documents it or whether we inferred it from the WinHTTP error list
(hresult = 0x80070000 | WinHTTP error code; HTTP statuses as 0x80190000 | status).
docs/maps-validation.md renders the same table; a test keeps them in step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .reasons import Reason


class Finding(enum.StrEnum):
    """Reasons of a MAPS verdict beyond the probe's own (revocation and pinning)."""

    CERT_REVOKED = "cert_revoked"
    CRL_UNREACHABLE = "crl_unreachable"
    CRL_INVALID = "crl_invalid"
    CRL_STALE = "crl_stale"
    TLS_INTERCEPTED = "tls_intercepted"


class Cause(enum.StrEnum):
    WINHTTP_PROXY_MISSING = "winhttp_proxy_missing"
    CRL_BLOCKED = "crl_blocked"
    TLS_INSPECTION = "tls_inspection"
    CERTIFICATE_INVALID = "certificate_invalid"
    CERT_REVOKED = "cert_revoked"
    CRL_INVALID = "crl_invalid"
    FIREWALL_BLOCKED = "firewall_blocked"
    DNS_FAILURE = "dns_failure"
    PROXY_AUTH = "proxy_auth"
    PROXY_DENIED = "proxy_denied"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"


@dataclass(frozen=True)
class VerdictRow:
    reason: str
    hresult: str
    winhttp_name: str
    cause: Cause
    documented: bool  # True: Microsoft's article names this hresult for this situation


_ARTICLE_HRESULT = "0x80072F8F"  # ERROR_WINHTTP_SECURE_FAILURE, the article's example

# reason -> hresult -> cause. crl_unreachable's cause depends on the routes
# (winhttp_proxy_missing or crl_blocked, see maps.py); its row names the first.
VERDICT_TABLE: dict[str, VerdictRow] = {
    row.reason: row
    for row in (
        VerdictRow(Reason.DNS_ERROR, "0x80072EE7", "ERROR_WINHTTP_NAME_NOT_RESOLVED", Cause.DNS_FAILURE, False),
        VerdictRow(Reason.CONNECT_REFUSED, "0x80072EFD", "ERROR_WINHTTP_CANNOT_CONNECT", Cause.FIREWALL_BLOCKED, False),
        VerdictRow(Reason.CONNECT_TIMEOUT, "0x80072EE2", "ERROR_WINHTTP_TIMEOUT", Cause.FIREWALL_BLOCKED, False),
        VerdictRow(Reason.CONNECTION_RESET, "0x80072EFE", "ERROR_WINHTTP_CONNECTION_ERROR", Cause.FIREWALL_BLOCKED, False),
        VerdictRow(Reason.PROXY_UNREACHABLE, "0x80072EFD", "ERROR_WINHTTP_CANNOT_CONNECT", Cause.FIREWALL_BLOCKED, False),
        VerdictRow(Reason.PROXY_AUTH_REQUIRED, "0x80190197", "HTTP 407 Proxy Authentication Required", Cause.PROXY_AUTH, False),
        VerdictRow(Reason.PROXY_DENIED, "0x80190193", "HTTP 403 Forbidden (from the proxy)", Cause.PROXY_DENIED, False),
        VerdictRow(Reason.PROXY_ERROR, "0x80072F78", "ERROR_WINHTTP_INVALID_SERVER_RESPONSE", Cause.HTTP_ERROR, False),
        VerdictRow(Reason.TLS_HANDSHAKE_ERROR, "0x80072F7D", "ERROR_WINHTTP_SECURE_CHANNEL_ERROR", Cause.FIREWALL_BLOCKED, False),
        VerdictRow(Reason.TLS_UNTRUSTED, "0x80072F0D", "ERROR_WINHTTP_SECURE_INVALID_CA", Cause.CERTIFICATE_INVALID, False),
        VerdictRow(Reason.TLS_HOSTNAME_MISMATCH, "0x80072F06", "ERROR_WINHTTP_SECURE_CERT_CN_INVALID", Cause.CERTIFICATE_INVALID, False),
        VerdictRow(Reason.TLS_EXPIRED, "0x80072F05", "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID", Cause.CERTIFICATE_INVALID, False),
        VerdictRow(Reason.TLS_NOT_YET_VALID, "0x80072F05", "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID", Cause.CERTIFICATE_INVALID, False),
        VerdictRow(Reason.HTTP_ERROR, "0x80072F78", "ERROR_WINHTTP_INVALID_SERVER_RESPONSE", Cause.HTTP_ERROR, False),
        VerdictRow(Reason.TIMEOUT, "0x80072EE2", "ERROR_WINHTTP_TIMEOUT", Cause.TIMEOUT, False),
        VerdictRow(Finding.CRL_UNREACHABLE, _ARTICLE_HRESULT, "ERROR_WINHTTP_SECURE_FAILURE", Cause.WINHTTP_PROXY_MISSING, True),
        VerdictRow(Finding.CERT_REVOKED, "0x80072F8A", "ERROR_WINHTTP_SECURE_CERT_REVOKED", Cause.CERT_REVOKED, False),
        VerdictRow(Finding.CRL_INVALID, "0x80072F19", "ERROR_WINHTTP_SECURE_CERT_REV_FAILED", Cause.CRL_INVALID, False),
        VerdictRow(Finding.CRL_STALE, "0x80072F19", "ERROR_WINHTTP_SECURE_CERT_REV_FAILED", Cause.CRL_INVALID, False),
        VerdictRow(Finding.TLS_INTERCEPTED, "0x80072F8F", "ERROR_WINHTTP_SECURE_FAILURE", Cause.TLS_INSPECTION, False),
    )
}

# hresults the article itself prints for the missing WinHTTP proxy.
ARTICLE_HRESULTS = ("0x80070006", "0x80072F8F", "0x80072EFE")

_WINHTTP_PROXY = (
    "Configure the system-wide WinHTTP proxy so that the operating system can fetch certificate "
    "revocation lists: `netsh winhttp set proxy <proxy>:<port>` (or import the browser's settings with "
    "`netsh winhttp import proxy source=ie`), then re-run `MpCmdRun -ValidateMapsConnection`.")
_DISCONNECTED = (
    "On a disconnected network, redirect the Microsoft Automatic Update URL to an internal server that "
    "fetches the certificate trust list (CTL) files from a machine with internet access.")
_SSLOPTIONS = (
    "Work-around, not best practice: HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows Defender\\Spynet\\"
    "SSLOptions = 2 switches off CRL checks for cloud reporting (SPYNET) only, 0 also switches off "
    "pinning; either weakens the protection of the MAPS connection.")

REMEDIES: dict[Cause, str] = {
    Cause.WINHTTP_PROXY_MISSING: " ".join((_WINHTTP_PROXY, _DISCONNECTED, _SSLOPTIONS)),
    Cause.CRL_BLOCKED: (
        "Allow plain HTTP (port 80) to the certificate revocation URLs (http://www.microsoft.com/pkiops/crl/, "
        "http://crl.microsoft.com/pki/crl/products, …) on the path that reaches MAPS. " + _DISCONNECTED
        + " " + _SSLOPTIONS),
    Cause.TLS_INSPECTION: (
        "Exclude the MAPS and sample-submission hosts (including *.blob.core.windows.net) from TLS "
        "inspection on the proxy or firewall: Defender pins Microsoft's roots, so a re-signed chain fails. "
        + _SSLOPTIONS),
    Cause.CERTIFICATE_INVALID: (
        "The server's certificate is not valid for this host (expired, not yet valid, wrong name or "
        "untrusted issuer): check the clock, the trusted root certificates (Automatic Root Certificates "
        "Update from ctldl.windowsupdate.com) and whether something on the path answers in Microsoft's place."),
    Cause.CERT_REVOKED: (
        "A certificate of the presented chain is revoked: something on the path presents a chain that "
        "Microsoft no longer stands behind. Find the device answering in Microsoft's place."),
    Cause.CRL_INVALID: (
        "The revocation list fetched is invalid or out of date: a cache or proxy on the path may serve a "
        "stale or altered copy. Exclude the CRL URLs from caching, or repair the CTL/CRL mirror."),
    Cause.FIREWALL_BLOCKED: (
        "A firewall or filter blocks the connection: allow TCP 443 to the MAPS hosts (*.wdcp.microsoft.com, "
        "*.wdcpalt.microsoft.com, *.wd.microsoft.com) on the Defender route."),
    Cause.DNS_FAILURE: "The MAPS host name does not resolve: check the DNS servers and any DNS filtering.",
    Cause.PROXY_AUTH: (
        "The proxy asks for authentication, which the Defender service and the operating system's CRL "
        "fetch (both running as SYSTEM) cannot give: allow the Defender endpoints and the certificate "
        "revocation URLs without authentication for machine accounts."),
    Cause.PROXY_DENIED: "The proxy's policy denies the MAPS hosts: add them to its allow list.",
    Cause.TIMEOUT: "The connection is too slow or stalls: check the proxy's and the uplink's load.",
    Cause.HTTP_ERROR: "The MAPS service or a proxy gave an invalid answer: check the proxy's logs.",
}


# Rows whose cause assess.py chooses from the situation: crl_unreachable from the
# routes, an untrusted or misnamed chain from pinning (an intercepted chain).
ALTERNATE_CAUSES: dict[str, tuple[Cause, ...]] = {
    str(Finding.CRL_UNREACHABLE): (Cause.WINHTTP_PROXY_MISSING, Cause.CRL_BLOCKED, Cause.PROXY_AUTH),
    str(Reason.TLS_UNTRUSTED): (Cause.CERTIFICATE_INVALID, Cause.TLS_INSPECTION),
    str(Reason.TLS_HOSTNAME_MISMATCH): (Cause.CERTIFICATE_INVALID, Cause.TLS_INSPECTION),
}


def row_source(row: VerdictRow) -> str:
    if row.documented:
        return "documented by the article"
    if row.hresult.startswith("0x8019"):
        return "our inference (HTTP status as an hresult, FACILITY_HTTP)"
    return "our inference from the WinHTTP error list"


def render_verdict_table() -> list[str]:
    """VERDICT_TABLE as Markdown table lines, as docs/maps-validation.md holds it."""
    lines = [
        "| reason | hresult | WinHTTP name | cause | source |",
        "|---|---|---|---|---|",
    ]
    for row in VERDICT_TABLE.values():
        causes = ALTERNATE_CAUSES.get(row.reason, (row.cause,))
        cause = " / ".join(f"`{c}`" for c in causes)
        lines.append(f"| `{row.reason}` | `{row.hresult}` | {row.winhttp_name} | {cause} | {row_source(row)} |")
    return lines
