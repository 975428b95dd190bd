// Recording rules: the aggregations the alerts and the dashboards share. Every rule keeps the
// identity of the exporter (job, instance) and the site label. Naming: level:metric:operations.
{
  local c = self._config,
  local by(extra=[]) = std.join(', ', c.instanceLabels + [c.siteLabel] + extra),
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
    ],
  },
}
