"""Every metric the exporter exposes: name, type, help text and labels.

This module is the single source of truth for the exposition; the collector,
the README's metrics table (a test compares them), the alert rules and the
dashboards all use these names. Change them only on purpose.

A metric name is written here and nowhere else in exporter/. To add a metric:
add its MetricSpec below (a family is exposed in the order of this module),
then yield its samples, ``(SPEC, label values in the spec's order, value)``,
where the value is known: collector.target_samples() for a per-target series
(labels starting with TARGET_LABELS: cached per job, and on /probe), or
DefenderCollector.live_samples() for everything else (or what it draws on:
hostside.host_samples(), RouteBook.samples()). That is all the code: the
writer (exposition.py) writes every family from its spec, with no list or
order to touch. Then the README's metrics table and CHANGELOG.md.
"""

from __future__ import annotations

from dataclasses import dataclass

CACHED = " Cached from the background scheduler; a scrape never triggers a probe."

# Labels every per-target series carries.
TARGET_LABELS = ("group", "target", "route")

PHASES = ("resolve", "connect", "proxy_connect", "tls", "processing", "transfer")

# Buckets of defender_probe_latency_seconds: 5 ms to 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Buckets of defender_exporter_scheduler_lag_seconds.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: tuple[str, ...] = ()
    # False: HELP and TYPE are written only while the family has samples (the
    # optional host collectors' gauges); True: always, as prometheus_client does.
    always_shown: bool = True

    @property
    def per_target(self) -> bool:
        return self.labels[:len(TARGET_LABELS)] == TARGET_LABELS


def _spec(name: str, type_: str, help_: str, labels: tuple[str, ...] = (), *,
          always_shown: bool = True) -> MetricSpec:
    return MetricSpec(name, type_, help_, labels, always_shown)


def _of_last_probe(name: str, help_: str, *labels: str) -> MetricSpec:
    """A gauge of each job's last result (labels TARGET_LABELS + `labels`), cached from the scheduler."""
    return _spec(name, "gauge", help_ + CACHED, TARGET_LABELS + labels)


def _of_host(name: str, help_: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    """A gauge of the optional host collectors: HELP and TYPE only while they report it."""
    return _spec(name, "gauge", help_, labels, always_shown=False)


# Labels of a revocation source's series: a CRL distribution point or an OCSP responder, on a route.
SOURCE_LABELS = ("url", "route")


def _of_source(name: str, help_: str) -> MetricSpec:
    """A gauge of a revocation source on a route, as last checked (cached from the scheduler)."""
    return _spec(name, "gauge", help_ + CACHED, SOURCE_LABELS)


def _source_reachability(reachable: str, duration: str, source: str, *, scope: str = "") -> tuple[MetricSpec, ...]:
    """The two series every revocation source has (CRL distribution points and
    OCSP responders alike): whether it answered at the last check, and the wall
    time of its last request."""
    return (_of_source(reachable, f"1 if the {source} answered on the route at the last check{scope}."),
            _of_source(duration, f"Wall time of the last request to the {source}."))


# --- per target -------------------------------------------------------------
TARGET_INFO = _spec(
    "defender_target_info", "gauge",
    "A probed target: the published catalogue entry (pattern) it stands for, its port, and where the entry "
    "comes from (source: article, a named Microsoft page, or config).",
    TARGET_LABELS + ("pattern", "port", "source"))
PROBE_SUCCESS = _of_last_probe(
    "defender_probe_success",
    "1 if the endpoint answered over a connection valid against the trust store (chain, dates, name).")
PROBE_DURATION = _of_last_probe("defender_probe_duration_seconds", "Wall time of the last probe.")
PROBE_PHASE_DURATION = _of_last_probe(
    "defender_probe_phase_duration_seconds",
    "Wall time of each phase of the last probe (resolve, connect, proxy_connect, tls, processing, transfer).",
    "phase")
PROBE_HTTP_STATUS = _of_last_probe(
    "defender_probe_http_status_code", "HTTP status code of the last answer from the endpoint, 0 if none.")
PROBE_CONTENT_SIZE = _of_last_probe(
    "defender_probe_content_size_bytes",
    "Size of the body of the last answer whose content was checked (expect: content, e.g. the certificate "
    "trust lists); absent for other targets.")
PROBE_CONTENT_LAST_MODIFIED = _of_last_probe(
    "defender_probe_content_last_modified_timestamp_seconds",
    "Last-Modified of the last answer whose content was checked; absent when the server sent none.")
PROBE_FAILURE_REASON = _of_last_probe(
    "defender_probe_failure_reason", "1 with the reason of the last probe while it failed; absent while it succeeds.",
    "reason")
PROBE_LAST_RUN = _spec(
    "defender_probe_last_run_timestamp_seconds", "gauge",
    "Unix time the last probe of this target finished.", TARGET_LABELS)
PROBES_TOTAL = _spec(
    "defender_probes_total", "counter",
    "Probes run since the exporter started, by result.", TARGET_LABELS + ("result",))
PROBES_SKIPPED = _spec(
    "defender_probes_skipped_total", "counter",
    "Slots of the interval in which the target was not probed because its previous probe was still "
    "running (it takes longer than the interval).", TARGET_LABELS)
PROBE_LATENCY = _spec(
    "defender_probe_latency_seconds", "histogram",
    "Wall time of every probe since the exporter started, per group and route (per target: "
    "defender_probe_duration_seconds).", ("group", "route"))

TLS_VERSION_INFO = _of_last_probe("defender_tls_version_info", "TLS version negotiated by the last probe.", "version")
TLS_CIPHER_INFO = _of_last_probe("defender_tls_cipher_info", "TLS cipher negotiated by the last probe.", "cipher")
TLS_CERT_NOT_AFTER = _of_last_probe(
    "defender_tls_cert_not_after_timestamp_seconds",
    "notAfter of each certificate the server presented (depth 0 = leaf), verified or not.",
    "depth", "subject", "issuer", "serial", "fingerprint_sha256")
TLS_CHAIN_VERIFIED = _of_last_probe(
    "defender_tls_chain_verified",
    "1 if the presented chain verifies to a trust anchor for the host name at probe time.")
TLS_CERT_REVOKED = _of_last_probe(
    "defender_tls_cert_revoked", "1 if a certificate of the chain is listed on its issuer's CRL.")
TLS_INTERCEPTED = _of_last_probe(
    "defender_tls_intercepted",
    "1 if the chain ends at a root outside the group's expected_roots (TLS inspection); for a chain that "
    "does not verify, if no presented certificate is or is signed by an expected root.")

TLS_OCSP_STAPLED = _of_last_probe(
    "defender_tls_ocsp_stapled",
    "1 if the server stapled an OCSP response to the last handshake, 0 if it was asked for one and sent "
    "none; only for groups with validate_maps (the only handshakes that ask).")

ROUTE_PROXY_INFO = _of_last_probe(
    "defender_route_proxy_info",
    "1 with the proxy that carried the last probe (DIRECT for a direct connection; host:port, never "
    "credentials); for a failed probe the last one tried; absent when the route chose none (PAC failure).",
    "proxy")

# --- MAPS verdict -----------------------------------------------------------
MAPS_CONNECTION_VALID = _of_last_probe(
    "defender_maps_connection_valid",
    "1 if a MAPS connection validates the way MpCmdRun -ValidateMapsConnection does.", "source")
MAPS_VALIDATION_INFO = _of_last_probe(
    "defender_maps_validation_info",
    "1 while MAPS validation fails, with the hresult MpCmdRun would print, the cause and the reason.",
    "source", "hresult", "cause", "reason")
MAPS_REVOCATION_VALID_UNTIL = _of_last_probe(
    "defender_maps_revocation_valid_until_timestamp_seconds",
    "Until when an endpoint that fetched the chain's revocation data (OCSP answers, CRLs) while it "
    "still could keeps passing MAPS validation: the earliest expiry of the cached data the chain needs. "
    "Stays put while fetches fail; absent until good data was fetched (and after an exporter restart).")

# --- CRLs ---------------------------------------------------------------------
CRL_REACHABLE, CRL_FETCH_DURATION = _source_reachability(
    "defender_crl_reachable", "defender_crl_fetch_duration_seconds", "CRL distribution point")
CRL_THIS_UPDATE = _spec(
    "defender_crl_this_update_timestamp_seconds", "gauge", "thisUpdate of the cached CRL.",
    ("url", "issuer"))
CRL_NEXT_UPDATE = _spec(
    "defender_crl_next_update_timestamp_seconds", "gauge", "nextUpdate of the cached CRL.",
    ("url", "issuer"))
CRL_VALID = _spec(
    "defender_crl_valid", "gauge",
    "1 if the cached CRL parses, is signed by its issuer and is not past nextUpdate.", ("url",))
CRL_SIZE = _spec("defender_crl_size_bytes", "gauge", "Size of the cached CRL.", ("url",))

# --- PAC files and WPAD (routes with `pac:` or `wpad: true`) -------------------
PAC_FETCH_SUCCESS = _spec(
    "defender_pac_fetch_success", "gauge",
    "1 if the last fetch of the route's PAC file (or WPAD discovery and fetch) gave a script (304 counts); "
    "url is the PAC URL (empty when WPAD found none).", ("route", "url"), always_shown=False)
PAC_FETCH_DURATION = _spec(
    "defender_pac_fetch_duration_seconds", "gauge",
    "Wall time of the last fetch of the route's PAC file (with WPAD discovery).", ("route", "url"), always_shown=False)
PAC_EVALUATIONS = _spec(
    "defender_pac_evaluations_total", "counter",
    "FindProxyForURL evaluations in the sandbox, by result (ok, error: threw, nothing usable, past 1 s); "
    "one per target URL and script version, not per probe.", ("route", "result"), always_shown=False)

# --- OCSP ---------------------------------------------------------------------
OCSP_REACHABLE, OCSP_FETCH_DURATION = _source_reachability(
    "defender_ocsp_reachable", "defender_ocsp_fetch_duration_seconds", "OCSP responder",
    scope=" (of any certificate it serves)")
OCSP_RESPONSE_VALID = _of_source(
    "defender_ocsp_response_valid",
    "1 if the responder's last answers parse, are for the certificates asked about, are signed by their "
    "issuer or its delegated responder and are fresh.")
OCSP_NEXT_UPDATE = _of_source(
    "defender_ocsp_next_update_timestamp_seconds", "The earliest nextUpdate of the responder's last good answers.")

# --- host side (optional collectors) -----------------------------------------
HOST_WINHTTP_PROXY_CONFIGURED = _of_host(
    "defender_host_winhttp_proxy_configured", "1 if `netsh winhttp show proxy` shows a system-wide WinHTTP proxy.")
HOST_SSL_OPTIONS = _of_host(
    "defender_host_ssl_options", "The Spynet SSLOptions registry value (3 = pinning and revocation checks on).")
HOST_PROXY_SETTINGS = _of_host(
    "defender_host_proxy_settings_info",
    "1 per proxy settings source on the endpoint (defender_policy, winhttp, winhttp_advproxy, "
    "system_internet_settings) with what it holds (empty: not set; autodetect 1/0).",
    ("source", "proxy", "bypass", "pac_url", "autodetect"))
HOST_ROUTE_MISMATCH = _of_host(
    "defender_host_route_mismatch",
    "1 if the route configured for this site (expected) differs from what the endpoint's settings give "
    "(found), 0 if they agree: 'proxy host:port', 'pac URL', 'wpad' or 'direct'.", ("route", "expected", "found"))
HOST_SIGNATURE_AGE = _of_host(
    "defender_host_signature_age_days", "Age of the installed security intelligence in days (AntivirusSignatureAge).")
HOST_TEXTFILE_COLLECTOR_SUCCESS = _of_host(
    "defender_host_textfile_collector_success",
    "Textfile mode: 1 if the host collector ran and its output was understood at the last run.", ("collector",))
HOST_TEXTFILE_LAST_RUN = _of_host(
    "defender_host_textfile_last_run_timestamp_seconds",
    "Textfile mode: Unix time the last run of `host --textfile` finished its collection.")

# --- the exporter itself -------------------------------------------------------
BUILD_INFO = _spec(
    "defender_exporter_build_info", "gauge", "Build of the exporter.", ("version", "python_version"))
EXPORTER_TARGETS = _spec(
    "defender_exporter_targets", "gauge", "Probe jobs (target x route) configured, per group.",
    ("group",))
SCHEDULER_LAG = _spec(
    "defender_exporter_scheduler_lag_seconds", "histogram",
    "How late probes start after their slot in the interval (the first round is not counted).")
CONFIG_RELOAD_SUCCESSFUL = _spec(
    "defender_exporter_config_last_reload_successful", "gauge",
    "1 if the last configuration load or reload succeeded.")
CONFIG_RELOAD_TIMESTAMP = _spec(
    "defender_exporter_config_last_reload_success_timestamp_seconds", "gauge",
    "Unix time of the last successful configuration load or reload.")

ALL: tuple[MetricSpec, ...] = tuple(v for v in globals().values() if isinstance(v, MetricSpec))
# The families with a series per job (labels start with TARGET_LABELS): the
# exposition cache keeps their lines per job; /probe answers with them.
TARGET_FAMILIES: tuple[MetricSpec, ...] = tuple(spec for spec in ALL if spec.per_target)
