// Recording rules: the aggregations the alerts and the dashboards share. Every rule keeps the
// identity of the exporter (job, instance) and the site label. Naming: level:metric:operations.
{
  local c = self._config,
  local by(extra=[]) = std.join(', ', c.instanceLabels + [c.siteLabel] + extra),
  local p = {
    by: by(), site: c.siteLabel, instance: std.join(', ', c.instanceLabels),
    sources: c.endpointSources, age: c.endpointReportMaxAgeSeconds,
  },
  local quantile(q, name) = {
    record: 'defender:probe_latency_seconds:%s_by_group' % name,
    expr: 'histogram_quantile(%s, sum by (%s) (rate(defender_probe_latency_seconds_bucket[%s])))\n'
          % [q, by(['group', 'le']), c.latencyRateWindow],
  },

  prometheusRules+:: {
    groups+: [
      {
        name: 'defender-connectivity.rules',
        rules: [
          // Share of a group's probes (all targets, all routes) that succeeded at their last run,
          // per exporter and group: 1 = all reachable, 0 = none.
          {
            record: 'defender:probe_success:ratio_by_group',
            expr: 'avg by (%s) (defender_probe_success)\n' % by(['group']),
          },
          // Number of a group's probes that failed at their last run.
          {
            record: 'defender:probe_failures:count_by_group',
            expr: 'count by (%s) (defender_probe_success == 0)\n' % by(['group']),
          },
          // MAPS verdict per exporter: 1 only if every MAPS validation (every target, route and
          // source) passes, 0 if any of them fails.
          {
            record: 'defender:maps_connection_valid:min',
            expr: 'min by (%s) (defender_maps_connection_valid)\n' % by(),
          },
          // Probe latency quantiles per group.
          quantile('0.50', 'p50'),
          quantile('0.95', 'p95'),
        ],
      },
      // The emulation against the endpoints' own results. Endpoint series are the host-side MAPS
      // verdicts (source mpcmdrun or mdatp) from windows_exporter/node_exporter textfiles
      // (`host --textfile`) or the exporter's host mode, scraped with the site's label
      // (docs/deployment.md). A textfile older than endpointReportMaxAgeSeconds no longer counts: a
      // stopped schedule must not vote. The per-site counts are kept per exporter of the site (its
      // job, instance and site), so that each emulation is set beside the endpoints it stands for.
      {
        name: 'defender-connectivity.agreement',
        rules: [
          // Each endpoint's own MAPS verdict (1 valid, 0 failing), and its failure details.
          {
            record: 'defender:maps_endpoint_valid:fresh',
            expr: |||
              defender_maps_connection_valid{source=~"%(sources)s", %(site)s!=""}
              unless on (%(instance)s)
              (time() - defender_host_textfile_last_run_timestamp_seconds > %(age)d)
            ||| % p,
          },
          {
            record: 'defender:maps_endpoint_validation_info:fresh',
            expr: |||
              defender_maps_validation_info{source=~"%(sources)s", %(site)s!=""} == 1
              unless on (%(instance)s)
              (time() - defender_host_textfile_last_run_timestamp_seconds > %(age)d)
            ||| % p,
          },
          // The exporter's emulated verdict: 0 if any emulated validation fails.
          {
            record: 'defender:maps_emulated_valid:min',
            expr: 'min by (%(by)s) (defender_maps_connection_valid{source="emulated"})\n' % p,
          },
          // The endpoints of the exporter's site that report, and how many of them fail.
          {
            record: 'defender:maps_endpoints_reporting:count',
            expr: |||
              sum by (%(by)s) (
                defender:maps_emulated_valid:min * 0
                + on (%(site)s) group_left
                count by (%(site)s) (defender:maps_endpoint_valid:fresh)
              )
            ||| % p,
          },
          {
            record: 'defender:maps_endpoints_failing:count',
            expr: |||
              sum by (%(by)s) (
                defender:maps_emulated_valid:min * 0
                + on (%(site)s) group_left
                sum by (%(site)s) (1 - defender:maps_endpoint_valid:fresh)
              )
            ||| % p,
          },
          // The failing ones by the hresult and cause their own tool reported, on one exporter of the
          // site (topk: with two exporters at a site, a join to both would match many to many).
          {
            record: 'defender:maps_endpoints_failing:count_by_hresult_cause',
            expr: |||
              count by (%(site)s, hresult, cause) (defender:maps_endpoint_validation_info:fresh)
              * on (%(site)s) group_left (%(instance)s)
              topk by (%(site)s) (1, defender:maps_emulated_valid:min * 0 + 1)
            ||| % p,
          },
          // Those whose verdict is the emulation's (passing while it passes, failing while it
          // fails), and their share of those reporting.
          {
            record: 'defender:maps_endpoints_agreeing:count',
            expr: |||
              sum by (%(by)s) (
                defender:maps_emulated_valid:min
                * on (%(site)s) group_left
                sum by (%(site)s) (defender:maps_endpoint_valid:fresh)
                +
                (1 - defender:maps_emulated_valid:min)
                * on (%(site)s) group_left
                sum by (%(site)s) (1 - defender:maps_endpoint_valid:fresh)
              )
            ||| % p,
          },
          {
            record: 'defender:maps_endpoints_agreeing:ratio',
            expr: |||
              sum by (%(by)s) (defender:maps_endpoints_agreeing:count)
              / sum by (%(by)s) (defender:maps_endpoints_reporting:count)
            ||| % p,
          },
        ],
      },
    ],
  },
}
