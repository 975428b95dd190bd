"""MAPS verdicts: the findings, the causes, the hresults and the remedies.

Part of the public contract (the `reason`, `hresult` and `cause` labels of
MAPS_VALIDATION_INFO in metrics.py). Two tables, used by the emulation
(assess.py), the `check` command and the host-side parsers alike:

- HRESULTS: every hresult MpCmdRun -ValidateMapsConnection is known to print
  or that we emulate, its name, the `httpcore=`/`httpcode=` it is printed with
  (None where no source shows one), the cause it means when nothing else is
  known, the other causes the situation may choose, and whether Microsoft
  documents it (with the page) or we infer it.
- VERDICT_TABLE: every reason an emulated verdict can carry -> its hresult
  (a key of HRESULTS).

`cause_for(hresult, evidence)` is the one function that turns an hresult into
a cause: the same printed hresult with the same evidence gives the same cause
everywhere. docs/maps-validation.md renders both tables; a test keeps them in
step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .reasons import Reason


class Finding(enum.StrEnum):
    """Reasons of a MAPS verdict beyond the probe's own (revocation, chain building and pinning)."""

    CERT_REVOKED = "cert_revoked"
    CRL_UNREACHABLE = "crl_unreachable"
    CRL_INVALID = "crl_invalid"
    CRL_STALE = "crl_stale"
    # The certificate has no CRL distribution point, and its OCSP responders fail:
    OCSP_UNREACHABLE = "ocsp_unreachable"
    OCSP_INVALID = "ocsp_invalid"
    OCSP_STALE = "ocsp_stale"
    # A certificate of the chain names no revocation source at all (CRYPT_E_NO_REVOCATION_CHECK).
    REVOCATION_INFO_MISSING = "revocation_info_missing"
    # The server left out an issuer and it could not be fetched from caIssuers (system route).
    AIA_UNREACHABLE = "aia_unreachable"
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
    # Only MpCmdRun itself reports these (host side): the tool could not run the check.
    DEFENDER_SERVICE_DISABLED = "defender_service_disabled"
    WINDOWS_TOO_OLD = "windows_too_old"
    NOT_ELEVATED = "not_elevated"
    # A route's proxy auto-configuration (PAC file, WPAD) cannot be fetched or evaluated.
    PAC_FAILURE = "pac_failure"


# Where Microsoft documents an hresult of -ValidateMapsConnection (docs/maps-validation.md links both):
# "Configure and validate Microsoft Defender Antivirus network connections" (the article), and
# "Use the command line to manage Microsoft Defender Antivirus", section "Common errors".
ARTICLE = "the article"
MPCMDRUN_PAGE = "the MpCmdRun page"


@dataclass(frozen=True)
class HresultRow:
    hresult: str  # "0x80072F8F": uppercase hex, 8 digits
    name: str  # the constant's name (WinHTTP, Win32, HTTP facility, ...)
    cause: Cause  # what it means when nothing else is known
    documented: str = ""  # the Microsoft page naming it for -ValidateMapsConnection; "" = our inference
    http: str = ""  # what MpCmdRun prints after it ("httpcore=451"); "" = no source shows one
    # Causes the situation may choose instead (the emulation's own finding, or interception).
    alternatives: tuple[Cause, ...] = ()

    @property
    def causes(self) -> tuple[Cause, ...]:
        return (self.cause, *self.alternatives)


_REVOCATION = (Cause.CRL_BLOCKED, Cause.PROXY_AUTH, Cause.TIMEOUT, Cause.CERT_REVOKED, Cause.CRL_INVALID)

HRESULTS: dict[str, HresultRow] = {
    row.hresult: row
    for row in (
        # --- documented by Microsoft -------------------------------------------------------
        # The article gives all three for the missing WinHTTP proxy; the MpCmdRun page gives
        # 0x80070006 for "firewall blocking the connection or conducting SSL inspection".
        HresultRow("0x80070006", "E_HANDLE", Cause.WINHTTP_PROXY_MISSING, ARTICLE + "; " + MPCMDRUN_PAGE,
                   "httpcore=451", (Cause.TLS_INSPECTION, Cause.FIREWALL_BLOCKED) + _REVOCATION),
        # ERROR_WINHTTP_SECURE_FAILURE: WinHTTP reports every certificate failure found while
        # sending the request with it, the detail being in callback flags (CERT_REV_FAILED,
        # CERT_REVOKED, INVALID_CA, ...): revocation offline, revoked, and a pinned chain alike.
        HresultRow("0x80072F8F", "ERROR_WINHTTP_SECURE_FAILURE", Cause.WINHTTP_PROXY_MISSING, ARTICLE,
                   "httpcore=451", (Cause.TLS_INSPECTION, *_REVOCATION, Cause.CERTIFICATE_INVALID)),
        HresultRow("0x80072EFE", "ERROR_WINHTTP_CONNECTION_ERROR", Cause.WINHTTP_PROXY_MISSING, ARTICLE,
                   "httpcore=451", (Cause.FIREWALL_BLOCKED, Cause.CRL_BLOCKED)),
        HresultRow("0x80072F0D", "ERROR_WINHTTP_SECURE_INVALID_CA", Cause.TLS_INSPECTION, MPCMDRUN_PAGE,
                   "", (Cause.CERTIFICATE_INVALID,)),
        HresultRow("0x80072EE7", "ERROR_WINHTTP_NAME_NOT_RESOLVED", Cause.DNS_FAILURE, MPCMDRUN_PAGE,
                   "httpcode=451", (Cause.FIREWALL_BLOCKED,)),
        HresultRow("0x80508015", "(Defender-specific, no public name)", Cause.FIREWALL_BLOCKED, MPCMDRUN_PAGE,
                   "", (Cause.TLS_INSPECTION,)),
        HresultRow("0x80004005", "E_FAIL", Cause.DNS_FAILURE, MPCMDRUN_PAGE, "httpcode=450",
                   (Cause.FIREWALL_BLOCKED,)),
        HresultRow("0x800106BA", "RPC_S_SERVER_UNAVAILABLE (FACILITY_RPC)", Cause.DEFENDER_SERVICE_DISABLED, MPCMDRUN_PAGE),
        HresultRow("0x80070667", "ERROR_INVALID_COMMAND_LINE", Cause.WINDOWS_TOO_OLD, MPCMDRUN_PAGE),
        HresultRow("0x80070005", "E_ACCESSDENIED", Cause.NOT_ELEVATED, MPCMDRUN_PAGE, "httpcode=450"),
        # --- our inference from the WinHTTP error list (0x80070000 | code) ----------------------
        HresultRow("0x80072EFD", "ERROR_WINHTTP_CANNOT_CONNECT", Cause.FIREWALL_BLOCKED),
        HresultRow("0x80072EE2", "ERROR_WINHTTP_TIMEOUT", Cause.FIREWALL_BLOCKED, alternatives=(Cause.TIMEOUT,)),
        HresultRow("0x80072F78", "ERROR_WINHTTP_INVALID_SERVER_RESPONSE", Cause.HTTP_ERROR),
        HresultRow("0x80072F7D", "ERROR_WINHTTP_SECURE_CHANNEL_ERROR", Cause.FIREWALL_BLOCKED,
                   alternatives=(Cause.TLS_INSPECTION,)),
        HresultRow("0x80072F06", "ERROR_WINHTTP_SECURE_CERT_CN_INVALID", Cause.CERTIFICATE_INVALID,
                   alternatives=(Cause.TLS_INSPECTION,)),
        HresultRow("0x80072F05", "ERROR_WINHTTP_SECURE_CERT_DATE_INVALID", Cause.CERTIFICATE_INVALID),
        # --- our inference: an HTTP status as an hresult (FACILITY_HTTP, 0x80190000 | status) ---
        HresultRow("0x80072F87", "ERROR_WINHTTP_UNABLE_TO_DOWNLOAD_SCRIPT", Cause.PAC_FAILURE),
        HresultRow("0x80072F86", "ERROR_WINHTTP_BAD_AUTO_PROXY_SCRIPT", Cause.PAC_FAILURE),
        HresultRow("0x80190197", "HTTP_E_STATUS_PROXY_AUTH_REQ (407)", Cause.PROXY_AUTH),
        HresultRow("0x80190193", "HTTP_E_STATUS_FORBIDDEN (403 from the proxy)", Cause.PROXY_DENIED),
    )
}


@dataclass(frozen=True)
class Evidence:
    """What else is known when an hresult is turned into a cause.

    - `situation`: the cause the emulation found for the same failure (its own finding);
    - `intercepted`: the emulation saw a MAPS chain that does not end at an expected root;
    - `winhttp_proxy`: a system-wide WinHTTP proxy is set (netsh), None if unknown.
    """

    situation: Cause | None = None
    intercepted: bool = False
    winhttp_proxy: bool | None = None


def cause_for(hresult: str, evidence: Evidence = Evidence()) -> Cause | None:
    """The cause of a printed hresult, or None for an hresult no table row names.

    In order: interception, when the hresult can mean it; the emulation's own finding,
    when the hresult can mean it; the missing WinHTTP proxy becomes "CRLs blocked"
    when a WinHTTP proxy is known to be set; else the row's cause."""
    row = HRESULTS.get(normalise_hresult(hresult))
    if row is None:
        return None
    if evidence.intercepted and Cause.TLS_INSPECTION in row.causes:
        return Cause.TLS_INSPECTION
    if evidence.situation is not None and evidence.situation in row.causes:
        return evidence.situation
    if row.cause is Cause.WINHTTP_PROXY_MISSING and evidence.winhttp_proxy:
        return Cause.CRL_BLOCKED
    return row.cause


def normalise_hresult(hresult: str) -> str:
    """"80072f8f", "0x80072f8f" -> "0x80072F8F"; anything else unchanged."""
    digits = hresult.strip().removeprefix("0x").removeprefix("0X")
    try:
        return f"0x{int(digits, 16) & 0xFFFFFFFF:08X}"
    except ValueError:
        return hresult


def mpcmdrun_line(hresult: str) -> str:
    """The failure line MpCmdRun prints for `hresult`, with httpcore/httpcode only where a source shows it."""
    row = HRESULTS.get(hresult)
    http = f" {row.http}" if row is not None and row.http else ""
    return f"ValidateMapsConnection failed to establish a connection to MAPS (hr={hresult}{http})"


@dataclass(frozen=True)
class VerdictRow:
    reason: str
    hresult: str  # a key of HRESULTS
    cause: Cause  # the emulation's cause when the situation says nothing more


_SECURE_FAILURE = "0x80072F8F"

# reason -> hresult -> cause. Causes the situation chooses are in ALTERNATE_CAUSES.
VERDICT_TABLE: dict[str, VerdictRow] = {
    row.reason: row
    for row in (
        VerdictRow(Reason.DNS_ERROR, "0x80072EE7", Cause.DNS_FAILURE),
        VerdictRow(Reason.CONNECT_REFUSED, "0x80072EFD", Cause.FIREWALL_BLOCKED),
        VerdictRow(Reason.CONNECT_TIMEOUT, "0x80072EE2", Cause.FIREWALL_BLOCKED),
        VerdictRow(Reason.CONNECTION_RESET, "0x80072EFE", Cause.FIREWALL_BLOCKED),
        VerdictRow(Reason.PROXY_UNREACHABLE, "0x80072EFD", Cause.FIREWALL_BLOCKED),
        VerdictRow(Reason.PROXY_AUTH_REQUIRED, "0x80190197", Cause.PROXY_AUTH),
        VerdictRow(Reason.PROXY_DENIED, "0x80190193", Cause.PROXY_DENIED),
        VerdictRow(Reason.PROXY_ERROR, "0x80072F78", Cause.HTTP_ERROR),
        VerdictRow(Reason.TLS_HANDSHAKE_ERROR, "0x80072F7D", Cause.FIREWALL_BLOCKED),
        VerdictRow(Reason.TLS_UNTRUSTED, "0x80072F0D", Cause.CERTIFICATE_INVALID),
        VerdictRow(Reason.TLS_HOSTNAME_MISMATCH, "0x80072F06", Cause.CERTIFICATE_INVALID),
        VerdictRow(Reason.TLS_EXPIRED, "0x80072F05", Cause.CERTIFICATE_INVALID),
        VerdictRow(Reason.TLS_NOT_YET_VALID, "0x80072F05", Cause.CERTIFICATE_INVALID),
        VerdictRow(Reason.HTTP_ERROR, "0x80072F78", Cause.HTTP_ERROR),
        VerdictRow(Reason.UNEXPECTED_CONTENT, "0x80072F78", Cause.HTTP_ERROR),
        VerdictRow(Reason.TIMEOUT, "0x80072EE2", Cause.TIMEOUT),
        VerdictRow(Finding.CRL_UNREACHABLE, _SECURE_FAILURE, Cause.WINHTTP_PROXY_MISSING),
        VerdictRow(Finding.CERT_REVOKED, _SECURE_FAILURE, Cause.CERT_REVOKED),
        VerdictRow(Finding.CRL_INVALID, _SECURE_FAILURE, Cause.CRL_INVALID),
        VerdictRow(Finding.CRL_STALE, _SECURE_FAILURE, Cause.CRL_INVALID),
        VerdictRow(Finding.OCSP_UNREACHABLE, _SECURE_FAILURE, Cause.WINHTTP_PROXY_MISSING),
        VerdictRow(Finding.OCSP_INVALID, _SECURE_FAILURE, Cause.CRL_INVALID),
        VerdictRow(Finding.OCSP_STALE, _SECURE_FAILURE, Cause.CRL_INVALID),
        VerdictRow(Finding.REVOCATION_INFO_MISSING, _SECURE_FAILURE, Cause.CERTIFICATE_INVALID),
        VerdictRow(Finding.AIA_UNREACHABLE, _SECURE_FAILURE, Cause.WINHTTP_PROXY_MISSING),
        VerdictRow(Finding.TLS_INTERCEPTED, _SECURE_FAILURE, Cause.TLS_INSPECTION),
        VerdictRow(Reason.PAC_UNREACHABLE, "0x80072F87", Cause.PAC_FAILURE),
        VerdictRow(Reason.PAC_ERROR, "0x80072F86", Cause.PAC_FAILURE),
    )
}

# hresults the article itself prints for the missing WinHTTP proxy.
ARTICLE_HRESULTS = tuple(h for h, row in HRESULTS.items() if row.documented.startswith(ARTICLE))

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
        "Allow plain HTTP (port 80) to the certificate revocation and issuer URLs (CRLs: "
        "http://www.microsoft.com/pkiops/crl/, http://crl.microsoft.com/pki/crl/products, …; OCSP: "
        "http://oneocsp.microsoft.com, http://ocsp.digicert.com; issuers: http://www.microsoft.com/pkiops/certs, "
        "http://caissuers.microsoft.com, …) on the path the operating system uses (WinHTTP). " + _DISCONNECTED
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
    Cause.DEFENDER_SERVICE_DISABLED: (
        "The Microsoft Defender Antivirus service is disabled (MpCmdRun cannot ask it): enable the service, "
        "then re-run `MpCmdRun -ValidateMapsConnection`. This says nothing about the network."),
    Cause.WINDOWS_TOO_OLD: (
        "-ValidateMapsConnection needs Windows 10 1703 / Windows Server 2019 or newer: run the check from "
        "a newer machine on the same network path."),
    Cause.NOT_ELEVATED: (
        "MpCmdRun ran without administrator rights: run it from an elevated prompt (the host collector "
        "must run as an administrator or SYSTEM)."),
    Cause.PAC_FAILURE: (
        "The route's proxy auto-configuration cannot be used: make the PAC URL (or WPAD's "
        "http://wpad.<domain>/wpad.dat) reachable from the endpoints, and fix the script so that "
        "FindProxyForURL returns PROXY host:port or DIRECT entries within a second."),
}


# Rows whose cause assess.py chooses from the situation: crl_unreachable from the
# routes, an untrusted or misnamed chain from pinning (an intercepted chain).
ALTERNATE_CAUSES: dict[str, tuple[Cause, ...]] = {
    str(Finding.CRL_UNREACHABLE): (Cause.WINHTTP_PROXY_MISSING, Cause.CRL_BLOCKED, Cause.PROXY_AUTH, Cause.TIMEOUT),
    str(Finding.OCSP_UNREACHABLE): (Cause.WINHTTP_PROXY_MISSING, Cause.CRL_BLOCKED, Cause.PROXY_AUTH, Cause.TIMEOUT),
    str(Finding.AIA_UNREACHABLE): (Cause.WINHTTP_PROXY_MISSING, Cause.CRL_BLOCKED, Cause.PROXY_AUTH, Cause.TIMEOUT),
    str(Finding.REVOCATION_INFO_MISSING): (Cause.CERTIFICATE_INVALID, Cause.TLS_INSPECTION),
    str(Reason.TLS_UNTRUSTED): (Cause.CERTIFICATE_INVALID, Cause.TLS_INSPECTION),
    str(Reason.TLS_HOSTNAME_MISMATCH): (Cause.CERTIFICATE_INVALID, Cause.TLS_INSPECTION),
}


def row_source(row: HresultRow) -> str:
    if row.documented:
        return "documented: " + row.documented
    if row.hresult.startswith("0x8019"):
        return "our inference (HTTP status as an hresult, FACILITY_HTTP)"
    return "our inference from the WinHTTP error list"


def render_verdict_table() -> list[str]:
    """VERDICT_TABLE as Markdown table lines, as docs/maps-validation.md holds it."""
    lines = [
        "| reason | hresult | name | cause |",
        "|---|---|---|---|",
    ]
    for row in VERDICT_TABLE.values():
        causes = ALTERNATE_CAUSES.get(row.reason, (row.cause,))
        cause = " / ".join(f"`{c}`" for c in causes)
        lines.append(f"| `{row.reason}` | `{row.hresult}` | {HRESULTS[row.hresult].name} | {cause} |")
    return lines


def render_hresult_table() -> list[str]:
    """HRESULTS as Markdown table lines, as docs/maps-validation.md holds it."""
    lines = [
        "| hresult | name | printed with | cause (nothing else known) | other causes the situation chooses | source |",
        "|---|---|---|---|---|---|",
    ]
    for row in HRESULTS.values():
        others = ", ".join(f"`{c}`" for c in row.alternatives) or "-"
        lines.append(f"| `{row.hresult}` | {row.name} | {row.http or '-'} | `{row.cause}` | {others} | "
                     f"{row_source(row)} |")
    return lines
