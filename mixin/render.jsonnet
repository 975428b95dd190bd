// What mixin/render.py writes: repository path -> content (a JSON value; render.py serialises it).
// `config` (a top-level argument) overrides _config, e.g. for tests or a site's own variant.
function(config={})
  local mixin = (import 'mixin.libsonnet') + { _config+:: config };
  {
    'alerts/defender-connectivity.rules.yml': mixin.prometheusAlerts,
    'alerts/defender-connectivity-recording.rules.yml': mixin.prometheusRules,
    // The same groups for the Prometheus Operator (deploy/kubernetes/monitoring).
    'deploy/kubernetes/monitoring/prometheusrule.yaml': {
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PrometheusRule',
      metadata: {
        name: 'defender-connectivity-exporter',
        labels: {
          'app.kubernetes.io/name': 'defender-connectivity-exporter',
          'app.kubernetes.io/component': 'rules',
        },
      },
      spec: { groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups },
    },
  } + {
    ['dashboards/' + name]: mixin.grafanaDashboards[name]
    for name in std.objectFields(mixin.grafanaDashboards)
  }
