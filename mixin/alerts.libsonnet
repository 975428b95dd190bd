// Alert rules: can Microsoft Defender Antivirus reach its cloud services from this site, and if
// not, why ("Configure and validate Microsoft Defender Antivirus network connections"). Every
// alert links to its section in docs/runbooks.md.
//
// Severities: critical = pages (cloud protection or the signature supply is broken);
// warning = ticket; info = ticket, low priority. Thresholds live in config.libsonnet.
{
  local c = self._config,
  // Where an alert fires: the exporter, and its site when the target has one.
  local at = '{{ $labels.instance }}{{ with $labels.%s }} (site {{ . }}){{ end }}' % c.siteLabel,
  local by(extra=[]) = std.join(', ', c.instanceLabels + [c.siteLabel] + extra),
  // Descriptions are written as lines and read as one paragraph (as YAML's folded `>-` would).
  local text(lines) = std.join(' ', lines),
  local alert(name, expr, duration, severity, summary, description) = {
    alert: name,
    expr: expr,
    'for': duration,
    labels: { severity: severity },
    annotations: {
      summary: summary,
      description: text(description),
      runbook_url: c.runbookURLPattern % std.asciiLower(name),
    },
  },
  // The reason of the failing probe, looked up at notification time.
  local failureReason = '{{ with printf "defender_probe_failure_reason{instance=%q,target=%q,route=%q}" $labels.instance $labels.target $labels.route | query }}{{ range sortByLabel "target" . }} ({{ .Labels.reason }}){{ end }}{{ end }}',

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'defender-connectivity.maps',
        rules: [
          alert(
            'DefenderMAPSConnectionFailed',
            'defender_maps_connection_valid == 0\n',
            c.mapsFor,
            'critical',
            'Defender cannot validate its connection to the MAPS cloud service.',
            [
              'MAPS validation ({{ $labels.source }}) of {{ $labels.target }} on the {{ $labels.route }} route fails',
              'at ' + at + '{{ with printf "defender_maps_validation_info{instance=%q,target=%q,route=%q,source=%q} == 1" $labels.instance $labels.target $labels.route $labels.source | query }}{{ range sortByLabel "reason" . }}:',
              'hr={{ .Labels.hresult }}, cause {{ .Labels.cause }}, reason {{ .Labels.reason }}{{ end }}{{ end }}.',
              'Cloud-delivered protection gets no verdicts from this network.',
            ],
          ),
          alert(
            'DefenderMAPSRevocationCheckBlocked',
            'defender_maps_validation_info{cause="winhttp_proxy_missing"} == 1\n',
            c.mapsFor,
            'critical',
            'MAPS fails because Windows cannot fetch certificate revocation lists (no system-wide WinHTTP proxy).',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route at ' + at + ':',
              'the TLS connection to MAPS cannot complete because the CRL check, which the operating system makes',
              'over WinHTTP, gets no way out (hr={{ $labels.hresult }}, reason {{ $labels.reason }}).',
              'MpCmdRun -ValidateMapsConnection reports this as hr=0x80070006, 0x80072F8F or 0x80072EFE with httpcore=451.',
              'Fix: configure the system-wide WinHTTP proxy (netsh winhttp set proxy, or netsh winhttp import proxy source=ie).',
            ],
          ),
          alert(
            'DefenderPACFileUnavailable',
            'defender_pac_fetch_success == 0\n',
            '15m',
            'warning',
            'A route\'s proxy auto-config (PAC) file cannot be fetched.',
            [
              'The PAC file{{ with $labels.url }} {{ . }}{{ else }} (WPAD found no wpad.<domain>){{ end }} of the {{ $labels.route }} route',
              'cannot be fetched at ' + at + ': every probe on the route fails with pac_unreachable, and endpoints',
              'configured with this PAC (Defender\'s ProxyPacUrl, SYSTEM\'s AutoConfigURL or WPAD) cannot get it either.',
              'Make the PAC server reachable from the endpoints\' network.',
            ],
          ),
          alert(
            'DefenderMAPSRevocationCachedOnly',
            '(defender_maps_revocation_valid_until_timestamp_seconds - time()) > 0\nand on (%s)\n' % by(['group', 'target', 'route'])
            + 'defender_maps_validation_info{source="emulated", reason=~"(crl|ocsp)_(unreachable|invalid|stale)"} == 1\n',
            c.revocationCachedFor,
            'warning',
            'Revocation data for MAPS cannot be refreshed; endpoints pass on cached data until it expires.',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route at ' + at + ':',
              'the OCSP answers and CRLs the MAPS chain needs cannot be fetched on the system route any more.',
              'Newly installed endpoints fail MAPS validation now; endpoints that fetched them earlier keep passing',
              'for {{ $value | humanizeDuration }} more, then fail too. Restore the system route to the revocation URLs before then.',
            ],
          ),
          alert(
            'DefenderTLSInspectionDetected',
            'defender_tls_intercepted{group=~"maps|submission"} == 1\n',
            c.mapsFor,
            'critical',
            'A device on the path re-signs TLS to Defender\'s cloud endpoints.',
            [
              'The chain presented for {{ $labels.target }} ({{ $labels.group }}, {{ $labels.route }} route)',
              'at ' + at + ' does not end at a Microsoft root:',
              'TLS inspection. Defender pins Microsoft\'s roots, so MAPS and sample submission fail.',
              'Exclude these hosts (and *.blob.core.windows.net) from inspection.',
            ],
          ),
          alert(
            'DefenderProxyAuthenticationRequired',
            'count without (group, target) (defender_probe_failure_reason{reason="proxy_auth_required"} == 1)\n',
            c.mapsFor,
            'critical',
            'The proxy asks Defender for credentials (HTTP 407).',
            [
              '{{ $value }} probe(s) on the {{ $labels.route }} route at ' + at,
              'get 407 Proxy Authentication Required. The Defender service runs as SYSTEM and cannot authenticate:',
              'allow the Defender endpoints without authentication.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.crl',
        rules: [
          alert(
            'DefenderCRLUnreachable',
            'defender_crl_reachable == 0\n',
            '15m',
            'warning',
            'A certificate revocation list cannot be fetched.',
            [
              '{{ $labels.url }} does not answer on the {{ $labels.route }} route at ' + at + '.',
              'Windows fetches CRLs while building the TLS connection to MAPS; without them MAPS validation fails.',
              'Allow plain HTTP (port 80) to the CRL URLs{{ if eq $labels.route "system" }} and configure the system-wide WinHTTP proxy{{ end }}.',
            ],
          ),
          alert(
            'DefenderCRLStale',
            '(time() - max without (issuer) (defender_crl_next_update_timestamp_seconds)) > 0\nand\ndefender_crl_valid == 0\n',
            '30m',
            'warning',
            'The cached certificate revocation list is past its nextUpdate.',
            [
              'The CRL from {{ $labels.url }} seen at ' + at,
              'expired {{ $value | humanizeDuration }} ago (nextUpdate passed) and no fresher copy was fetched.',
              'A stale CRL makes revocation checks, and with them MAPS connections, fail.',
            ],
          ),
          alert(
            'DefenderTrustListDownloadFailing',
            'defender_probe_success{group="ctl"} == 0\n',
            '1h',
            'warning',
            'Windows cannot download a certificate trust list (Automatic Root Certificates Update).',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route fails at ' + at + failureReason + '.',
              'The certificate engine fetches these cabinets over plain HTTP on the system-wide WinHTTP path;',
              'without them endpoints miss new and distrusted roots, and chains to roots added since their last refresh fail.',
              'Configure the WinHTTP proxy or allow http://ctldl.windowsupdate.com/, or redirect the download to an internal mirror (ctl_mirror_url).',
            ],
          ),
          alert(
            'DefenderRevocationHostsUnreachable',
            'defender_probe_success{group="revocation"} == 0\n',
            '30m',
            'warning',
            'An OCSP, CRL or CA-certificate host of Microsoft\'s current chains is unreachable.',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route fails at ' + at + failureReason + '.',
              'The certificate engine checks revocation of Microsoft\'s chains there; endpoints keep passing only while cached revocation data lasts.',
              'Allow plain HTTP (port 80) to it on the path the operating system uses.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.updates',
        rules: [
          alert(
            'DefenderUpdateEndpointsUnreachable',
            'defender:probe_success:ratio_by_group{group="update"} < %s\n' % c.updateSuccessRatioMin,
            '30m',
            'warning',
            'Microsoft Update / Windows Update endpoints are unreachable.',
            [
              'Only {{ $value | humanizePercentage }} of the update probes succeed at ' + at,
              '(threshold %d%%).' % std.floor(c.updateSuccessRatioMin * 100 + 0.5)
              + @'{{ with printf "defender_probe_failure_reason{instance=%q,group=\"update\"} == 1" $labels.instance | query }} Failing:{{ range sortByLabel "target" . }} {{ .Labels.target }} ({{ .Labels.route }}, {{ .Labels.reason }});{{ end }}{{ end }}',
              'Security intelligence updates from Microsoft Update are delayed.',
            ],
          ),
          alert(
            'DefenderSignatureUpdatePathsDown',
            |||
              max by (%(by)s) (defender:probe_success:ratio_by_group{group=~"update|adl"}) == 0
              and on (%(on)s) defender:probe_success:ratio_by_group{group="update"}
              and on (%(on)s) defender:probe_success:ratio_by_group{group="adl"}
            ||| % { by: by(), on: std.join(', ', c.instanceLabels) },
            '30m',
            'critical',
            'Neither Microsoft Update nor the alternate download location is reachable.',
            [
              'Every update and every ADL probe fails at ' + at + '.',
              'Security intelligence will age past the 7 days after which Defender turns to the alternate download',
              'location, and then stay stale: endpoints lose protection against new threats.',
            ],
          ),
          alert(
            'DefenderPort80Blocked',
            |||
              (
                (defender_probe_success == 0)
                * on (%(on)s, group, target, route) group_left (pattern)
                defender_target_info{port="80"}
              )
              and on (%(on)s, route, pattern)
              (
                (defender_probe_success == 1)
                * on (%(on)s, group, target, route) group_left (pattern)
                defender_target_info{port="443"}
              )
            ||| % { on: std.join(', ', c.instanceLabels) },
            '30m',
            'warning',
            'Port 80, which the article requires for some download hosts, is blocked.',
            [
              '{{ $labels.target }} (port 80, {{ $labels.pattern }}, {{ $labels.group }}) fails on the {{ $labels.route }} route',
              'at ' + at + failureReason,
              'while the same host answers on 443. The article requires port 80 as well for this entry: allow it.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.other-services',
        rules: [
          alert(
            'DefenderSampleSubmissionUnreachable',
            'defender_probe_success{group="submission"} == 0\n',
            '30m',
            'warning',
            'A sample submission storage endpoint is unreachable.',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route fails at ' + at + failureReason + '.',
              'Automatic sample submission and the Submit form cannot upload files.',
            ],
          ),
          alert(
            'DefenderDiagnosticsUnreachable',
            'defender_probe_success{group="diagnostics"} == 0\n',
            '1h',
            'info',
            'A diagnostic data endpoint is unreachable.',
            [
              '{{ $labels.target }} on the {{ $labels.route }} route fails at ' + at + failureReason + '.',
              'Client diagnostic data (Universal GDPR client) is not sent; protection itself is not affected.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.tls',
        rules: [
          alert(
            'DefenderEndpointCertificateExpiringSoon',
            'defender_tls_cert_not_after_timestamp_seconds{depth="0"} - time() < %d\n' % c.certExpirySeconds,
            '1h',
            'warning',
            'The certificate an endpoint presents expires within %d days.' % (c.certExpirySeconds / 86400),
            [
              'The leaf certificate ({{ $labels.subject }}, issuer {{ $labels.issuer }}) presented for {{ $labels.target }}',
              'on the {{ $labels.route }} route at ' + at,
              'expires in {{ $value | humanizeDuration }}.',
            ],
          ),
          alert(
            'DefenderProbeLatencyHigh',
            'defender:probe_latency_seconds:p95_by_group > %s\n' % c.latencyP95Seconds,
            '15m',
            'warning',
            'Probes to a Defender endpoint group are slow.',
            [
              'The 95th percentile of {{ $labels.group }} probe latency at ' + at,
              'is {{ $value | humanizeDuration }} (threshold %ss). Slow cloud lookups delay block-at-first-sight verdicts.' % c.latencyP95Seconds,
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.exporter',
        rules: [
          alert(
            'DefenderExporterDown',
            'up{%s} == 0\n' % c.jobSelector,
            '5m',
            'warning',
            'Prometheus cannot scrape the Defender connectivity exporter.',
            [
              at + ' of job {{ $labels.job }} is down:',
              'this site\'s Defender connectivity is not monitored and its other alerts cannot fire.',
            ],
          ),
          alert(
            'DefenderExporterProbesStale',
            |||
              (time() - min without (group, target, route) (defender_probe_last_run_timestamp_seconds)) > %(stale)d
              or
              (max without (version, python_version) (defender_exporter_build_info) * -1
                unless on (%(on)s) defender_probe_last_run_timestamp_seconds)
            ||| % { stale: c.probeStalenessSeconds, on: std.join(', ', c.instanceLabels) },
            '5m',
            'warning',
            'The exporter\'s probe results are stale.',
            [
              '{{ if lt $value 0.0 }}No probe has finished at ' + at + ' since the exporter started.{{ else }}The oldest probe result at ' + at
              + ' is {{ $value | humanizeDuration }} old (threshold %dm).{{ end }}' % (c.probeStalenessSeconds / 60),
              'The scheduler is stuck or overloaded; the exported verdicts no longer describe the network.',
            ],
          ),
          alert(
            'DefenderExporterConfigReloadFailed',
            'defender_exporter_config_last_reload_successful == 0\n',
            '5m',
            'warning',
            'The exporter failed to reload its configuration.',
            [
              'The last configuration reload at ' + at + ' failed;',
              'the exporter keeps probing with the previous configuration.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.host',
        rules: [
          alert(
            'DefenderHostSignaturesOutdated',
            'defender_host_signature_age_days >= %d\n' % c.signatureAgeDaysMax,
            '1h',
            'warning',
            'Defender\'s security intelligence on the host is %d or more days old.' % c.signatureAgeDaysMax,
            [
              'Security intelligence at ' + at + ' is {{ $value }} days old.',
              'From %d days on Defender fetches from the alternate download location; the update paths are failing.' % c.signatureAgeDaysMax,
            ],
          ),
          alert(
            'DefenderHostSSLOptionsWeakened',
            'defender_host_ssl_options < %d\n' % c.sslOptionsDefault,
            '1h',
            'info',
            'Certificate pinning or revocation checks for MAPS are switched off on the host.',
            [
              @'HKLM\SOFTWARE\Policies\Microsoft\Windows Defender\Spynet\SSLOptions is {{ $value }} at ' + at,
              '(0 = pinning and revocation checks off, 1 = pinning off, 2 = revocation checks off, 3 = default).',
              'The article calls this a work-around, not best practice: configure the WinHTTP proxy and set it back to 3.',
            ],
          ),
        ],
      },
      {
        name: 'defender-connectivity.endpoints',
        rules: [
          alert(
            'DefenderEmulationDisagreesWithEndpoints',
            'defender:maps_endpoints_agreeing:ratio < %s\n' % c.agreementRatioMin,
            c.agreementFor,
            'info',
            "The exporter's MAPS emulation and most of the site's endpoints disagree.",
            [
              'At ' + at + ' the emulated MAPS verdict is{{ with printf "defender:maps_emulated_valid:min{instance=%q}" $labels.instance | query }}{{ if eq (. | first | value) 1.0 }} valid{{ else }} failing{{ end }}{{ end }},',
              'but only {{ $value | humanizePercentage }} of the{{ with printf "defender:maps_endpoints_reporting:count{instance=%q}" $labels.instance | query }} {{ . | first | value }}{{ end }} endpoints of the site',
              'reporting their own MpCmdRun/mdatp verdict agree{{ with printf "defender:maps_endpoints_failing:count_by_hresult_cause{instance=%q}" $labels.instance | query }}; failing:{{ range $i, $s := sortByLabel "hresult" . }}{{ if $i }},{{ end }} {{ $s.Value }} with hr={{ or $s.Labels.hresult "none" }}{{ with $s.Labels.cause }} ({{ . }}){{ end }}{{ end }}{{ end }}.',
              "Until the runbook's checks explain the difference, neither the dashboard nor the endpoints' own result is the whole truth for this site.",
            ],
          ),
        ],
      },
    ],
  },
}
