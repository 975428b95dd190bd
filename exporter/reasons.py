"""The closed set of probe failure reasons: part of the public contract.

A probe that fails carries exactly one of these. Dashboards, alerts and the
README depend on the spelling; change them only on purpose.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Why a probe failed. The value is the `reason` label."""

    DNS_ERROR = "dns_error"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECTION_RESET = "connection_reset"
    PROXY_UNREACHABLE = "proxy_unreachable"
    PROXY_AUTH_REQUIRED = "proxy_auth_required"
    PROXY_DENIED = "proxy_denied"
    PROXY_ERROR = "proxy_error"
    TLS_HANDSHAKE_ERROR = "tls_handshake_error"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch"
    TLS_EXPIRED = "tls_expired"
    TLS_NOT_YET_VALID = "tls_not_yet_valid"
    HTTP_ERROR = "http_error"
    UNEXPECTED_CONTENT = "unexpected_content"
    TIMEOUT = "timeout"
    PAC_UNREACHABLE = "pac_unreachable"
    PAC_ERROR = "pac_error"


# One line per reason, for the README, the status page and `check`.
REASON_DESCRIPTIONS: dict[Reason, str] = {
    Reason.DNS_ERROR: "the host name (or the proxy's name) did not resolve",
    Reason.CONNECT_REFUSED: "the TCP connection was refused (RST to SYN), or the network is unreachable",
    Reason.CONNECT_TIMEOUT: "the TCP connection was not established before the deadline",
    Reason.CONNECTION_RESET: "the peer reset or closed the connection before a complete answer",
    Reason.PROXY_UNREACHABLE: "the route's proxy could not be connected to",
    Reason.PROXY_AUTH_REQUIRED: "the proxy answered 407: credentials missing or wrong",
    Reason.PROXY_DENIED: "the proxy refused the request by policy (403 or an access-denied error)",
    Reason.PROXY_ERROR: "the proxy answered with its own error (e.g. 502/503) or with garbage",
    Reason.TLS_HANDSHAKE_ERROR: "the TLS handshake failed (protocol, cipher or alert)",
    Reason.TLS_UNTRUSTED: "the certificate chain does not lead to a trusted root",
    Reason.TLS_HOSTNAME_MISMATCH: "the certificate is not valid for the host name",
    Reason.TLS_EXPIRED: "a certificate in the chain has expired",
    Reason.TLS_NOT_YET_VALID: "a certificate in the chain is not valid yet",
    Reason.HTTP_ERROR: "the answer was not valid HTTP (malformed, oversized headers, or closed before any response)",
    Reason.UNEXPECTED_CONTENT: (
        "the answer is not what the endpoint serves (not a CRL, CTL or certificate where one belongs, a status or "
        "body outside the target's `expect:`); the detail says what arrived: status, content type, size"),
    Reason.TIMEOUT: "the probe did not finish before its timeout (after the connection was made)",
    Reason.PAC_UNREACHABLE: "the route's PAC file could not be fetched (or WPAD found no wpad.<domain>)",
    Reason.PAC_ERROR: "the route's PAC script threw, returned nothing usable, or ran past its bound of 1 s",
}
