// The one place to tune the mixin. Override any field when importing it:
//
//   (import 'mixin.libsonnet') + { _config+:: { jobSelector: 'job="dce"', siteLabel: 'location' } }
//
// Defaults render exactly the files shipped in alerts/ and dashboards/ (tests/test_mixin.py).
{
  _config+:: {
    // Selects the exporter's scrape jobs where a rule must name them (`up` has no defender_ metric
    // to select by) and scopes the dashboards' job variable. Keep it matching the job names of your
    // scrape configs (docs/examples/prometheus.yml, the ServiceMonitor in deploy/kubernetes/).
    jobSelector: 'job=~"defender-connectivity.*"',

    // The target label that says which site (network vantage point) an exporter stands for. Set on
    // the scrape target (static_configs labels, ServiceMonitor relabelings), never by the exporter.
    siteLabel: 'site',

    // Labels that identify one exporter; kept by every aggregation.
    instanceLabels: ['job', 'instance'],

    // Alert thresholds (each named where its alert uses it).
    mapsFor: '5m',  // MAPS, revocation, TLS inspection, proxy authentication: how long before paging
    updateSuccessRatioMin: 0.75,  // DefenderUpdateEndpointsUnreachable: share of update probes succeeding
    signatureAgeDaysMax: 7,  // DefenderHostSignaturesOutdated: the article's 7 days (then the ADL takes over)
    certExpirySeconds: 14 * 86400,  // DefenderEndpointCertificateExpiringSoon
    latencyP95Seconds: 2,  // DefenderProbeLatencyHigh
    probeStalenessSeconds: 900,  // DefenderExporterProbesStale: 15 x the default 60 s probe interval
    sslOptionsDefault: 3,  // DefenderHostSSLOptionsWeakened: Windows' default SSLOptions value
    revocationCachedFor: '10m',  // DefenderMAPSRevocationCachedOnly: endpoints pass only on cached revocation data

    // The emulation against the endpoints' own MAPS verdicts (textfile mode, host mode), per site.
    endpointSources: 'mpcmdrun|mdatp',  // `source` of the endpoints' series
    endpointReportMaxAgeSeconds: 1800,  // a textfile older than this (three 10-minute runs) no longer counts
    agreementRatioMin: 0.5,  // DefenderEmulationDisagreesWithEndpoints: share of reporting endpoints agreeing
    agreementFor: '30m',  // DefenderEmulationDisagreesWithEndpoints: three textfile runs

    // Range of the recording rules' rate() over the latency histogram (>= 4 x the scrape interval).
    latencyRateWindow: '5m',

    // Where each alert's runbook_url points; %s is the alert name in lower case (a GitHub anchor).
    runbookURLPattern: 'https://github.com/defender-connectivity-exporter/defender-connectivity-exporter/blob/main/docs/runbooks.md#%s',

    // Dashboards.
    dashboardTags: ['defender', 'defender-connectivity', 'microsoft-defender-antivirus'],
    dashboardUidPrefix: 'defender-connectivity-',
    dashboardTitlePrefix: 'Defender connectivity / ',
    dashboardRefresh: '1m',
    dashboardTimezone: 'browser',
  },
}
