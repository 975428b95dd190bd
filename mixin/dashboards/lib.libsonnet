// Building blocks of the dashboards (kubernetes-mixin / node-mixin conventions): every panel and
// target uses the ${datasource} variable; panels are laid out left to right, top to bottom, on
// Grafana's 24-column grid by `layout`.
{
  schemaVersion: 39,
  datasource: { type: 'prometheus', uid: '${datasource}' },

  okFail: [{ type: 'value', options: {
    '0': { text: 'FAIL', color: 'red', index: 0 },
    '1': { text: 'OK', color: 'green', index: 1 },
  } }],
  yesNoBad: [{ type: 'value', options: {
    '0': { text: 'no', color: 'green', index: 0 },
    '1': { text: 'YES', color: 'red', index: 1 },
  } }],

  // thresholds([[null, 'red'], [1, 'green']])
  thresholds(steps):: { mode: 'absolute', steps: [{ color: s[1], value: s[0] } for s in steps] },
  redGreen:: self.thresholds([[null, 'red'], [1, 'green']]),
  ratioSteps:: self.thresholds([[null, 'red'], [0.5, 'orange'], [1, 'green']]),
  expirySteps:: self.thresholds([[null, 'red'], [7 * 86400, 'orange'], [14 * 86400, 'green']]),

  local lib = self,
  local when(cond, obj) = if cond then obj else {},

  target(expr, legend='', instant=false, table=false):: {
    datasource: lib.datasource,
    expr: expr,
    refId: 'A',
    legendFormat: if legend == '' then '__auto' else legend,
    range: !instant,
    instant: instant,
  } + when(table, { format: 'table' }),

  panel(kind, title, description, targets, unit=null, mappings=null, thresholds=null, options=null,
        custom=null, transformations=null, links=null, overrides=null, min=null, max=null):: {
    type: kind,
    title: title,
    description: description,
    datasource: lib.datasource,
    targets: [targets[i] { refId: std.char(std.codepoint('A') + i) } for i in std.range(0, std.length(targets) - 1)],
    fieldConfig: {
      defaults: when(unit != null, { unit: unit })
                + when(mappings != null, { mappings: mappings })
                + when(thresholds != null, { thresholds: thresholds, color: { mode: 'thresholds' } })
                + when(custom != null, { custom: custom })
                + when(links != null, { links: links })
                + when(min != null, { min: min })
                + when(max != null, { max: max }),
      overrides: if overrides == null then [] else overrides,
    },
    options: if options == null then {} else options,
  } + when(transformations != null, { transformations: transformations }),

  // A table of the label sets an instant query returns (info metrics, failing series).
  infoTable(title, description, expr, hide=[], unit=null, links=null, valueName=null, sortBy=null,
            mappings=null, thresholds=null)::
    local exclude = { [name]: true for name in ['Time', '__name__'] + hide }
                    + when(valueName == null, { Value: true });
    lib.panel('table', title, description, [lib.target(expr, instant=true, table=true)], unit=unit, links=links,
              mappings=mappings, thresholds=thresholds,
              options={ showHeader: true, cellHeight: 'sm', frameIndex: 0 }
                      + when(sortBy != null, { sortBy: [{ displayName: sortBy, desc: false }] }),
              custom={ align: 'auto', cellOptions: { type: 'auto' }, filterable: true, inspect: false },
              transformations=[{ id: 'organize', options: {
                excludeByName: exclude,
                renameByName: if valueName == null then {} else { Value: valueName },
              } }]),

  // Every stat says its unit (Grafana's dashboard linter: panel-units-rule); 'none' for counts
  // and for values that mappings turn into words.
  stat(title, description, expr, unit, legend='', mappings=null, thresholds=null)::
    lib.panel('stat', title, description, [lib.target(expr, legend, instant=true)], unit=unit,
              mappings=mappings, thresholds=thresholds,
              options={ reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
                        colorMode: 'background', graphMode: 'none', textMode: 'auto',
                        justifyMode: 'auto', orientation: 'auto', wideLayout: true,
                        showPercentChange: false, percentChangeColorMode: 'standard' }),

  timeseries(title, description, targets, unit, stacked=false, bars=false)::
    lib.panel('timeseries', title, description, targets, unit=unit,
              custom={ drawStyle: if bars then 'bars' else 'line', lineWidth: 1,
                       fillOpacity: if bars then 60 else 10, showPoints: 'never', spanNulls: false,
                       stacking: { mode: if stacked then 'normal' else 'none', group: 'A' } },
              options={ legend: { displayMode: 'table', placement: 'right', showLegend: true,
                                  calcs: ['lastNotNull', 'max'] },
                        tooltip: { mode: 'multi', sort: 'desc' } }),

  // kind: 'state-timeline' or 'status-history'
  stateTimeline(kind, title, description, expr, legend, mappings, thresholds, unit=null)::
    lib.panel(kind, title, description, [lib.target(expr, legend)], unit=unit, mappings=mappings,
              thresholds=thresholds, custom={ fillOpacity: 80, lineWidth: 0 },
              options={ showValue: 'never', rowHeight: 0.9,
                        legend: { displayMode: 'list', placement: 'bottom', showLegend: true, calcs: [] },
                        tooltip: { mode: 'single', sort: 'none' } }
                      + (if kind == 'state-timeline' then { mergeValues: true, alignValue: 'left' }
                         else { colWidth: 0.9 })),

  // --- layout: [lib.row('Title'), lib.at(w, h, panel), ...] -> panels with ids and gridPos
  row(title):: { row: title },
  at(w, h, panel):: { w: w, h: h, panel: panel },
  layout(items)::
    local step(s, item) =
      if std.objectHas(item, 'row') then
        local wrapped = if s.x > 0 then { x: 0, y: s.y + s.rowH, rowH: 0 } else { x: s.x, y: s.y, rowH: s.rowH };
        {
          panels: s.panels + [{ id: std.length(s.panels) + 1, type: 'row', title: item.row, collapsed: false,
                                gridPos: { h: 1, w: 24, x: 0, y: wrapped.y }, panels: [] }],
          x: wrapped.x,
          y: wrapped.y + 1,
          rowH: wrapped.rowH,
        }
      else
        local wrapped = if s.x + item.w > 24 then { x: 0, y: s.y + s.rowH, rowH: 0 } else { x: s.x, y: s.y, rowH: s.rowH };
        {
          panels: s.panels + [item.panel { id: std.length(s.panels) + 1,
                                           gridPos: { h: item.h, w: item.w, x: wrapped.x, y: wrapped.y } }],
          x: wrapped.x + item.w,
          y: wrapped.y,
          rowH: std.max(wrapped.rowH, item.h),
        };
    std.foldl(step, items, { panels: [], x: 0, y: 0, rowH: 0 }).panels,

  // --- template variables
  // `current` is what a new viewer sees: Grafana's default data source, and All for the others.
  datasourceVariable:: {
    name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus',
    current: { selected: false, text: 'default', value: 'default' }, hide: 0, includeAll: false, multi: false, options: [], refresh: 1,
    regex: '', skipUrlSync: false,
  },
  queryVariable(name, label, metric, selector, labelName=name)::
    local query = if selector == '' then 'label_values(%s, %s)' % [metric, labelName]
                  else 'label_values(%s{%s}, %s)' % [metric, selector, labelName];
    {
      name: name, label: label, type: 'query', datasource: lib.datasource,
      definition: query, query: { query: query, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
      current: { selected: true, text: ['All'], value: ['$__all'] }, hide: 0, includeAll: true, multi: true, allValue: '.*', options: [],
      refresh: 2, regex: '', sort: 1, skipUrlSync: false,
    },

  dashboardLink(uid, title):: [{
    title: title, type: 'link', url: '/d/' + uid, includeVars: true, keepTime: true, icon: 'dashboard',
    tags: [], asDropdown: false, targetBlank: false, tooltip: title,
  }],

  dashboard(config, uid, title, description, panels, variables, links):: {
    uid: uid,
    title: title,
    description: description,
    tags: config.dashboardTags,
    schemaVersion: lib.schemaVersion,
    version: 1,
    editable: true,
    graphTooltip: 1,
    timezone: config.dashboardTimezone,
    refresh: config.dashboardRefresh,
    time: { from: 'now-6h', to: 'now' },
    timepicker: {},
    fiscalYearStartMonth: 0,
    liveNow: false,
    annotations: { list: [{
      builtIn: 1, datasource: { type: 'grafana', uid: '-- Grafana --' }, enable: true, hide: true,
      iconColor: 'rgba(0, 211, 255, 1)', name: 'Annotations & Alerts', type: 'dashboard',
    }] },
    links: links,
    templating: { list: variables },
    panels: panels,
  },
}
