"use strict";
// Lineage page: the workspace's workflow graph (workflow/graph) drawn by the vendored Cytoscape.js. Cards keep the
// look seed 000 gives them (title, description, icon, icon colours, link); a card opens in a panel with its
// neighbours, Expand (ask the API for the cards around it) and Collapse (hide what flows out of it), and a button
// that opens the resource it stands for on its own page. Every card is also a button in the list under the graph,
// so the graph works with the keyboard and a screen reader.

state.lineage = {selected: null, root: null};
let cy = null;
let ICONS = null;  // icon name -> SVG path (static/vendor/mdi-icons.json: Material Design Icons glyphs by zmdi name)

async function loadIcons() {
  if (ICONS) return ICONS;
  try { ICONS = await (await fetch('/static/vendor/mdi-icons.json')).json(); } catch (_) { ICONS = {}; }
  return ICONS;
}

/** A card's icon as an SVG data URL in its icon colour (null when the name has no glyph). */
function iconUrl(name, color) {
  const d = name && ICONS && ICONS[name];
  if (!d) return null;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path fill="${color}" d="${d}"/></svg>`;
  return 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svg);
}

const KIND_LOOK = {  // the default colours and shapes per kind (a card's own icon colours win)
  project: ['#e3f2fd', '#0b5cad', 'round-rectangle'], project_version: ['#e3f2fd', '#0b5cad', 'round-rectangle'],
  dataset: ['#e8f5e9', '#176f2c', 'round-rectangle'], file: ['#f4f6f8', '#4a5561', 'rectangle'],
  folder: ['#f4f6f8', '#4a5561', 'rectangle'], task_run: ['#fff4d6', '#6b4a00', 'ellipse'],
  orchestration: ['#fff4d6', '#6b4a00', 'hexagon'], labeling_job: ['#f3e8ff', '#6d28d9', 'ellipse'],
  app_session: ['#f3e8ff', '#6d28d9', 'ellipse'], model_version: ['#ede9fe', '#5b21b6', 'round-rectangle'],
  pipeline_version: ['#e0f2fe', '#0e7490', 'round-rectangle'], deployment: ['#dcfce7', '#176f2c', 'round-diamond'],
  assay: ['#fdecee', '#a1001c', 'round-tag'], benchmark: ['#ffedd5', '#c2410c', 'round-tag'],
};
const KIND_NAMES = {task_run: 'task run', project_version: 'project version', model_version: 'model version',
  pipeline_version: 'pipeline version', labeling_job: 'labeling job', app_session: 'app session'};
const kindName = (k) => KIND_NAMES[k] || k;
// the lineage service's default links (graph.py DEFAULT_LOOK) name resources, not pages: the UI opens its own page
const DEFAULT_URL = /^\/(projects|datasets|tasks\/runs|apps\/sessions)\/[^/]+$/;

/** Where a card's resource is shown in this UI: a page and the id of the element to focus there, or null. */
function resourceOf(card) {
  const d = card.data || {};
  switch (card.kind) {
    case 'model_version': return d.model_id != null && {page: 'models', id: `model-${d.model_id}`, label: 'model'};
    case 'pipeline_version': case 'deployment':
      return d.pipeline_id != null && {page: 'pipelines', id: `pipeline-${d.pipeline_id}`,
        label: card.kind === 'deployment' ? 'deployment' : 'pipeline'};
    case 'assay': return {page: 'assays', id: `assay-${card.ref}`, label: 'assay',
      prepare: () => Object.assign(state.assays, {pipeline: Number(d.pipeline_id), assay: Number(card.ref), window: 0, pages: 1})};
    case 'task_run': return d.task_id && {page: 'tasks', id: `run-${card.ref}`, label: 'task run',
      prepare: () => Object.assign(state.tasks, {task: d.task_id, run: card.ref, pages: 1, sought: null})};
    case 'project': return {page: 'datasets', id: `project-${card.ref}`, label: 'project'};
    case 'project_version': return d.project_id != null && {page: 'datasets', id: `project-${d.project_id}`, label: 'project'};
    case 'benchmark': return {page: 'benchmarks', id: `report-${card.ref}`, label: 'report',
      prepare: () => { state.benchmarks.chosen = new Set([card.ref]); }};
    default: return null;
  }
}

function openResource(card) {
  const target = resourceOf(card);
  if (!target) return;
  if (target.prepare) target.prepare();
  openAt(target.page, target.id, target.label);
}

function cardElements(graph) {
  const nodes = graph.nodes.map(n => {
    const [bg, fg, shape] = KIND_LOOK[n.kind] || ['#f4f6f8', '#4a5561', 'round-rectangle'];
    const color = n.settings.icon_color || fg;
    const icon = iconUrl(n.settings.icon, color);
    return {group: 'nodes', classes: icon ? 'iconic' : '', data: {id: String(n.id), label: `${n.title}\n${kindName(n.kind)}`,
      card: n, bg: n.settings.icon_bg_color || bg, fg: color, shape, icon: icon || ''}};
  });
  const edges = graph.edges.map(e => ({group: 'edges', data: {id: `e${e.id}`, source: String(e.source),
    target: String(e.target), label: e.settings.title || e.relation, origin: e.origin}}));
  return [...nodes, ...edges];
}

function drawGraph(container, graph) {
  if (cy) cy.destroy();
  cy = cytoscape({
    container, elements: cardElements(graph), wheelSensitivity: 0.3, minZoom: 0.2, maxZoom: 2.5,
    style: [
      {selector: 'node', style: {shape: 'data(shape)', 'background-color': 'data(bg)', 'border-color': 'data(fg)',
        'border-width': 2, label: 'data(label)', 'text-wrap': 'wrap', 'text-max-width': 150, 'text-valign': 'center',
        'font-size': 12, color: '#1b1f24', width: 180, height: 50}},
      {selector: 'node.iconic', style: {'background-image': 'data(icon)', 'background-width': 22, 'background-height': 22,
        'background-position-x': 10, 'background-position-y': '50%', 'background-clip': 'none', 'text-margin-x': 12,
        'text-max-width': 130}},
      {selector: 'node:selected', style: {'border-width': 4, 'border-color': '#f0a000'}},
      {selector: 'node.collapsed', style: {'border-style': 'double', 'border-width': 6}},
      {selector: '.hidden', style: {display: 'none'}},
      {selector: 'edge', style: {width: 2, 'line-color': '#8a949e', 'target-arrow-color': '#8a949e',
        'target-arrow-shape': 'triangle', 'curve-style': 'bezier', label: 'data(label)', 'font-size': 9,
        color: '#4a5561', 'text-background-color': '#fff', 'text-background-opacity': 1}},
      {selector: 'edge[origin = "explicit"]', style: {'line-style': 'dashed'}},
    ],
    layout: {name: 'breadthfirst', directed: true, spacingFactor: 1.1, padding: 20},
  });
  cy.on('tap', 'node', (ev) => selectCard(ev.target.id()));
  window.railyardGraph = cy;  // for people poking at the page from the console (and the browser tests' positions)
}

function relayout() { cy.elements(':visible').layout({name: 'breadthfirst', directed: true, spacingFactor: 1.1, padding: 20}).run(); }

function cardButton(node, text) {
  const card = node.data('card');
  return el('button', {class: 'btn secondary', type: 'button', 'data-card': node.id(),
    onclick: () => selectCard(node.id())}, text || `${card.title} (${kindName(card.kind)})`);
}

/** A card's link as an address on this instance, or null. The API keeps links relative (a single '/' first), but a
 *  browser reads '/\host' (a backslash, or a tab or newline, between the slashes) as '//host': another site. */
function instanceUrl(url) {
  try {
    const resolved = new URL(url, location.origin);
    return resolved.origin === location.origin ? resolved.href : null;
  } catch (_) { return null; }
}

function selectCard(id) {
  const node = cy.getElementById(id);
  if (!node.length) return;
  state.lineage.selected = id;
  cy.$(':selected').unselect(); node.select();
  const card = node.data('card');
  const s = card.settings || {};
  const panel = $('#card-panel');
  const res = resourceOf(card);
  const href = s.url && !DEFAULT_URL.test(s.url) ? instanceUrl(s.url) : null;
  // a link that leaves the instance is shown as text, not followed
  const link = href ? el('a', {href}, s.url_title || s.url)
    : s.url && !DEFAULT_URL.test(s.url) ? el('span', {class: 'muted', id: 'card-offsite'},
      `${s.url_title || 'link'}: ${JSON.stringify(s.url)} (not on this instance: not a link)`) : null;
  const downstream = node.successors('node');
  const listOf = (nodes) => nodes.length ? el('ul', {}, nodes.map(n => el('li', {}, cardButton(n)))) : el('p', {class: 'muted'}, 'none');
  panel.replaceChildren(
    el('div', {class: 'row'},
      el('span', {class: 'icon', style: `background:${node.data('bg')};color:${node.data('fg')};border-color:${node.data('fg')}`,
        title: s.icon ? `icon: ${s.icon}` : kindName(card.kind), 'aria-hidden': 'true'},
        node.data('icon') ? el('img', {src: node.data('icon'), alt: '', width: 22, height: 22})
          : (s.icon || card.kind).slice(0, 2).toUpperCase()),
      el('h3', {id: 'card-title'}, card.title)),
    el('p', {class: 'muted'}, `${kindName(card.kind)} · ${card.ref}` + (s.icon ? ` · icon ${s.icon}` : '')),
    s.description ? el('p', {}, s.description) : '',
    link ? el('p', {}, link) : '',
    el('div', {class: 'row'},
      res ? el('button', {class: 'btn', type: 'button', id: 'card-open', onclick: () => openResource(card)},
        `Open ${res.label}`) : '',
      el('button', {class: 'btn secondary', type: 'button', id: 'card-expand', onclick: () => expand(node)}, 'Expand'),
      el('button', {class: 'btn secondary', type: 'button', id: 'card-collapse', onclick: () => collapse(node)}, 'Collapse')),
    el('h4', {}, 'Comes from'), listOf(node.incomers('node')),
    el('h4', {}, 'Flows into'), listOf(node.outgoers('node')),
    el('h4', {}, `Downstream (${downstream.length})`), listOf(downstream.filter(n => n.data('card').kind === 'deployment')
      .union(downstream).slice(0, 30)),
    Object.keys(card.data || {}).length ? el('details', {}, el('summary', {}, 'Details'),
      el('pre', {}, showJSON(card.data, 1))) : '');
}

function collapse(node) {
  // hide what flows out of the card (and its arrows); cards that also come from elsewhere visible stay
  const hide = node.successors();
  hide.addClass('hidden');
  node.addClass('collapsed');
  relayout();
  selectCard(node.id());
}

async function expand(node) {
  const card = node.data('card');
  try {
    const around = await api('workflow/graph', {workspace_id: needWorkspace(), kind: card.kind, ref: card.ref,
      depth: 1, direction: 'both'});
    const fresh = cardElements(around).filter(e => !cy.getElementById(e.data.id).length);
    cy.add(fresh);
    node.successors().removeClass('hidden');
    node.removeClass('collapsed');
    relayout();
    selectCard(node.id());
    renderCardList();
  } catch (e) { $('#error').textContent = e.message; }
}

function renderCardList() {
  const list = $('#card-list');
  if (!list) return;
  list.replaceChildren(...cy.nodes().sort((a, b) => a.data('card').kind.localeCompare(b.data('card').kind))
    .map(n => el('li', {}, cardButton(n))));
}

PAGES.lineage = async function lineage() {
  const ws = needWorkspace();
  const L = state.lineage;
  const [graph] = await Promise.all([
    api('workflow/graph', L.root ? {workspace_id: ws, ...L.root, depth: 3} : {workspace_id: ws}), loadIcons()]);
  const out = [el('h2', {}, 'Lineage')];
  if (!graph.nodes.length) {
    out.push(el('p', {class: 'muted'}, 'Nothing drawn yet: cards appear as models are uploaded, pipelines deployed, tasks run.'));
    return out;
  }
  const box = el('div', {id: 'graph', 'aria-label': 'Lineage graph: the same cards are listed as buttons below'});
  out.push(el('p', {class: 'muted'}, `${graph.nodes.length} card(s), ${graph.edges.length} arrow(s). Click a card (or pick it in the list) to open it; arrows point the way data flows.`),
    el('div', {class: 'lineage'}, box, el('aside', {id: 'card-panel', 'aria-live': 'polite', 'aria-label': 'Selected card'},
      el('p', {class: 'muted'}, 'No card selected.'))),
    el('h3', {}, 'Cards'), el('ul', {id: 'card-list', class: 'cards'}));
  afterRender.push(() => {
    if (!window.cytoscape) { box.replaceWith(el('p', {class: 'muted'}, 'Cytoscape.js did not load: use the list.')); return; }
    drawGraph(box, graph);
    renderCardList();
    if (L.selected && cy.getElementById(L.selected).length) selectCard(L.selected);
  });
  return out;
};
