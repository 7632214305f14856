"use strict";
// Monitoring (seed 003): a deployment's dashboard from get_stats (predictions, reviews, label distributions, drift
// against the training-data reference, any ServiceMetrics view as JSON), and the review queue: each prediction's
// image with its boxes drawn over it, accepted as it is or corrected (classes, boxes) with review_prediction.

state.monitoring = {deployment: null, view: 'AGGREGATED_PREDICTIONS_DATA', since: '', tags: ''};
state.review = {deployment: null, current: null, message: '', pages: 1};

// the review queue is read REVIEW_PAGE predictions at a time, oldest first (list_predictions_to_review's `limit`, then
// each page's `next_cursor` as `cursor`); "Show newer predictions" reads the next page under the ones listed. By cursor,
// not offset: a prediction someone else reviewed between two pages moved every later one a place down the offsets, so
// the next page skipped one never listed (and one reviewed after the list was drawn is still listed: no repeat).
// The tests make it smaller.
let REVIEW_PAGE = 20;

/** The first `pages` pages of a deployment's queue: {predictions (each once), pending, labels, next (the cursor after
 *  them, null at the end)}. */
async function reviewPages(deployment, pages) {
  const predictions = [], seen = new Set(), cursors = new Set();
  let answer = null, cursor = null;
  // the first page is the seed's (no cursor: `limit` predictions, never fewer by bytes, 422 reply_too_large when
  // they pass a reply): asked again with half as many until it fits; the pages after it stop at 4 MiB themselves
  let first = REVIEW_PAGE;
  for (let n = 0; n < pages; n++) {
    try {
      answer = await api('deployments/list_predictions_to_review', {deployment, limit: cursor ? REVIEW_PAGE : first, ...(cursor ? {cursor} : {})});
    } catch (e) {
      if (cursor || first <= 1 || !String(e.message).includes('reply_too_large')) throw e;
      first = Math.max(1, Math.floor(first / 2));
      n--;
      continue;
    }
    for (const x of answer.predictions) if (!seen.has(x.id)) { seen.add(x.id); predictions.push(x); }
    cursor = answer.next_cursor || null;
    if (!cursor) break;
    if (cursors.has(cursor)) throw new ApiError(`list_predictions_to_review: cursor ${cursor} answered again: the list does not advance`);
    cursors.add(cursor);
  }
  return {...answer, predictions, next: cursor};
}

const SERVICE_METRICS = ['AGGREGATED_PREDICTIONS_DATA', 'PREDICTIONS_DATA', 'REVIEWS_CLASSIFICATION_STATS',
  'REVIEWS_OBJECT_DETECTION_STATS', 'REVIEWS_LABEL_DISTRIBUTION_STATS', 'AGGREGATED_LABEL_DISTRIBUTION',
  'AGGREGATED_OBJECT_DETECTION_STATS', 'AGGREGATED_DRIFTING_PREDICTIONS', 'PREDICTIONS_OUTLYING_SCORE'];

/** The image configuration's labels in a pipeline definition (key `image` of a model step), or []. */
function labelsIn(definition) {
  let found = [];
  const walk = (node) => {
    if (found.length || node === null || typeof node !== 'object') return;
    if (node.image && Array.isArray(node.image.labels)) { found = node.image.labels; return; }
    Object.values(node).forEach(walk);
  };
  walk(definition);
  return found;
}

/** The workspace's deployments: name, pipeline and the labels of the deployed version. */
async function deploymentsOf(ws) {
  const pipelines = await apiPages('pipelines/list', {workspace_id: ws}, 'pipelines');
  return pipelines.filter(p => p.deployment).map(p => {
    const version = p.versions.find(v => v.id === p.deployment.pipeline_version_pk_id) || p.versions[p.versions.length - 1];
    return {name: p.deployment.name, pipeline: p.name, labels: labelsIn(version ? version.definition : {})};
  });
}

function deploymentPicker(id, deployments, chosen, onChange) {
  const pick = el('select', {id}, deployments.map(d => el('option', {value: d.name}, `${d.name} (${d.pipeline})`)));
  pick.value = chosen;
  pick.addEventListener('change', () => onChange(pick.value));
  return el('div', {class: 'row'}, el('label', {for: id}, 'Deployment'), pick);
}

const labelName = (labels, c) => labels[c] !== undefined ? `${labels[c]} (${c})` : String(c);

// --- the dashboard ---------------------------------------------------------------------------------------

PAGES.monitoring = async function monitoring() {
  const ws = needWorkspace();
  const M = state.monitoring;
  const deployments = await deploymentsOf(ws);
  const out = [el('h2', {}, 'Monitoring')];
  if (!deployments.length) { out.push(el('p', {class: 'muted'}, 'No deployments in this workspace.')); return out; }
  if (!deployments.some(d => d.name === M.deployment)) M.deployment = deployments[0].name;
  const dep = deployments.find(d => d.name === M.deployment);
  out.push(deploymentPicker('mon-deployment', deployments, M.deployment, (v) => { M.deployment = v; show('monitoring'); }));
  // filters for every view: the last N seconds, and predictions having every one of these tags (as get_stats keeps them)
  const filters = {};
  if (M.since) filters.since = Number(M.since);
  if (M.tags.trim()) filters.tags = M.tags.split(',').map(t => t.trim()).filter(Boolean);
  const since = el('select', {id: 'mon-since'}, [['', 'all time'], ['3600', 'last hour'], ['86400', 'last 24 hours'],
    ['604800', 'last 7 days']].map(([v, t]) => el('option', {value: v}, t)));
  since.value = M.since;
  const tags = el('input', {id: 'mon-tags', size: 24, value: M.tags, placeholder: 'cam-1, cam-2'});
  const form = el('form', {class: 'row', id: 'mon-filters', 'aria-label': 'Filters'},
    el('label', {for: 'mon-since'}, 'Predictions of'), since, el('label', {for: 'mon-tags'}, 'Tags'), tags,
    el('button', {class: 'btn secondary', type: 'submit'}, 'Apply'));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); Object.assign(M, {since: since.value, tags: tags.value}); show('monitoring'); });
  out.push(form);
  const stats = (service) => api('deployments/get_stats', {deployment: dep.name, service, ...filters})
    .then(r => r.stats, e => ({error: e.message}));
  const [data, queue, classes, boxes, labels, drift, info] = await Promise.all([stats('AGGREGATED_PREDICTIONS_DATA'),
    api('deployments/list_predictions_to_review', {deployment: dep.name, limit: 1}).catch(e => ({error: e.message})),
    stats('REVIEWS_CLASSIFICATION_STATS'), stats('REVIEWS_OBJECT_DETECTION_STATS'),
    stats('REVIEWS_LABEL_DISTRIBUTION_STATS'), stats('AGGREGATED_DRIFTING_PREDICTIONS'),
    api('deployments/retrieve_information', {deployment: dep.name}).catch(e => ({error: e.message}))]);
  if (data.error) throw new ApiError(data.error);

  const figure = (label, value, id) => el('div', {class: 'card stat'}, el('div', {class: 'muted'}, label),
    el('div', {class: 'big', id}, String(value ?? '–')));
  out.push(el('div', {class: 'stats'},
    figure('predictions', data.count, 'mon-predictions'), figure('reviewed', data.reviewed, 'mon-reviewed'),
    figure('waiting for review', queue.error ? '?' : queue.pending, 'mon-pending'),
    figure('latency p50 (s)', data.latency && data.latency.count ? fmtNumber(data.latency.p50, 3) : '–', 'mon-latency'),
    figure('kinds', Object.entries(data.kind || {}).map(([k, n]) => `${k} ${n}`).join(', ') || '–', 'mon-kinds')),
    el('p', {class: 'muted'}, `First ${data.first || '–'} · last ${data.last || '–'} · origin ` +
      (Object.entries(data.origin || {}).map(([k, n]) => `${k} ${n}`).join(', ') || '–')));

  const hours = Object.entries(data.per_hour || {});
  if (hours.length) out.push(chartFigure('mon-per-hour', 'Predictions per hour (UTC)', {
    type: 'bar', data: {labels: hours.map(([h]) => h.slice(0, 13).replace('T', ' ')),
      datasets: [{label: 'predictions', data: hours.map(([, n]) => n), backgroundColor: PALETTE[0]}]},
    options: {scales: {y: {beginAtZero: true, ticks: {precision: 0}}}},
  }, ['hour', 'predictions'], hours.map(([h, n]) => [h, String(n)])));

  // reviews: how the champion (and its shadow) did against what people said
  const detection = (data.kind || {}).detection || (data.kind || {}).segmentation;
  const reviews = el('section', {id: 'mon-reviews', 'aria-label': 'Reviews'}, el('h3', {}, 'Reviews'));
  out.push(reviews);
  if (detection && !boxes.error && boxes.reviews) {
    const keys = ['map_50_95', 'map_50', 'map_75', 'precision_50', 'recall_50', 'mean_iou_50']
      .filter(k => typeof boxes.champion[k] === 'number');
    const shadow = boxes.shadow && boxes.shadow.images ? boxes.shadow : null;
    reviews.append(el('p', {}, `${boxes.reviews} reviewed prediction(s), boxes scored with COCO's evaluator`),
      chartFigure('mon-review-scores', 'Reviewed detections: champion' + (shadow ? ' vs shadow' : ''), {
        type: 'bar', data: {labels: keys, datasets: [
          {label: 'champion', data: keys.map(k => boxes.champion[k]), backgroundColor: PALETTE[0]},
          ...(shadow ? [{label: 'shadow', data: keys.map(k => shadow[k]), backgroundColor: PALETTE[1]}] : [])]},
        options: {scales: {y: {beginAtZero: true, suggestedMax: 1}}},
      }, ['metric', 'champion', ...(shadow ? ['shadow'] : [])],
      keys.map(k => [k, fmtNumber(boxes.champion[k]), ...(shadow ? [fmtNumber(shadow[k])] : [])])));
  } else if (!classes.error && classes.reviews) {
    const keys = ['accuracy'];
    const champion = classes.champion, shadow = classes.shadow && classes.shadow.rows ? classes.shadow : null;
    const value = (m, k) => k === 'accuracy' ? m.accuracy : (m.macro || {})[k.split('.')[1]];
    keys.push('macro.precision', 'macro.recall', 'macro.f1');
    reviews.append(el('p', {}, `${classes.reviews} review(s): ${classes.accepted} accepted, ${classes.corrected} corrected`),
      chartFigure('mon-review-scores', 'Reviewed classifications: champion' + (shadow ? ' vs shadow' : ''), {
        type: 'bar', data: {labels: keys, datasets: [
          {label: 'champion', data: keys.map(k => value(champion, k)), backgroundColor: PALETTE[0]},
          ...(shadow ? [{label: 'shadow', data: keys.map(k => value(shadow, k)), backgroundColor: PALETTE[1]}] : [])]},
        options: {scales: {y: {beginAtZero: true, suggestedMax: 1}}},
      }, ['metric', 'champion', ...(shadow ? ['shadow'] : [])],
      keys.map(k => [k, fmtNumber(value(champion, k)), ...(shadow ? [fmtNumber(value(shadow, k))] : [])])));
  } else {
    reviews.append(el('p', {class: 'muted'}, 'No reviews yet: review predictions in the review queue.'));
  }
  if (!labels.error && labels.reviews) {
    const keys = Object.keys(labels.difference);
    reviews.append(chartFigure('mon-labels', 'Labels of the reviewed predictions: what people said vs what was predicted', {
      type: 'bar', data: {labels: keys.map(k => labelName(dep.labels, k)), datasets: [
        {label: 'reviewed (ground truth)', data: keys.map(k => labels.ground_truth.counts[k] || 0), backgroundColor: PALETTE[2]},
        {label: 'predicted', data: keys.map(k => labels.predicted.counts[k] || 0), backgroundColor: PALETTE[0]}]},
      options: {scales: {y: {beginAtZero: true, ticks: {precision: 0}}}},
    }, ['label', 'reviewed', 'predicted'], keys.map(k => [labelName(dep.labels, k),
      String(labels.ground_truth.counts[k] || 0), String(labels.predicted.counts[k] || 0)])));
  }

  // drift against the training-data reference (the API says what is missing when there is none)
  const driftBox = el('section', {id: 'mon-drift', 'aria-label': 'Drift'}, el('h3', {}, 'Drift against the training data'));
  out.push(driftBox);
  if (drift.error) driftBox.append(el('p', {class: 'muted'}, drift.error));
  else {
    const names = Object.keys(drift.features);
    driftBox.append(el('p', {}, `${drift.drifting} of ${drift.predictions} prediction(s) outlying ` +
      `(score above ${drift.threshold}); largest PSI ${fmtNumber(drift.max_psi)}: ${drift.drift}`),
      chartFigure('mon-drift-psi', 'PSI of each image feature against the training reference', {
        type: 'bar', data: {labels: names, datasets: [{label: 'PSI', data: names.map(n => drift.features[n].psi),
          backgroundColor: names.map(n => drift.features[n].psi > 0.25 ? '#a1001c' : drift.features[n].psi > 0.1 ? '#c27c00' : '#176f2c')}]},
        options: {scales: {y: {beginAtZero: true}}},
      }, ['feature', 'PSI', 'mean', 'reference mean'], names.map(n => [n, fmtNumber(drift.features[n].psi),
        fmtNumber(drift.features[n].mean), fmtNumber(drift.features[n].reference_mean)])));
  }

  // continuous training and deployment: their state, and why a trained model version is not served yet (ui.html)
  out.push(continuousDetails(info.error ? {error: info.error} : info.continuous));

  // any view, as the API answers it
  const view = el('select', {id: 'mon-view'}, SERVICE_METRICS.map(s => el('option', {value: s}, s)));
  view.value = M.view;
  const shown = el('pre', {id: 'mon-view-json', tabindex: '0', 'aria-label': 'The view as the API answers it'});
  const load = async () => {
    M.view = view.value;
    shown.textContent = 'Loading…';
    try { shown.textContent = showJSON(await api('deployments/get_stats', {deployment: dep.name, service: M.view, ...filters}), 1); }
    catch (e) { shown.textContent = e.message; }
  };
  view.addEventListener('change', load);
  out.push(el('h3', {}, 'Any view (get_stats)'), el('div', {class: 'row'}, el('label', {for: 'mon-view'}, 'ServiceMetrics'), view),
    shown);
  afterRender.push(load);
  return out;
};

// --- the review queue ------------------------------------------------------------------------------------

const BOX_COLORS = ['#be123c', '#1d4ed8', '#15803d', '#b45309', '#7c3aed', '#0e7490'];  // white text on each: 4.5:1 or more

function drawPrediction(canvas, image, boxes, shadowBoxes, labels) {
  const scale = Math.min(480 / image.width, 360 / image.height);
  canvas.width = Math.round(image.width * scale); canvas.height = Math.round(image.height * scale);
  const g = canvas.getContext('2d');
  g.imageSmoothingEnabled = scale < 1;
  g.drawImage(image, 0, 0, canvas.width, canvas.height);
  const box = (b, color, dashed, text) => {
    const [top, left, bottom, right] = b.box;
    g.setLineDash(dashed ? [6, 4] : []); g.lineWidth = 3; g.strokeStyle = color;
    g.strokeRect(left * scale, top * scale, (right - left) * scale, (bottom - top) * scale);
    g.setLineDash([]); g.font = '13px system-ui, sans-serif';
    const w = g.measureText(text).width + 8;
    g.fillStyle = color; g.fillRect(left * scale, Math.max(0, top * scale - 18), w, 18);
    g.fillStyle = '#fff'; g.fillText(text, left * scale + 4, Math.max(13, top * scale - 5));
  };
  shadowBoxes.forEach(b => box(b, '#6b7280', true, `shadow ${labelName(labels, b.cls)}`));
  boxes.forEach((b, i) => box(b, BOX_COLORS[i % BOX_COLORS.length], false,
    `${i + 1}: ${labelName(labels, b.cls)}${b.score != null ? ' ' + fmtNumber(b.score, 2) : ''}`));
  canvas.dataset.boxes = String(boxes.length);
  return scale;
}

function boxesOf(fmt) {
  if (!fmt || !fmt.detection_boxes) return [];
  return fmt.detection_boxes.map((box, i) => ({box: box.slice(0, 4).map(Number), cls: (fmt.detection_classes || [])[i] ?? 0,
    score: (fmt.detection_scores || [])[i]}));
}

PAGES.review = async function review() {
  const ws = needWorkspace();
  const R = state.review;
  const deployments = await deploymentsOf(ws);
  const out = [el('h2', {}, 'Review queue'), el('p', {role: 'status', id: 'review-status'}, R.message)];
  R.message = '';
  if (!deployments.length) { out.push(el('p', {class: 'muted'}, 'No deployments in this workspace.')); return out; }
  if (!deployments.some(d => d.name === R.deployment)) R.deployment = deployments[0].name;
  const dep = deployments.find(d => d.name === R.deployment);
  out.push(deploymentPicker('review-deployment', deployments, R.deployment, (v) => { Object.assign(R, {deployment: v, current: null, pages: 1}); show('review'); }));
  // before, 50 were read and the oldest 20 listed, with no way to the rest but reviewing them: now a page at a time
  let pagesListed = R.pages || 1;  // the pages this list holds (Show newer predictions adds to it)
  const queue = await reviewPages(dep.name, pagesListed);
  const listedNote = el('span', {id: 'review-listed'});
  const waiting = (n) => `${n} prediction(s) waiting for review, oldest first.`;
  const pendingNote = el('span', {}, waiting(queue.pending));
  out.push(el('p', {id: 'review-pending'}, pendingNote, ' ', listedNote));
  if (!queue.predictions.length) { out.push(el('p', {class: 'muted'}, 'Nothing to review.')); return out; }
  if (!queue.predictions.some(p => p.id === R.current)) R.current = queue.predictions[0].id;
  const p = queue.predictions.find(x => x.id === R.current);
  const labels = queue.labels && queue.labels.length ? queue.labels : dep.labels;  // the API's, else the definition's

  const listed = new Set(queue.predictions.map(x => x.id));
  const item = (x) => el('li', {}, el('button', {class: 'btn secondary', type: 'button', 'aria-pressed': String(x.id === p.id),
    'data-prediction': x.id, onclick: () => { R.current = x.id; show('review'); }},
    `${x.predicted_at.slice(0, 19).replace('T', ' ')} · ${x.kind}${x.source ? ' · ' + x.source : ''}`));
  const list = el('ul', {class: 'cards', id: 'review-list', 'aria-label': 'Predictions waiting'}, queue.predictions.map(item));
  let cursor = queue.next;  // the page after the ones listed (null: none left)
  const sayListed = () => {
    listedNote.textContent = cursor ? `The oldest ${listed.size} listed; newer ones not listed yet.` : `All ${listed.size} listed.`;
  };
  sayListed();
  // the next page read in place (the predictions listed and the focus stay); the page drawn again reads as many.
  // An answer coming after the page was drawn again (a prediction picked, another deployment chosen while the read
  // was on its way) changes nothing: before, it counted one more page in R.pages for the list drawn meanwhile.
  const newer = el('button', {class: 'btn secondary', type: 'button', id: 'review-more',
    'aria-label': `Show the next ${REVIEW_PAGE} predictions waiting (newer)`, onclick: async () => {
      newer.disabled = true;
      try {
        const page = await api('deployments/list_predictions_to_review', {deployment: dep.name, limit: REVIEW_PAGE, cursor});
        if (!list.isConnected) return;  // drawn again meanwhile, reading its own pages
        const after = page.next_cursor || null;
        if (after && after === cursor) throw new ApiError(`list_predictions_to_review: cursor ${after} answered again: the list does not advance`);
        R.pages = ++pagesListed;
        pendingNote.textContent = waiting(page.pending);
        const fresh = page.predictions.filter(x => !listed.has(x.id));
        for (const x of fresh) listed.add(x.id);
        list.append(...fresh.map(item));
        cursor = after;
        sayListed();
        newer.hidden = !cursor;
        // the button gone: the focus goes to the last prediction listed, not nowhere
        if (newer.hidden) list.querySelector('li:last-child button').focus();
      } catch (e) { if (list.isConnected) $('#error').textContent = e.message; }
      newer.disabled = false;
    }}, 'Show newer predictions');
  newer.hidden = !cursor;
  out.push(list, el('div', {class: 'row'}, newer));

  // the editor: detections as rows of class and box; a classification as its class
  const detection = p.kind === 'detection' || p.kind === 'segmentation';
  const edited = detection ? boxesOf(p.prediction).map(b => ({...b, box: [...b.box]})) : [];
  let chosenClass = (p.prediction.detection_classes || [0])[0];
  const canvas = el('canvas', {id: 'review-image', role: 'img',
    'aria-label': `Prediction image ${p.width}x${p.height} with the predicted ${detection ? 'boxes' : 'class'} drawn over it`});
  let image = null, scale = 1;
  const redraw = () => { if (image) scale = drawPrediction(canvas, image, edited, boxesOf(p.shadow_prediction), labels); };
  const classSelect = (value, id, label, onChange) => {
    const select = el('select', {id, 'aria-label': label}, (labels.length ? labels : [...Array(Math.max(value + 1, 10)).keys()].map(String))
      .map((name, i) => el('option', {value: i}, labels.length ? `${name} (${i})` : name)));
    select.value = String(value);
    select.addEventListener('change', () => onChange(Number(select.value)));
    return select;
  };
  const rows = el('tbody');
  const renderRows = () => {
    rows.replaceChildren(...edited.map((b, i) => el('tr', {},
      el('td', {}, String(i + 1)),
      el('td', {}, classSelect(b.cls, `box-${i}-class`, `Class of box ${i + 1}`, (c) => { b.cls = c; redraw(); })),
      ...['top', 'left', 'bottom', 'right'].map((side, k) => {
        const input = el('input', {type: 'number', min: 0, max: k % 2 ? p.width : p.height, value: b.box[k], size: 5,
          id: `box-${i}-${side}`, 'aria-label': `${side} of box ${i + 1} (pixels)`});
        input.addEventListener('change', () => { b.box[k] = Number(input.value); redraw(); });
        return el('td', {}, input);
      }),
      el('td', {}, b.score != null ? fmtNumber(b.score, 3) : 'added'),
      el('td', {}, el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Remove box ${i + 1}`,
        onclick: () => { edited.splice(i, 1); renderRows(); redraw(); }}, 'Remove')))));
  };
  const addBox = (box) => {
    edited.push({box, cls: edited.length ? edited[edited.length - 1].cls : 0, score: null}); renderRows(); redraw();
  };
  // a box drawn with the mouse on the image (the rows and "Add box" do the same from the keyboard)
  let dragFrom = null;
  const at = (ev) => {  // image pixels under the pointer (the canvas may be shown smaller than it is drawn)
    const r = canvas.getBoundingClientRect();
    return [Math.round((ev.clientY - r.top) * (canvas.height / r.height) / scale),
      Math.round((ev.clientX - r.left) * (canvas.width / r.width) / scale)];
  };
  if (detection) {
    canvas.addEventListener('mousedown', (ev) => { dragFrom = at(ev); });
    canvas.addEventListener('mouseup', (ev) => {
      if (!dragFrom) return;
      const [y, x] = at(ev); const [y0, x0] = dragFrom; dragFrom = null;
      const clip = (v, max) => Math.max(0, Math.min(max, v));
      const box = [clip(Math.min(y0, y), p.height), clip(Math.min(x0, x), p.width), clip(Math.max(y0, y), p.height), clip(Math.max(x0, x), p.width)];
      if (box[2] - box[0] >= 2 && box[3] - box[1] >= 2) addBox(box);
    });
  }
  renderRows();

  const send = async (decision) => {
    const body = {deployment: dep.name, prediction_id: p.id, decision};
    if (decision === 'corrected') body.ground_truth = detection
      ? {detection_classes: edited.map(b => b.cls), detection_boxes: edited.map(b => b.box.map(Math.round))}
      : {detection_classes: [chosenClass]};
    try {
      const done = await api('deployments/review_prediction', body);
      R.current = null;
      R.message = `Reviewed the prediction of ${p.predicted_at}: ${done.decision} (revision ${done.revision}).`;
      await show('review');
    } catch (e) { $('#error').textContent = e.message; }
  };
  const predicted = (p.prediction.detection_classes || []).map((c, i) =>
    `${labelName(labels, c)}${p.prediction.detection_scores ? ' ' + fmtNumber(p.prediction.detection_scores[i], 3) : ''}`);
  out.push(el('section', {class: 'card', id: `prediction-${p.id}`, 'aria-label': 'Prediction to review'},
    el('h3', {}, `Prediction ${p.id.slice(0, 8)} · ${p.kind}`),
    el('p', {class: 'muted'}, `${p.predicted_at} · ${p.origin} · ${p.width}x${p.height}` +
      (p.tags.length ? ` · tags ${p.tags.join(', ')}` : '') + (p.source ? ` · ${p.source}` : '')),
    el('div', {class: 'review'},
      el('div', {}, canvas, detection ? el('p', {class: 'muted'}, 'Drag on the image to add a box.') : ''),
      el('div', {},
        el('p', {}, 'Predicted: ', el('strong', {id: 'review-predicted'}, predicted.join(', ') || 'nothing')),
        p.shadow_prediction ? el('p', {class: 'muted'}, 'Shadow model: ' + (p.shadow_prediction.detection_classes || [])
          .map(c => labelName(labels, c)).join(', ') + (detection ? ' (dashed boxes)' : '')) : '',
        detection
          ? el('div', {}, el('table', {id: 'review-boxes'}, el('caption', {class: 'muted', style: 'text-align:left'},
              'Boxes in pixels of the image ([top, left, bottom, right])'),
              el('thead', {}, el('tr', {}, ['#', 'class', 'top', 'left', 'bottom', 'right', 'score', ''].map(h => el('th', {scope: 'col'}, h)))),
              rows),
            el('button', {class: 'btn secondary', type: 'button', id: 'review-add-box',
              onclick: () => addBox([0, 0, Math.round(p.height / 2), Math.round(p.width / 2)])}, 'Add box'))
          : p.kind === 'classification'
            ? el('div', {class: 'row'}, el('label', {for: 'review-class'}, 'Correct class'),
              classSelect(chosenClass, 'review-class', 'Correct class', (c) => { chosenClass = c; }))
            : el('p', {class: 'muted'}, 'Masks are corrected with the SDK (review_prediction with detection_masks).'),
        el('div', {class: 'row'},
          el('button', {class: 'btn', type: 'button', id: 'review-accept', onclick: () => send('accepted')}, 'Accept'),
          p.kind !== 'segmentation' ? el('button', {class: 'btn secondary', type: 'button', id: 'review-correct',
            onclick: () => send('corrected')}, 'Save correction') : '')))));

  // the image comes through the API with the token (never a URL with a token in it)
  afterRender.push(async () => {
    try {
      const r = await api('deployments/get_prediction_image', {deployment: dep.name, prediction_id: p.id}, {raw: true});
      const url = URL.createObjectURL(await r.blob());
      const img = new Image();
      img.onload = () => { image = img; redraw(); canvas.dataset.loaded = 'true'; URL.revokeObjectURL(url); };
      img.onerror = () => { $('#error').textContent = 'The prediction image could not be shown.'; };
      img.src = url;
    } catch (e) { $('#error').textContent = e.message; }
  });
  return out;
};
