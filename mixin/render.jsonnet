// What mixin/render.py writes: repository path -> content (a JSON value; render.py serialises it).
// `config` (a top-level argument) overrides _config, e.g. for tests or a site's own variant.
function(config={})
  local mixin = (import 'mixin.libsonnet') + { _config+:: config };
  {
    'alerts/defender-connectivity.rules.yml': mixin.prometheusAlerts,
    'alerts/defender-connectivity-recording.rules.yml': mixin.prometheusRules,
  } + {
    ['dashboards/' + name]: mixin.grafanaDashboards[name]
    for name in std.objectFields(mixin.grafanaDashboards)
  }
