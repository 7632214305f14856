"use strict";
// Orchestrations page: the workspace's orchestrations (orchestration/list), tasks (task/list, kill), a task's runs
// (task/list_task_runs) and a run's logs (task/get_logs_for_run), followed live while the run is queued or running.

state.tasks = {task: null, run: null, pages: 1, sought: null, allLines: null};
let followTimer = null;
// a task's runs are read a page at a time (task/list_task_runs, order "created": newest first by creation, the next
// page's cursor in the x-next-cursor header; docs/api-paging.md): RUN_PAGE runs a page, "Show older runs" reads the
// next one. The tests make it smaller.
let RUN_PAGE = 50;
// a run asked for (the lineage's Open task run) is looked for this many pages deep; one older than that is shown by
// itself (its logs and status, task/get_logs_for_run), not listed. The tests make it smaller.
let RUN_SEEK_PAGES = 20;
// a run's logs show its last RUN_LOG_LINES lines (task/get_logs_for_run `lines`; one more is asked, to know whether
// there are more), and "Show all lines" reads every line a page of RUN_LOG_PAGE lines at a time (`limit`, then each
// page's `next_cursor` as `cursor`; a page also stops at 4 MiB), up to RUN_LOG_MAX lines shown, saying so past that.
// Before, every line was one read, which a run past what a bus reply carries (8 MiB) answered 422, shown as such.
// The tests make them smaller.
let RUN_LOG_LINES = 2000;
let RUN_LOG_PAGE = 10000;
let RUN_LOG_MAX = 500000;
// a run that failed may still add lines: one marked failed as lost whose supervisor was only paused writes its last
// batches when it wakes (the scheduler stores them whatever the run's status). Past a `failure` status the logs are
// read again every RUN_LOG_FOLLOW_MS (1.5 s) until SETTLE_QUIET reads in a row bring no new line, SETTLE_READS reads at
// most. Before, the first read that saw the ended status stopped following (when it had any line), and lines written
// after it showed only when the page was opened again. A run that succeeded is read once: its supervisor recorded the
// end after its last lines, and the status is read before the lines (every finished run opened was read three times,
// 3 s apart, as `railyard tasks logs -f` does not). The tests make them smaller.
let SETTLE_QUIET = 2;
let SETTLE_READS = 20;
// a followed run's logs (live, or settling past a failure) are read again RUN_LOG_FOLLOW_MS after the last read ended,
// and a failed read of a live run is tried again as long after. The tests that count reads make it smaller.
let RUN_LOG_FOLLOW_MS = 1500;

/** The first `pages` pages of a task's runs (further while `wanted`, a run id, is not among them, RUN_SEEK_PAGES at
 *  most) and the cursor of the page after them (null: none). A search that did not find `wanted` lists the `pages`
 *  pages asked for and no more: the pages it read past them are not kept (nor read again when the page is drawn
 *  again: the caller looks for a run once). */
async function runPages(taskId, pages, wanted = null) {
  const runs = [], seen = new Set(), ends = [];  // ends[n]: the runs listed and the cursor after page n + 1
  let cursor = null, read = 0;
  do {
    const r = await api('task/list_task_runs', {task_id: taskId, order: 'created', limit: RUN_PAGE,
      ...(cursor ? {cursor} : {})}, {raw: true});
    for (const run of parseJSON(await r.text())) runs.push(run);
    cursor = r.headers.get('x-next-cursor');
    if (cursor && seen.has(cursor)) throw new ApiError(`task/list_task_runs: cursor ${cursor} answered again: the list does not advance`);
    if (cursor) seen.add(cursor);
    read++;
    ends.push({count: runs.length, cursor});
  } while (cursor && (read < pages || (wanted && read < RUN_SEEK_PAGES && !runs.some(r => r.run_id === wanted))));
  if (read > pages && !runs.some(r => r.run_id === wanted)) {
    const end = ends[pages - 1];
    return {runs: runs.slice(0, end.count), next: end.cursor, read: pages};
  }
  return {runs, next: cursor, read};
}

/** Whether task/kill would stop anything of the task: its schedule (no more points), or a run of it queued (failed
 *  before it starts) or running (stopped); a one-shot task not run yet too. A one-shot task whose run ended has none:
 *  the API takes its kill all the same, and the task then reads `killed` instead of the run's outcome, so Kill was
 *  offered on every task not killed, finished ones too, and only hid how the run went. */
function killable(t) {
  if (t.killed) return false;
  if (t.exec_type === 'cron_job') return true;
  const runs = t.last_runs || [];
  return !runs.length || runs.some(r => r.status === 'queued' || r.status === 'running');
}

const short = (id) => String(id).slice(0, 8);
const badge = (status) => el('span', {class: `badge ${status}`}, status);

PAGES.tasks = async function tasks() {
  clearTimeout(followTimer);
  const ws = needWorkspace();
  const T = state.tasks;
  const [orchs, taskList] = await Promise.all([apiPages('orchestration/list', {workspace_id: ws}),
    apiPages('task/list', {workspace_id: ws})]);
  const out = [el('h2', {}, 'Orchestrations and tasks')];
  const names = Object.fromEntries(orchs.map(o => [o.id, o.name || o.file_name]));
  out.push(orchs.length
    ? table(`${orchs.length} orchestration(s)`, ['name', 'file', 'sha256', 'status', 'created'],
      orchs.map(o => [o.name || '', o.file_name, el('code', {title: o.sha}, o.sha.slice(0, 12)),
        el('span', {}, badge(o.status), o.reason ? ` ${o.reason}` : ''), o.created_at]))
    : el('p', {class: 'muted'}, 'No orchestrations in this workspace (upload one with the SDK or `railyard orchestrations upload`).'));
  if (!taskList.length) { out.push(el('p', {class: 'muted'}, 'No tasks yet.')); return out; }
  if (!taskList.some(t => t.id === T.task)) Object.assign(T, {task: taskList[0].id, run: null, pages: 1});
  out.push(el('h3', {}, 'Tasks'), table(`${taskList.length} task(s)`,
    ['name', 'task', 'orchestration', 'kind', 'schedule', 'status', 'last runs', ''],
    taskList.map(t => [t.name || '', el('code', {title: t.id}, short(t.id)), names[t.orch_id] || short(t.orch_id),
      t.exec_type === 'cron_job' ? 'scheduled' : 'once', t.schedule || '', badge(t.status),
      el('span', {}, (t.last_runs || []).slice(0, 5).map(r => badge(r.status))),
      el('div', {class: 'row'},
        el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Runs of task ${t.name || t.id}`,
          'aria-pressed': String(t.id === T.task), onclick: () => { Object.assign(T, {task: t.id, run: null, pages: 1}); show('tasks'); }}, 'Runs'),
        ...(!killable(t) ? [] : [el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Kill task ${t.name || t.id}`,
          onclick: async () => {
            try { await api('task/kill', {id: t.id}); show('tasks'); } catch (e) { $('#error').textContent = e.message; }
          }}, 'Kill')]))])));

  const task = taskList.find(t => t.id === T.task);
  // a run asked for is looked for once: after a search that did not find it, each redraw (a run's Logs, Kill, the
  // page opened again) read RUN_SEEK_PAGES pages again and listed them all
  const {runs, next, read} = await runPages(task.id, T.pages, T.run && T.run !== T.sought ? T.run : null);
  T.sought = T.run;
  T.pages = read;  // the pages shown again when the page is drawn again (a run's Logs), so older runs stay listed
  const section = el('section', {id: `task-${task.id}`, tabindex: '-1', 'aria-label': `Runs of ${task.name || task.id}`},
    el('h3', {}, `Runs of ${task.name || short(task.id)}`));
  out.push(section);
  if (!runs.length) { section.append(el('p', {class: 'muted'}, 'No runs yet.')); return out; }
  // a run asked for past the pages read (or gone) was replaced by the newest run without a word, its logs shown as the
  // asked run's: now it is shown by itself when it is this task's (said so), else the newest with a note saying why
  let run = runs.find(r => r.run_id === T.run), unlisted = null;
  if (!run && T.run) {
    const asked = await api('task/get_logs_for_run', {id: T.run, lines: 1}).catch(() => null);
    if (asked && String(asked.task) === String(task.id)) {
      run = {run_id: T.run, status: asked.status};
      unlisted = `Run ${short(T.run)} is older than the ${runs.length} runs listed: its logs are below.`;
    } else unlisted = `Run ${short(T.run)} was not found among the runs of this task; the newest run is shown.`;
  }
  if (!run) { run = runs[0]; T.run = run.run_id; }
  const runRow = (r) => el('tr', {}, [el('code', {title: r.run_id}, short(r.run_id)), badge(r.status),
    r.exit_code ?? '', r.reason || '', r.created_at, r.updated_at,
    el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Logs of run ${short(r.run_id)}`,
      'aria-pressed': String(r.run_id === T.run), onclick: () => { T.run = r.run_id; show('tasks'); }}, 'Logs')]
    .map(c => el('td', {}, c)));
  const caption = (more) => `${runs.length} run(s), newest first${more ? '; older runs not listed yet' : ''}`;
  const runTable = table(caption(next), ['run', 'status', 'exit code', 'reason', 'created', 'updated', ''], []);
  runTable.querySelector('tbody').append(...runs.map(runRow));
  section.append(runTable);
  // the next page read in place (the rows already shown and the focus stay); the page drawn again reads as many
  let cursor = next;
  const older = el('button', {class: 'btn secondary', type: 'button', id: 'runs-older',
    'aria-label': `Show ${RUN_PAGE} older runs of ${task.name || task.id}`, onclick: async () => {
      older.disabled = true;
      try {
        const r = await api('task/list_task_runs', {task_id: task.id, order: 'created', limit: RUN_PAGE, cursor}, {raw: true});
        const page = parseJSON(await r.text());
        const after = r.headers.get('x-next-cursor');
        if (after && after === cursor) throw new ApiError(`task/list_task_runs: cursor ${after} answered again: the list does not advance`);
        runs.push(...page);
        T.pages++;
        runTable.querySelector('tbody').append(...page.map(runRow));
        runTable.querySelector('caption').textContent = caption(after);
        cursor = after;
        older.hidden = !cursor;
        if (!cursor && page.length) runTable.querySelector('tbody tr:last-child button').focus();
      } catch (e) { $('#error').textContent = e.message; }
      older.disabled = false;
    }}, 'Show older runs');
  older.hidden = !cursor;
  section.append(el('div', {class: 'row'}, older));
  if (unlisted) section.append(el('p', {class: 'muted', id: 'run-unlisted', role: 'status'}, unlisted));
  const logs = el('pre', {class: 'logs', id: 'run-logs', tabindex: '0', 'aria-label': `Logs of run ${run.run_id}`});
  const note = el('p', {class: 'muted', id: 'run-logs-state'});
  // the last RUN_LOG_LINES lines, saying so when the run has more, and every line on request (before: the last 2,000
  // without a word)
  if (T.allLines !== run.run_id) T.allLines = null;
  const cutNote = el('span', {class: 'muted', id: 'run-logs-cut', role: 'status'});
  const allButton = el('button', {class: 'btn secondary', type: 'button', id: 'run-logs-all', hidden: '',
    'aria-label': `Show every line of run ${short(run.run_id)}`, onclick: () => {
      T.allLines = run.run_id; allButton.hidden = true; cutNote.textContent = 'Reading every line…';
      clearTimeout(followTimer); follow().then(() => logs.focus());
    }}, 'Show all lines');
  section.append(el('h3', {id: `run-${run.run_id}`, tabindex: '-1'}, `Logs of run ${short(run.run_id)}`), note,
    el('div', {class: 'row'}, cutNote, allButton), logs);

  // live: while the run is queued or running, fetch its logs again every RUN_LOG_FOLLOW_MS (1.5 s; only while this run
  // is shown); past a failure status, until SETTLE_QUIET reads bring no new line (SETTLE_READS at most)
  let settling = 0, quiet = 0, lastSeen = null;
  let status = run.status;  // the run's status as last read (a failed read keeps following a run last seen live)
  // the last lines shown: RUN_LOG_LINES, fewer when that many pass what one reply carries (lines of up to 16 KiB:
  // 2,000 of them are 32 MiB), halved until they fit, rather than the read's 422 in place of the logs
  let lastLines = RUN_LOG_LINES;
  const readLast = async () => {
    for (;;) {
      try { return await api('task/get_logs_for_run', {id: run.run_id, lines: lastLines + 1}); }
      catch (e) {
        if (lastLines <= 1 || !String(e.message).includes('reply_too_large')) throw e;
        lastLines = Math.max(1, Math.floor(lastLines / 2));
      }
    }
  };
  // every line (Show all lines): the lines read so far and the cursor of the next page; a live run's next reads go on
  // from there, and a read that failed is tried again from there
  // (`from`: the lines before the last page read, which an ended run's next read reads again: its lines written late)
  const every = {lines: [], cursor: null, done: false, capped: false, busy: false, from: 0, reread: false};
  const readEvery = async (stale) => {
    if (every.busy) return null;  // one reader of the pages at a time (it schedules the next poll)
    every.busy = true;
    try { return await readPages(stale); } finally { every.busy = false; }
  };
  const readPages = async (stale) => {
    if (every.reread && every.done) { every.lines.length = every.from; every.done = false; }
    every.reread = false;
    while (!every.done && !every.capped) {
      // one line past RUN_LOG_MAX is asked for, to know whether the run has more than is shown
      const sent = every.cursor;
      const answer = await api('task/get_logs_for_run', {id: run.run_id,
        limit: Math.min(RUN_LOG_PAGE, RUN_LOG_MAX - every.lines.length + 1), ...(sent ? {cursor: sent} : {})});
      if (stale()) return null;
      status = answer.status || status;
      const room = RUN_LOG_MAX - every.lines.length;
      every.from = every.lines.length;
      if (answer.logs.length > room) {
        every.lines.push(...answer.logs.slice(0, room));
        every.capped = true;  // not read further: the note says how many lines are shown and why
        break;
      }
      every.lines.push(...answer.logs);
      if (!answer.next_cursor) { every.done = true; break; }  // a finished run's last page
      if (answer.next_cursor === sent && answer.logs.length) throw new ApiError(`task/get_logs_for_run: cursor ${sent} answered again: the lines do not advance`);
      every.cursor = answer.next_cursor;
      if (!answer.logs.length) break;  // a live run read up to now: the next poll goes on from here
    }
    return every.lines;
  };
  const follow = async () => {
    if (state.page !== 'tasks' || T.run !== run.run_id || !logs.isConnected) return;
    const all = T.allLines === run.run_id;
    // a read answered for a run no longer shown, or of the last lines after Show all lines was pressed (or the
    // reverse): dropped, its answer and its error alike
    const stale = () => state.page !== 'tasks' || T.run !== run.run_id || !logs.isConnected ||
      all !== (T.allLines === run.run_id);
    try {
      // the run's status comes with its logs: a run on an older page is followed too (the newest 50 alone did not
      // hold it, and its status stayed the one first listed)
      let lines, cut = false;
      if (all) {
        lines = await readEvery(stale);
        if (lines === null) return;
      } else {
        const answer = await readLast();
        // a read of the last lines answered after Show all lines was pressed (a live run's, on its way then) is
        // dropped: before, landing after the read of every line, it showed the cut lines and note again (for good
        // when the run had ended meanwhile), though every line was asked for
        if (stale()) return;
        status = answer.status || status;
        cut = answer.logs.length > lastLines;
        lines = cut ? answer.logs.slice(1) : answer.logs;
      }
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = lines.join('\n') || '(no output yet)';
      if (atEnd) logs.scrollTop = logs.scrollHeight;
      const live = status === 'queued' || status === 'running';
      note.replaceChildren(badge(status), live && !every.capped ? ' following the logs live…' : ` ${lines.length} line(s)`);
      const count = lastLines.toLocaleString('en-US');
      const fewer = lastLines < RUN_LOG_LINES ? ` (the last ${RUN_LOG_LINES.toLocaleString('en-US')} pass what one ` +
        'reply of the API carries)' : '';
      cutNote.textContent = cut ? `Showing the last ${count} lines${fewer}: the run has more (earlier lines not shown; ` +
        `Show all lines reads them page by page; \`railyard tasks logs ${run.run_id}\` prints them all).`
        : every.capped ? `Showing the first ${lines.length.toLocaleString('en-US')} lines: the run has more, past ` +
          `what this page shows (\`railyard tasks logs ${run.run_id}\` prints them all).`
        : all ? `Every line shown (${lines.length}).` : '';
      allButton.hidden = !cut;
      // a failed run: read again while its reads bring new lines (the last line or the count changed), until
      // SETTLE_QUIET reads in a row after the end bring none (a quiet spell while it ran does not count: a paused
      // supervisor's run is quiet, then marked lost, then writes), SETTLE_READS at most
      const seen = `${lines.length}\n${lines[lines.length - 1] ?? ''}`;
      quiet = live || seen !== lastSeen ? 0 : quiet + 1;
      lastSeen = seen;
      const again = live ? !every.capped
        : status === 'failure' && !every.capped && quiet < SETTLE_QUIET && settling++ < SETTLE_READS;
      note.dataset.following = again ? 'yes' : 'no';
      if (again && all && !live) every.reread = true;
      clearTimeout(followTimer);  // one loop, also when "Show all lines" is pressed while a read is on its way
      if (again) followTimer = setTimeout(follow, RUN_LOG_FOLLOW_MS);
    } catch (e) {
      if (stale()) return;  // before, such a read's error was shown over the page (every line shown, or another page)
      // said beside the logs, and a run last seen live is still followed: the next read is tried RUN_LOG_FOLLOW_MS
      // later (before, one failed read stopped following the run for good, with its error in the page's error line)
      const live = status === 'queued' || status === 'running';
      note.replaceChildren(badge(status), ` reading the logs failed (${e.message})` +
        (live ? '; trying again…' : ''));
      clearTimeout(followTimer);
      note.dataset.following = live ? 'yes' : 'no';
      if (live) followTimer = setTimeout(follow, RUN_LOG_FOLLOW_MS);
      else if (all) { cutNote.textContent = 'Every line could not be read: Show all lines tries again.'; allButton.hidden = false; }
    }
  };
  afterRender.push(follow);
  return out;
};
