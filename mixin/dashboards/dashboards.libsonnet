// The Grafana dashboards: an overview of every site and a detail view of one target on one route.
// Metric names come from exporter/metrics.py.
local lib = import 'lib.libsonnet';

{
  local c = self._config,
  local site = c.siteLabel,
  local overviewUid = c.dashboardUidPrefix + 'overview',
  local detailUid = c.dashboardUidPrefix + 'target',

  // Label selectors shared by the panels; every one filters by the template variables.
  local sel = 'job=~"$job", %s=~"$site", instance=~"$instance"' % site,
  local selG = sel + ', group=~"$group"',
  local selT = selG + ', target=~"$target", route=~"$route"',

  // Columns of "Emulation vs endpoints per site": recording rule, column name.
  local agreementColumns = ['defender:maps_emulated_valid:min', 'defender:maps_endpoints_reporting:count',
                            'defender:maps_endpoints_failing:count', 'defender:maps_endpoints_agreeing:ratio'],
  local agreementNames = ['emulated MAPS', 'endpoints reporting', 'endpoints failing', 'agreeing'],

  local variables(detail) = [
    lib.datasourceVariable,
    lib.queryVariable('job', 'Job', 'defender_exporter_build_info', c.jobSelector),
    lib.queryVariable('site', 'Site', 'defender_exporter_build_info', 'job=~"$job"', labelName=site),
    lib.queryVariable('instance', 'Instance', 'defender_exporter_build_info', 'job=~"$job", %s=~"$site"' % site),
    lib.queryVariable('group', 'Group', 'defender_target_info', sel),
  ] + (if detail then [
         lib.queryVariable('target', 'Target', 'defender_target_info', selG),
         lib.queryVariable('route', 'Route', 'defender_target_info', selG + ', target=~"$target"'),
       ] else []),

  local detailDataLink = [{
    title: 'Target detail',
    url: '/d/%s?${__url_time_range}&var-datasource=${datasource}' % detailUid
         + '&var-job=${__data.fields.job}&var-site=${__data.fields.%s}&var-instance=${__data.fields.instance}' % site
         + '&var-group=${__data.fields.group}&var-target=${__data.fields.target}&var-route=${__data.fields.route}',
    targetBlank: false,
  }],

  local overview = lib.dashboard(
    c, overviewUid, c.dashboardTitlePrefix + 'Overview',
    'Can Microsoft Defender Antivirus reach its cloud services from each site, and if not, why.',
    lib.layout([
      lib.row('Verdicts'),
      lib.at(8, 5, lib.stat(
        'MAPS verdict',
        'Cloud-delivered protection (MAPS) per site: FAIL if any validation fails '
        + '(the emulation of MpCmdRun -ValidateMapsConnection or a host collector).',
        'min by (%s, instance) (defender_maps_connection_valid{%s})' % [site, sel], unit='none',
        legend='{{%s}} {{instance}}' % site, mappings=lib.okFail, thresholds=lib.redGreen,
      )),
      lib.at(4, 5, lib.stat(
        'Failing probes', 'Probes whose last run failed.',
        'count(defender_probe_success{%s} == 0) or vector(0)' % selG, unit='none',
        thresholds=lib.thresholds([[null, 'green'], [1, 'red']]),
      )),
      lib.at(4, 5, lib.stat(
        'TLS interception', "Targets whose chain ends at a root outside the group's expected roots.",
        'count(defender_tls_intercepted{%s} == 1) or vector(0)' % selG, unit='none',
        thresholds=lib.thresholds([[null, 'green'], [1, 'red']]),
      )),
      lib.at(4, 5, lib.stat(
        'Firing Defender alerts', 'Alerts of alerts/defender-connectivity.rules.yml firing now.',
        'count(ALERTS{alertname=~"Defender.*", alertstate="firing", %s}) or vector(0)' % sel, unit='none',
        thresholds=lib.thresholds([[null, 'green'], [1, 'orange']]),
      )),
      lib.at(4, 5, lib.stat(
        'Oldest probe result', 'Age of the oldest cached probe result (DefenderExporterProbesStale at 15m).',
        'time() - min(defender_probe_last_run_timestamp_seconds{%s})' % selG, unit='s',
        thresholds=lib.thresholds([[null, 'green'], [300, 'orange'], [900, 'red']]),
      )),
      lib.at(24, 10, lib.stateTimeline(
        'state-timeline', 'Group status per site',
        "Share of each group's probes (all targets and routes) that succeeded: green all, orange some, red none.",
        'avg by (%s, instance, group) (defender_probe_success{%s})' % [site, selG],
        '{{%s}} {{instance}} {{group}}' % site, mappings=null, thresholds=lib.ratioSteps, unit='percentunit',
      )),
      lib.at(24, 7, lib.stateTimeline(
        'status-history', 'MAPS validation per site and route',
        'defender_maps_connection_valid, worst of targets and sources.',
        'min by (%s, instance, route, source) (defender_maps_connection_valid{%s})' % [site, sel],
        '{{%s}} {{instance}} {{route}} {{source}}' % site, mappings=lib.okFail, thresholds=lib.redGreen,
      )),
      lib.row('Why'),
      lib.at(24, 7, lib.infoTable(
        'MAPS verdict: hresult and cause',
        'Failing MAPS validations with the hresult MpCmdRun -ValidateMapsConnection would print, '
        + 'the cause and the reason (see docs/runbooks.md).',
        'defender_maps_validation_info{%s} == 1' % sel, hide=['job'], links=detailDataLink,
      )),
      lib.at(24, 9, lib.infoTable(
        'Currently failing targets', 'Every target whose last probe failed, with the reason.',
        'defender_probe_failure_reason{%s} == 1' % selG, hide=['job'], links=detailDataLink,
      )),
      lib.row('Emulation vs endpoints'),
      lib.at(12, 7, lib.panel(
        'table', 'Emulation vs endpoints per site',
        "Each exporter's emulated MAPS verdict next to the own verdicts (MpCmdRun / mdatp, through textfile "
        + 'mode) of the endpoints of its site: how many report, how many fail, and the share whose verdict '
        + 'is the emulation\'s. Reports older than %d minutes do not count.' % (c.endpointReportMaxAgeSeconds / 60),
        [lib.target('%s{%s}' % [record, sel], instant=true, table=true) for record in agreementColumns],
        overrides=[
          { matcher: { id: 'byName', options: 'emulated MAPS' },
            properties: [{ id: 'mappings', value: lib.okFail }, { id: 'thresholds', value: lib.redGreen },
                         { id: 'color', value: { mode: 'thresholds' } },
                         { id: 'custom.cellOptions', value: { type: 'color-background' } }] },
          { matcher: { id: 'byName', options: 'agreeing' },
            properties: [{ id: 'unit', value: 'percentunit' }, { id: 'thresholds', value: lib.ratioSteps },
                         { id: 'color', value: { mode: 'thresholds' } },
                         { id: 'custom.cellOptions', value: { type: 'color-background' } }] },
        ],
        options={ showHeader: true, cellHeight: 'sm', frameIndex: 0,
                  sortBy: [{ displayName: 'agreeing', desc: false }] },
        custom={ align: 'auto', cellOptions: { type: 'auto' }, filterable: true, inspect: false },
        transformations=[
          { id: 'merge', options: {} },
          { id: 'organize', options: {
            excludeByName: { Time: true, job: true },
            renameByName: { ['Value #' + std.char(std.codepoint('A') + i)]: agreementNames[i]
                            for i in std.range(0, std.length(agreementNames) - 1) },
          } },
        ],
      )),
      lib.at(12, 7, lib.infoTable(
        'Failing endpoints by hresult and cause',
        'Endpoints whose own MpCmdRun -ValidateMapsConnection or mdatp connectivity test fails, counted per '
        + 'site by the hresult they printed and its cause (textfile mode, docs/deployment.md).',
        'defender:maps_endpoints_failing:count_by_hresult_cause{%s}' % sel,
        hide=['job'], valueName='endpoints', sortBy=site,
      )),
      lib.at(24, 7, lib.timeseries(
        'Endpoints agreeing with the emulation',
        "Share of the reporting endpoints of each exporter's site whose own MAPS verdict is the emulated one "
        + '(DefenderEmulationDisagreesWithEndpoints below %d%% for %s).' % [c.agreementRatioMin * 100, c.agreementFor], [
          lib.target('defender:maps_endpoints_agreeing:ratio{%s}' % sel, '{{%s}} {{instance}}' % site),
        ], unit='percentunit',
      )),
      lib.row('Latency'),
      lib.at(12, 9, lib.timeseries(
        'Probe latency p50 / p95 per group', 'From the defender_probe_latency_seconds histogram.', [
          lib.target('histogram_quantile(0.50, sum by (%s, group, le) (rate(defender_probe_latency_seconds_bucket{%s}[$__rate_interval])))' % [site, selG],
                     'p50 {{%s}} {{group}}' % site),
          lib.target('histogram_quantile(0.95, sum by (%s, group, le) (rate(defender_probe_latency_seconds_bucket{%s}[$__rate_interval])))' % [site, selG],
                     'p95 {{%s}} {{group}}' % site),
        ], unit='s',
      )),
      lib.at(12, 9, lib.timeseries(
        'Phase breakdown per group',
        'Average time of each phase of the last probe (resolve, connect, proxy_connect, tls, processing, transfer).', [
          lib.target('avg by (group, phase) (defender_probe_phase_duration_seconds{%s})' % selG, '{{group}} {{phase}}'),
        ], unit='s', stacked=true, bars=true,
      )),
      lib.row('TLS and CRLs'),
      lib.at(12, 9, lib.infoTable(
        'TLS certificate expiry', 'Time left until notAfter of each presented certificate (depth 0 = leaf).',
        'min by (%s, instance, group, target, depth, subject, issuer) (defender_tls_cert_not_after_timestamp_seconds{%s}) - time()' % [site, selG],
        unit='s', valueName='expires in', sortBy='expires in', thresholds=lib.expirySteps,
      )),
      lib.at(12, 9, lib.infoTable(
        'Intercepted targets', "Targets whose chain does not end at the group's expected roots.",
        'max by (%s, instance, group, target, route) (defender_tls_intercepted{%s})' % [site, selG],
        valueName='intercepted', mappings=lib.yesNoBad, sortBy='intercepted',
      )),
      lib.at(12, 8, lib.infoTable(
        'CRL freshness', 'Time left until nextUpdate of each cached CRL (negative: stale).',
        'max by (%s, instance, url) (defender_crl_next_update_timestamp_seconds{%s}) - time()' % [site, sel],
        unit='s', valueName='nextUpdate in', sortBy='nextUpdate in',
        thresholds=lib.thresholds([[null, 'red'], [0, 'orange'], [86400, 'green']]),
      )),
      lib.at(12, 8, lib.stateTimeline(
        'status-history', 'CRL reachability per route',
        'Whether the CRL distribution points answer on each route (system = WinHTTP).',
        'min by (%s, instance, route) (defender_crl_reachable{%s})' % [site, sel],
        '{{%s}} {{instance}} {{route}}' % site, mappings=lib.okFail, thresholds=lib.redGreen,
      )),
      lib.at(24, 7, lib.stateTimeline(
        'state-timeline', "The certificate engine's downloads (system route)",
        'Share of the probes that succeeded for what Windows itself fetches on the WinHTTP path: the CRL URLs (crl), '
        + 'the certificate trust lists (ctl) and the OCSP/CRL/CA hosts of current Microsoft chains (revocation).',
        'avg by (%s, instance, group) (defender_probe_success{%s, group=~"crl|ctl|revocation", route="system"})' % [site, sel],
        '{{%s}} {{instance}} {{group}}' % site, mappings=null, thresholds=lib.ratioSteps, unit='percentunit',
      )),
      lib.at(24, 7, lib.infoTable(
        'Revocation cache: time left',
        'Until when endpoints that fetched the MAPS chain\'s OCSP answers and CRLs while they still could '
        + 'keep passing MAPS validation (defender_maps_revocation_valid_until_timestamp_seconds). It stays put '
        + 'while fetches fail: when it reaches 0, every endpoint fails. Freshly installed endpoints fail as '
        + 'soon as MAPS validation does.',
        'min by (%s, instance, group, target, route) (defender_maps_revocation_valid_until_timestamp_seconds{%s}) - time()'
        % [site, selG],
        unit='s', valueName='endpoints pass for', sortBy='endpoints pass for',
        thresholds=lib.thresholds([[null, 'red'], [0, 'orange'], [86400, 'green']]),
      )),
      lib.row('Alerts'),
      lib.at(24, 8, lib.infoTable(
        'Firing alerts', 'Defender alerts firing now (ALERTS).',
        'ALERTS{alertname=~"Defender.*", alertstate="firing", %s}' % sel, hide=['alertstate'],
      )),
    ]),
    variables(detail=false),
    lib.dashboardLink(detailUid, 'Target detail'),
  ),

  local targetDetail = lib.dashboard(
    c, detailUid, c.dashboardTitlePrefix + 'Target detail',
    'One Defender endpoint (target) on one route: probe, phases, TLS chain, MAPS verdict.',
    lib.layout([
      lib.row('Probe'),
      lib.at(24, 8, lib.stateTimeline(
        'status-history', 'Probe success', 'defender_probe_success per target and route.',
        'defender_probe_success{%s}' % selT, '{{instance}} {{target}} ({{route}})',
        mappings=lib.okFail, thresholds=lib.redGreen,
      )),
      lib.at(12, 6, lib.infoTable('Failure reason', 'Why the last probe failed.',
                                  'defender_probe_failure_reason{%s} == 1' % selT, hide=['job'])),
      lib.at(12, 6, lib.infoTable('Catalogue entry', 'The published pattern and port each target stands for.',
                                  'defender_target_info{%s}' % selT, hide=['job'])),
      lib.at(12, 8, lib.timeseries('Probe duration', 'Wall time of the last probe.', [
        lib.target('defender_probe_duration_seconds{%s}' % selT, '{{target}} ({{route}})'),
      ], unit='s')),
      lib.at(12, 8, lib.timeseries('Phases of the last probe', 'resolve, connect, proxy_connect, tls, processing, transfer.', [
        lib.target('defender_probe_phase_duration_seconds{%s}' % selT, '{{target}} ({{route}}) {{phase}}'),
      ], unit='s', stacked=true, bars=true)),
      lib.at(12, 8, lib.timeseries(
        'Group latency p95',
        "95th percentile of every probe of the target's group on its route (the "
        + 'defender_probe_latency_seconds histogram is kept per group and route, not per target).', [
          lib.target('histogram_quantile(0.95, sum by (group, route, le) (rate(defender_probe_latency_seconds_bucket{%s, route=~"$route"}[$__rate_interval])))' % selG,
                     'p95 {{group}} ({{route}})'),
        ], unit='s',
      )),
      lib.at(12, 8, lib.timeseries('Probe results', 'Probes per second by result.', [
        lib.target('sum by (target, route, result) (rate(defender_probes_total{%s}[$__rate_interval]))' % selT,
                   '{{target}} ({{route}}) {{result}}'),
      ], unit='ops')),
      lib.at(12, 8, lib.timeseries('HTTP status code', 'Status of the last answer (0 = none).', [
        lib.target('defender_probe_http_status_code{%s}' % selT, '{{target}} ({{route}})'),
      ], unit='none')),
      lib.at(12, 8, lib.stateTimeline(
        'status-history', 'MAPS validation', 'defender_maps_connection_valid of the target.',
        'defender_maps_connection_valid{%s}' % selT, '{{target}} ({{route}}, {{source}})',
        mappings=lib.okFail, thresholds=lib.redGreen,
      )),
      lib.at(24, 5, lib.infoTable('MAPS verdict', 'hresult, cause and reason while MAPS validation fails.',
                                  'defender_maps_validation_info{%s} == 1' % selT, hide=['job'])),
      lib.row('TLS'),
      lib.at(8, 4, lib.stat('Chain verified', 'The presented chain verifies to a trust anchor for the host name.',
                            'min(defender_tls_chain_verified{%s})' % selT, unit='none', mappings=lib.okFail, thresholds=lib.redGreen)),
      lib.at(8, 4, lib.stat('Intercepted', "The chain ends outside the group's expected roots (TLS inspection).",
                            'max(defender_tls_intercepted{%s})' % selT, unit='none', mappings=lib.yesNoBad,
                            thresholds=lib.thresholds([[null, 'green'], [1, 'red']]))),
      lib.at(8, 4, lib.stat('Revoked', "A certificate of the chain is on its issuer's CRL.",
                            'max(defender_tls_cert_revoked{%s})' % selT, unit='none', mappings=lib.yesNoBad,
                            thresholds=lib.thresholds([[null, 'green'], [1, 'red']]))),
      lib.at(24, 8, lib.infoTable('Certificate chain', 'Every presented certificate with its notAfter (depth 0 = leaf).',
                                  'defender_tls_cert_not_after_timestamp_seconds{%s} * 1000' % selT, hide=['job'],
                                  unit='dateTimeAsIso', valueName='notAfter', sortBy='depth')),
      lib.at(12, 6, lib.infoTable('TLS version', 'Negotiated by the last probe.',
                                  'defender_tls_version_info{%s}' % selT, hide=['job'])),
      lib.at(12, 6, lib.infoTable('TLS cipher', 'Negotiated by the last probe.',
                                  'defender_tls_cipher_info{%s}' % selT, hide=['job'])),
    ]),
    variables(detail=true),
    lib.dashboardLink(overviewUid, 'Overview'),
  ),

  grafanaDashboards+:: {
    'defender-overview.json': overview,
    'defender-target-detail.json': targetDetail,
  },
}
