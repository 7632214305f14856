"use strict";
// Assays page: a pipeline's assays (assays/list), one assay's stored results (assays/get_results) as its score
// over time against the warning and alert thresholds, a window's bins against the baseline's, and the alerts.

state.assays = {pipeline: null, assay: null, window: 0, pages: 1};

// an assay's results are read RESULT_PAGE windows at a time, newest first (assays/get_results' `limit`), and
// "Show older windows" reads the next page: `end` is the oldest window shown (a page's windows start before it; an
// assay scores a window start once). The tests make it smaller.
let RESULT_PAGE = 500;

/** The newest `pages` pages of an assay's results and whether older ones follow. */
async function resultPages(assayId, pages) {
  const results = [];
  for (let n = 0; n < pages; n++) {
    const end = results.length ? {end: results[results.length - 1].window_start} : {};
    const page = await api('assays/get_results', {assay_id: assayId, limit: RESULT_PAGE + 1, ...end});
    results.push(...page.slice(0, RESULT_PAGE));
    if (page.length <= RESULT_PAGE) return {results, more: false};
  }
  return {results, more: true};
}

// A stored result with `logs_complete: false` was scored after the assay runner stopped waiting for the log store
// (assays.max_log_wait, 600 s by default): records published before the window was due may be missing from it.
// Results stored before 2026-12-02 have no `logs_complete` and get no mark.
const INCOMPLETE_WHY = 'the log store had not stored all the records published ' +
  'before this window was due, and the assay runner stopped waiting after max_log_wait ' +
  '(RAILYARD_ASSAYS__MAX_LOG_WAIT, 600 s by default). Late rows are not in this score, and a scored window is not ' +
  'scored again. Check that the log store is up and keeping up (health page), then score the same window with an ' +
  'interactive run (assays/run_interactive) to compare.';
const INCOMPLETE_LOGS = `Scored without every logged record: ${INCOMPLETE_WHY}`;
const logsIncomplete = r => r.logs_complete === false;
const incompleteBadge = () => el('span', {class: 'badge incomplete-logs', title: INCOMPLETE_LOGS, tabindex: '0',
  'aria-label': `incomplete logs: ${INCOMPLETE_LOGS}`}, 'incomplete logs');

PAGES.assays = async function assays() {
  const ws = needWorkspace();
  const S = state.assays;
  const pipelines = await apiPages('pipelines/list', {workspace_id: ws}, 'pipelines');
  const out = [el('h2', {}, 'Assays')];
  if (!pipelines.length) { out.push(el('p', {class: 'muted'}, 'No pipelines in this workspace.')); return out; }
  if (!pipelines.some(p => p.id === S.pipeline)) Object.assign(S, {pipeline: pipelines[0].id, assay: null, window: 0, pages: 1});
  const pick = el('select', {id: 'assay-pipeline'}, pipelines.map(p => el('option', {value: p.id}, p.name)));
  pick.value = String(S.pipeline);
  pick.addEventListener('change', () => { Object.assign(S, {pipeline: Number(pick.value), assay: null, window: 0, pages: 1}); show('assays'); });
  out.push(el('div', {class: 'row'}, el('label', {for: 'assay-pipeline'}, 'Pipeline'), pick));

  const list = await apiPages('assays/list', {pipeline_id: S.pipeline});
  if (!list.length) { out.push(el('p', {class: 'muted'}, 'No assays on this pipeline.')); return out; }
  if (!list.some(a => a.id === S.assay)) Object.assign(S, {assay: list[0].id, window: 0, pages: 1});
  out.push(table(`${list.length} assay(s)`, ['name', 'field', 'active', 'warning', 'alert', 'last run', 'next run', ''],
    list.map(a => [a.name, el('code', {}, a.iopath), a.active ? 'yes' : 'no', fmtNumber(a.warning_threshold),
      fmtNumber(a.alert_threshold), a.last_run || '', a.active ? (a.next_run || '') : '',
      el('div', {class: 'row'},
        el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Results of ${a.name}`,
          'aria-pressed': String(a.id === S.assay), onclick: () => { Object.assign(S, {assay: a.id, window: 0, pages: 1}); show('assays'); }},
          'Results'),
        el('button', {class: 'btn secondary', type: 'button', 'aria-label': `${a.active ? 'Pause' : 'Resume'} ${a.name}`,
          onclick: async () => {
            try { await api('assays/set_active', {id: a.id, active: !a.active}); show('assays'); }
            catch (e) { $('#error').textContent = e.message; }
          }}, a.active ? 'Pause' : 'Resume'))])));

  const assay = list.find(a => a.id === S.assay);
  const {results, more} = await resultPages(assay.id, S.pages);
  const section = el('section', {id: `assay-${assay.id}`, tabindex: '-1', 'aria-label': `Assay ${assay.name}`},
    el('h3', {}, `${assay.name}: ${assay.iopath}`),
    el('p', {class: 'muted'}, `${assay.summarizer.metric} over ${assay.summarizer.bin_mode || 'provided'} bins ` +
      `(${assay.summarizer.aggregation}); window ${assay.window.width}`));
  out.push(section);
  if (!results.length) {
    section.append(el('p', {class: 'muted'}, 'No windows scored yet: a window is scored once it has closed and has logged values.'));
    return out;
  }
  const incomplete = results.filter(logsIncomplete);
  if (incomplete.length) {
    section.append(el('p', {class: 'incomplete-logs-note', role: 'note'}, incompleteBadge(),
      ` ${incomplete.length} of ${results.length} window(s) were scored without every logged record: ${INCOMPLETE_WHY}`));
  }
  const oldest = [...results].reverse();  // the API answers newest first
  const times = oldest.map(r => r.window_start);
  const labels = times.map(t => t.replace('T', ' ').replace(/\.\d+/, '').replace('Z', '').replace('+00:00', ''));
  // the last "Show older windows" takes its button away: the focus goes to the line saying every window is shown
  // (before: nowhere, the focused button gone)
  if (!more && state.focus === 'assay-older') state.focus = 'assay-windows-shown';
  section.append(el('div', {class: 'row'}, el('span', {class: 'muted', id: 'assay-windows-shown', tabindex: '-1'},
    more ? `The newest ${results.length} windows; older ones not shown yet.` : `All ${results.length} scored window(s) shown.`),
  ...(more ? [el('button', {class: 'btn secondary', type: 'button', id: 'assay-older',
    'aria-label': `Show ${RESULT_PAGE} older windows of ${assay.name}`,
    onclick: () => { S.pages++; state.focus = 'assay-older'; show('assays'); }}, 'Show older windows')] : [])));
  section.append(chartFigure('assay-scores', `Score per window (${results.length} windows) against the thresholds`, {
    type: 'line',
    data: {labels, datasets: [
      {label: 'score', data: oldest.map(r => r.score), borderColor: PALETTE[0], backgroundColor: PALETTE[0],
        pointBackgroundColor: oldest.map(r => r.status === 'Alert' ? '#a1001c' : r.status === 'Warning' ? '#c27c00' : '#176f2c'),
        pointStyle: oldest.map(r => logsIncomplete(r) ? 'triangle' : 'circle'),
        pointRadius: oldest.map(r => logsIncomplete(r) ? 7 : 4), tension: 0.15},
      thresholdLine('alert threshold', assay.alert_threshold, oldest.length, '#a1001c'),
      ...(assay.warning_threshold != null ? [thresholdLine('warning threshold', assay.warning_threshold, oldest.length, '#c27c00')] : [])]},
    options: {scales: {y: {beginAtZero: true, title: {display: true, text: 'score'}},
      x: {title: {display: true, text: 'window start (UTC)'}}}},
  }, ['window start', 'score', 'status', 'logs'], oldest.map(r => [r.window_start, fmtNumber(r.score, 6), r.status,
    logsIncomplete(r) ? incompleteBadge() : r.logs_complete ? 'complete' : ''])));

  S.window = Math.min(S.window, results.length - 1);
  const chosen = results[S.window];
  const pickWindow = el('select', {id: 'assay-window'}, results.map((r, i) =>
    el('option', {value: i}, `${r.window_start} · ${r.status} · ${fmtNumber(r.score)}` +
      (logsIncomplete(r) ? ' · incomplete logs' : ''))));
  pickWindow.value = String(S.window);
  pickWindow.addEventListener('change', () => { S.window = Number(pickWindow.value); show('assays'); });
  const base = chosen.baseline_summary, win = chosen.window_summary;
  const names = base.edge_names || base.aggregated_values.map((_, i) => `bin ${i}`);
  section.append(el('div', {class: 'row'}, el('label', {for: 'assay-window'}, 'Window'), pickWindow,
      logsIncomplete(chosen) ? incompleteBadge() : ''),
    chartFigure('assay-bins', `Baseline vs window ${chosen.window_start}: ${base.aggregation || assay.summarizer.aggregation} per bin`, {
      type: 'bar',
      data: {labels: names, datasets: [
        {label: `baseline (${base.count} values)`, data: base.aggregated_values, backgroundColor: '#8aa9c8'},
        {label: `window (${win.count} values)`, data: win.aggregated_values, backgroundColor: '#c2410c'}]},
      options: {scales: {y: {beginAtZero: true}}},
    }, ['bin', 'baseline', 'window', 'score'], names.map((n, i) => [n, fmtNumber(base.aggregated_values[i]),
      fmtNumber(win.aggregated_values[i]), fmtNumber((chosen.scores || [])[i])])));

  const alerts = results.filter(r => r.status === 'Alert' || r.status === 'Warning');
  section.append(el('h3', {}, 'Alerts'), alerts.length
    ? table(`${alerts.length} window(s) above a threshold, newest first`, ['window start', 'status', 'score', 'threshold'],
      alerts.map(r => [r.window_start, el('span', {}, el('span', {class: `badge ${r.status}`}, r.status),
        logsIncomplete(r) ? [' ', incompleteBadge()] : ''), fmtNumber(r.score, 6),
        fmtNumber(r.status === 'Alert' ? r.alert_threshold : r.warning_threshold)]))
    : el('p', {class: 'muted'}, 'No window crossed a threshold.'));
  return out;
};
