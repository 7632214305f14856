"use strict";
// Charts for the Railyard web UI, drawn by the vendored Chart.js (static/vendor/). Each chart is a <figure> with
// a canvas (role="img" and a label saying what it shows) and the same numbers as a table that opens under it, so
// a screen reader or a keyboard user gets the data, not a picture of it.

const PALETTE = ['#0b5cad', '#c2410c', '#176f2c', '#7c3aed', '#a1001c', '#0e7490', '#6b4a00', '#4a5561'];
if (window.Chart) {
  Chart.defaults.animation = false;  // pages render at once (and screenshots show the final chart)
  Chart.defaults.font.family = 'system-ui, sans-serif';
  Chart.defaults.color = '#1b1f24';
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.datasets.bar.maxBarThickness = 64;
}

/** A figure holding one chart: `config` is a Chart.js configuration, `headers`/`rows` its data as a table. */
function chartFigure(id, title, config, headers, rows) {
  const canvas = el('canvas', {id, role: 'img', 'aria-label': title});
  const figure = el('figure', {class: 'chart-figure', 'data-chart': id},
    el('figcaption', {}, el('strong', {}, title)),
    el('div', {class: 'chart'}, canvas),
    el('details', {}, el('summary', {}, `${title}: the numbers`), table('', headers, rows)));
  afterRender.push(() => {
    if (!window.Chart) { canvas.replaceWith(el('p', {class: 'muted'}, 'Chart.js did not load: see the table.')); return; }
    charts.push(new Chart(canvas, config));
  });
  return figure;
}

/** A dashed horizontal line across a line chart (a threshold), as a dataset of constant values. */
function thresholdLine(label, value, n, color) {
  return {label, data: Array(n).fill(value), borderColor: color, borderDash: [6, 4], borderWidth: 2, pointRadius: 0,
    fill: false};
}

function fmtNumber(v, digits = 4) {
  return typeof v === 'number' && Number.isFinite(v) ? Number(v.toPrecision(digits)).toString() : String(v ?? '');
}
