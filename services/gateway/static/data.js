"use strict";
// Datasets page: the workspace's projects with their datasets and versions (projects/list, list_versions) and
// Restore (projects/restore_version: a new project naming the same objects). Benchmarks page: the workspace's
// reports (benchmarks/list) and the chosen ones compared metric by metric as charts (benchmarks/compare).

state.benchmarks = {chosen: null};

PAGES.datasets = async function datasets() {
  const ws = needWorkspace();
  const projects = (await api('projects/list', {workspace_id: ws})).projects;
  const out = [el('h2', {}, 'Datasets and versions'), el('div', {id: 'restored', role: 'status'})];
  if (!projects.length) { out.push(el('p', {class: 'muted'}, 'No projects in this workspace.')); return out; }
  const versions = await Promise.all(projects.map(p => api('projects/list_versions', {project_id: p.id})));
  projects.forEach((p, i) => {
    const card = el('section', {class: 'card', id: `project-${p.id}`, tabindex: '-1', 'aria-label': `Project ${p.name}`},
      el('h3', {}, p.name), el('p', {class: 'muted'}, `${p.description || 'no description'} · content `,
        el('code', {title: p.content_sha256}, p.content_sha256.slice(0, 12)),
        p.restored_from_version ? ` · restored from version id ${p.restored_from_version}` : ''),
      p.datasets.length
        ? table(`${p.datasets.length} dataset(s)`, ['dataset', 'kind', 'rows', 'files', 'rows sha256', 'updated'],
          p.datasets.map(d => [d.name, d.kind, String(d.row_count), String(d.file_count),
            el('code', {}, (d.rows_sha256 || '').slice(0, 12)), d.updated_at]))
        : el('p', {class: 'muted'}, 'No datasets.'));
    const vs = versions[i].versions;
    card.append(vs.length
      ? table(`${vs.length} version(s)`, ['version', 'title', 'description', 'manifest sha256', 'created', ''],
        vs.map(v => [`v${v.number}`, v.title || '', v.description || '', el('code', {title: v.manifest_sha256}, v.manifest_sha256.slice(0, 12)),
          v.created_at, el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Restore ${p.name} v${v.number}`,
            onclick: async () => {
              try {
                const restored = await api('projects/restore_version', {project_id: p.id, version_id: v.id});
                await openAt('datasets', `project-${restored.project.id}`);
                $('#restored').textContent = `Restored ${p.name} v${v.number} as the new project "${restored.project.name}"` +
                  (restored.skipped.length ? ` (left out, objects missing: ${restored.skipped.join(', ')})` : '') + '.';
              } catch (e) { $('#error').textContent = e.message; }
            }}, 'Restore')]))
      : el('p', {class: 'muted'}, 'No versions (create one with the SDK or `railyard datasets version`).'));
    out.push(card);
  });
  return out;
};

// COCOeval's twelve summary numbers (shared/evaluation.py DETECTION_SUMMARY): -1 means none of that kind to score
const COCO_SUMMARY = /(^|\.)(map_(50_95|50|75|small|medium|large)|ar_(1|10|100|small|medium|large))$/;
const absent = (metric, v) => v === -1 && COCO_SUMMARY.test(metric);

PAGES.benchmarks = async function benchmarks() {
  const ws = needWorkspace();
  const B = state.benchmarks;
  const reports = (await api('benchmarks/list', {workspace_id: ws})).reports;
  const out = [el('h2', {}, 'Benchmark reports')];
  if (!reports.length) { out.push(el('p', {class: 'muted'}, 'No benchmark reports in this workspace.')); return out; }
  const ids = new Set(reports.map(r => String(r.id)));
  if (!B.chosen || ![...B.chosen].some(id => ids.has(id))) {
    // the newest four of the newest report's task (compare takes one task): benchmarks/list answers the oldest
    // first, and reports[0] and slice(0, 4) chose the oldest report's task and its oldest four
    const task = reports[reports.length - 1].task;
    B.chosen = new Set(reports.filter(r => r.task === task).slice(-4).map(r => String(r.id)));
  }
  const boxes = reports.map(r => {
    const box = el('input', {type: 'checkbox', id: `report-pick-${r.id}`, value: r.id});
    box.checked = B.chosen.has(String(r.id));
    return box;
  });
  out.push(el('fieldset', {}, el('legend', {}, 'Reports to compare (one task)'),
    table(`${reports.length} report(s)`, ['', 'report', 'task', 'data', 'candidates', 'created'],
      reports.map((r, i) => [boxes[i], el('label', {for: `report-pick-${r.id}`, id: `report-${r.id}`}, r.name), r.task,
        r.dataset.dataset_name || r.dataset.name || showJSON(r.dataset).slice(0, 60),
        r.candidates.map(c => c.name).join(', '), r.created_at])),
    el('button', {class: 'btn', type: 'button', id: 'compare', onclick: () => {
      B.chosen = new Set(boxes.filter(b => b.checked).map(b => b.value));
      show('benchmarks');
    }}, 'Compare')));

  const chosen = reports.filter(r => B.chosen.has(String(r.id)));
  if (!chosen.length) { out.push(el('p', {class: 'muted'}, 'Pick at least one report.')); return out; }
  let compared;
  try {
    compared = await api('benchmarks/compare', {report_ids: chosen.map(r => r.id)});
  } catch (e) {
    // a choice compare refuses (reports of two tasks, more than it takes): said under the picker, which stays, so
    // the choice can be changed (the whole page was replaced by the error, and came back so while the choice lasted)
    out.push(el('p', {class: 'error', id: 'compare-error', role: 'alert'}, `Cannot compare these reports: ${e.message}`));
    return out;
  }
  const reportName = Object.fromEntries(reports.map(r => [r.id, r.name]));
  const names = compared.candidates.map(c => `${reportName[c.report_id]}: ${c.name} (report ${c.report_id})`);
  // COCO's summary numbers are -1 where there was nothing of that kind to score (map_small with no small
  // ground-truth box): absent, so no bar ("n/a" in the tables, nor a difference from or to it). They were drawn as
  // -1.0 bars below the axis, and the difference to a real value read e.g. 1.3
  const shown = (m, v) => absent(m.metric, v) ? null : v;
  const number = (m, v) => absent(m.metric, v) ? 'n/a' : fmtNumber(v);
  const bars = (id, title, metrics, axis) => chartFigure(id, title, {
    type: 'bar',
    data: {labels: metrics.map(m => m.metric), datasets: names.map((n, i) => ({label: n,
      data: metrics.map(m => shown(m, m.values[i])), backgroundColor: PALETTE[i % PALETTE.length]}))},
    options: {scales: {y: {beginAtZero: true, title: {display: true, text: axis}}}},
  }, ['metric', ...names], metrics.map(m => [m.metric, ...m.values.map(v => number(m, v))]));
  const quality = compared.metrics.filter(m => !m.metric.startsWith('speed.') && !m.metric.includes('per_class.')
    && !/(^|\.)(rows|support|calls)$/.test(m.metric));
  const speed = compared.metrics.filter(m => /^speed\.(p50_ms|p99_ms)$/.test(m.metric));
  const throughput = compared.metrics.filter(m => m.metric === 'speed.rows_per_s');
  out.push(el('section', {id: 'comparison', 'aria-label': 'Comparison'},
    el('h3', {}, `Compared: ${names.join(' vs ')}`),
    bars('bench-quality', 'Quality metrics per candidate', quality, 'value'),
    speed.length ? el('div', {class: 'grid2'}, bars('bench-latency', 'Latency per call (ms)', speed, 'ms'),
      bars('bench-throughput', 'Throughput (rows/s)', throughput, 'rows/s')) : '',
    el('details', {}, el('summary', {}, 'Every metric with its difference from the first candidate'),
      table('', ['metric', ...names.map(n => n), ...names.slice(1).map(n => `diff ${n}`)],
        compared.metrics.map(m => [m.metric, ...m.values.map(v => number(m, v)), ...m.diff.slice(1).map((d, i) =>
          absent(m.metric, m.values[0]) || absent(m.metric, m.values[i + 1]) ? 'n/a' : fmtNumber(d))])))));
  return out;
};
