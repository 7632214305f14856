"use strict";
// Orchestrations page: the workspace's orchestrations (orchestration/list), tasks (task/list, kill), a task's runs
// (task/list_task_runs) and a run's logs (task/get_logs_for_run), followed live while the run is queued or running.

state.tasks = {task: null, run: null};
let followTimer = null;

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
  if (!taskList.some(t => t.id === T.task)) Object.assign(T, {task: taskList[0].id, run: null});
  out.push(el('h3', {}, 'Tasks'), table(`${taskList.length} task(s)`,
    ['name', 'task', 'orchestration', 'kind', 'schedule', 'status', 'last runs', ''],
    taskList.map(t => [t.name || '', el('code', {title: t.id}, short(t.id)), names[t.orch_id] || short(t.orch_id),
      t.exec_type === 'cron_job' ? 'scheduled' : 'once', t.schedule || '', badge(t.status),
      el('span', {}, (t.last_runs || []).slice(0, 5).map(r => badge(r.status))),
      el('div', {class: 'row'},
        el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Runs of task ${t.name || t.id}`,
          'aria-pressed': String(t.id === T.task), onclick: () => { Object.assign(T, {task: t.id, run: null}); show('tasks'); }}, 'Runs'),
        ...(t.killed ? [] : [el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Kill task ${t.name || t.id}`,
          onclick: async () => {
            try { await api('task/kill', {id: t.id}); show('tasks'); } catch (e) { $('#error').textContent = e.message; }
          }}, 'Kill')]))])));

  const task = taskList.find(t => t.id === T.task);
  const runs = await api('task/list_task_runs', {task_id: task.id, limit: 50, order: 'created'});
  const section = el('section', {id: `task-${task.id}`, tabindex: '-1', 'aria-label': `Runs of ${task.name || task.id}`},
    el('h3', {}, `Runs of ${task.name || short(task.id)}`));
  out.push(section);
  if (!runs.length) { section.append(el('p', {class: 'muted'}, 'No runs yet.')); return out; }
  if (!runs.some(r => r.run_id === T.run)) T.run = runs[0].run_id;
  section.append(table(`${runs.length} run(s), newest first`,
    ['run', 'status', 'exit code', 'reason', 'created', 'updated', ''],
    runs.map(r => [el('code', {title: r.run_id}, short(r.run_id)), badge(r.status), r.exit_code ?? '', r.reason || '',
      r.created_at, r.updated_at,
      el('button', {class: 'btn secondary', type: 'button', 'aria-label': `Logs of run ${short(r.run_id)}`,
        'aria-pressed': String(r.run_id === T.run), onclick: () => { T.run = r.run_id; show('tasks'); }}, 'Logs')])));
  const run = runs.find(r => r.run_id === T.run);
  const logs = el('pre', {class: 'logs', id: 'run-logs', tabindex: '0', 'aria-label': `Logs of run ${run.run_id}`});
  const note = el('p', {class: 'muted', id: 'run-logs-state'});
  section.append(el('h3', {id: `run-${run.run_id}`, tabindex: '-1'}, `Logs of run ${short(run.run_id)}`), note, logs);

  // live: while the run is queued or running, fetch its logs again every 1.5 s (only while this run is shown)
  let settle = 2;  // a run that just ended may still be writing its last lines: look twice more when empty
  const follow = async () => {
    if (state.page !== 'tasks' || T.run !== run.run_id || !logs.isConnected) return;
    try {
      const [{logs: lines}, now] = await Promise.all([api('task/get_logs_for_run', {id: run.run_id, lines: 2000}),
        api('task/list_task_runs', {task_id: task.id, limit: 50, order: 'created'})]);
      const current = now.find(r => r.run_id === run.run_id) || run;
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = lines.join('\n') || '(no output yet)';
      if (atEnd) logs.scrollTop = logs.scrollHeight;
      const live = current.status === 'queued' || current.status === 'running';
      note.replaceChildren(badge(current.status), live ? ' following the logs live…' : ` ${lines.length} line(s)`);
      if (live || (!lines.length && settle-- > 0)) followTimer = setTimeout(follow, 1500);
    } catch (e) { $('#error').textContent = e.message; }
  };
  afterRender.push(follow);
  return out;
};
