// The defender-connectivity-exporter monitoring mixin (https://monitoring.mixins.dev conventions):
//
//   prometheusAlerts   alert rules         -> alerts/defender-connectivity.rules.yml
//   prometheusRules    recording rules     -> alerts/defender-connectivity-recording.rules.yml
//   grafanaDashboards  file name -> model  -> dashboards/*.json
//
// Tune it through _config (config.libsonnet). `python3 mixin/render.py` writes the shipped files.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards/dashboards.libsonnet')
