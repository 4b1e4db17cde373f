// scopegate console: plain JavaScript over the admin API (/v1). The token lives in
// sessionStorage only; every call carries it as a bearer token. No data is ever written with
// innerHTML: every value goes through textContent.
'use strict';

const TOKEN_KEY = 'scopegate.token';
const state = { role: null, name: null, scopes: [] };
const RANK = { read: 0, operator: 1, admin: 2 };
const can = (role) => state.role !== null && RANK[state.role] >= RANK[role];

// ---------- DOM helpers ----------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

function field(label, input, hint) {
  if (!input.id) input.id = nextId('f');
  const note = hint ? h('small', { class: 'hint', id: `${input.id}-hint` }, hint) : null;
  if (note) input.setAttribute('aria-describedby', note.id);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, note);
}

function toast(message) {
  const t = $('#toast');
  t.textContent = message;
  t.classList.add('show');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('show'), 4000);
}

// A whole number with thousands separators, the same in every locale (tests read it).
const count = (n) => Number(n).toLocaleString('en-US');

function when(iso) {
  if (!iso) return '—';
  return iso.replace('T', ' ').replace('Z', ' UTC');
}

// ---------- API ----------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body, extraHeaders) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  Object.assign(headers, extraHeaders || {});
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
  });
  const type = res.headers.get('content-type') || '';
  const data = type.includes('json') ? await res.json().catch(() => null)
    : await res.text();
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: String(res.status), message: res.statusText };
    if (res.status === 401 && path !== '/v1/whoami') signOut('Your session has ended: sign in again.');
    throw new ApiError(res.status, err.code, err.message);
  }
  return { data, headers: res.headers };
}

function nextLink(headers) {
  const link = headers.get('link');
  const m = link && link.match(/<([^>]+)>;\s*rel="next"/);
  return m ? m[1] : null;
}

// Follows `Link: rel="next"` up to `maxPages` pages.
async function listAll(path, maxPages = 20) {
  let out = [];
  let next = path;
  for (let i = 0; next && i < maxPages; i++) {
    const { data, headers } = await api('GET', next);
    out = out.concat(data);
    next = nextLink(headers);
  }
  return out;
}

const qs = (params) => {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : '';
};

// ---------- dialogs ----------
function openDialog(title, content, actions) {
  const titleId = nextId('dlg');
  const dlg = h('dialog', { 'aria-labelledby': titleId },
    h('h2', { id: titleId }, title), content,
    h('div', { class: 'actions' }, actions));
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

function confirmDialog(title, message, confirmLabel) {
  return new Promise((resolve) => {
    let ok = false;
    const cancel = h('button', { type: 'button', class: 'secondary', onclick: () => dlg.close() }, 'Cancel');
    const yes = h('button', { type: 'button', class: 'danger', onclick: () => { ok = true; dlg.close(); } }, confirmLabel);
    const dlg = openDialog(title, h('p', {}, message), [cancel, yes]);
    dlg.addEventListener('close', () => resolve(ok));
    cancel.focus();
  });
}

// A form in a dialog; `submit(form)` returns a promise; its error is shown in the dialog.
function formDialog(title, fields, submitLabel, submit) {
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { method: 'dialog' }, fields, error);
  // Out of the page at once: `close` fires a task later, and a secret typed in the form
  // must not stay in the document until then (its listeners clear the fields after).
  const dismiss = () => { dlg.close(); dlg.remove(); };
  const cancel = h('button', { type: 'button', class: 'secondary', onclick: dismiss }, 'Cancel');
  const ok = h('button', { type: 'submit' }, submitLabel);
  form.append(h('div', { class: 'actions' }, cancel, ok));
  const titleId = nextId('dlg');
  const dlg = h('dialog', { 'aria-labelledby': titleId }, h('h2', { id: titleId }, title), form);
  dlg.addEventListener('close', () => dlg.remove());
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    ok.disabled = true;
    try {
      await submit(form);
      dismiss();
    } catch (e) {
      error.textContent = e.message;
    } finally {
      ok.disabled = false;
    }
  });
  document.body.append(dlg);
  dlg.showModal();
  return dlg;
}

// The full key, shown once, with a copy button.
function secretDialog(title, key) {
  return new Promise((resolve) => {
    const value = h('input', { id: nextId('secret'), type: 'text', readonly: true, class: 'secret', value: key.key, 'aria-label': 'Full API key' });
    const status = h('span', { class: 'copied', role: 'status' });
    const copy = h('button', {
      type: 'button', class: 'copy', onclick: async () => {
        try {
          await navigator.clipboard.writeText(key.key);
          status.textContent = 'Copied to the clipboard.';
        } catch (e) {
          value.select();
          status.textContent = 'Copy failed: select the key and copy it by hand.';
        }
      },
    }, 'Copy');
    const done = h('button', { type: 'button', onclick: () => dlg.close() }, 'Done');
    const dlg = openDialog(title, [
      h('p', { class: 'warning' }, h('strong', {}, 'This key will not be shown again. '),
        'Copy it now and store it somewhere safe; the gateway keeps only a hash of it.'),
      h('p', {}, `Key "${key.name}" (id ${key.id})${key.expires_at ? `, expires ${when(key.expires_at)}` : ''}.`),
      h('div', { class: 'secret-row' }, value, copy), status,
    ], [done]);
    dlg.addEventListener('close', () => { value.value = ''; resolve(); });
    copy.focus();
  });
}

// ---------- shell ----------
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.role = null;
  state.name = null;
  showSignIn(message);
}

function showSignIn(message) {
  $('#nav').hidden = true;
  $('#who').hidden = true;
  $('#view').replaceChildren();
  $('#signin').hidden = false;
  $('#signin-error').textContent = message || '';
  $('#token').value = '';
  $('#token').focus();
}

async function start() {
  $('#signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token').value = '';
    await enter();
  });
  $('#sign-out').addEventListener('click', () => signOut(''));
  window.addEventListener('hashchange', route);
  if (sessionStorage.getItem(TOKEN_KEY)) await enter();
  else showSignIn('');
}

async function enter() {
  try {
    const { data } = await api('GET', '/v1/whoami');
    state.role = data.role;
    state.name = data.name;
    state.scopes = (await api('GET', '/v1/scopes')).data;
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(e.status === 401 ? 'That token was not accepted.' : `Sign-in failed: ${e.message}`);
    return;
  }
  $('#signin').hidden = true;
  $('#nav').hidden = false;
  $('#who').hidden = false;
  $('#who-name').textContent = `${state.name} (${state.role})`;
  if (!location.hash || location.hash === '#') location.hash = '#/apps';
  else await route();
}

const PAGES = { apps: appsPage, keys: keysPage, usage: usagePage, routes: routesPage, credentials: credentialsPage, audit: auditPage };

async function route() {
  if (!state.role) return;
  const [, page, arg] = (location.hash || '#/apps').split('/');
  const render = PAGES[page] || appsPage;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === (PAGES[page] ? page : 'apps')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const view = $('#view');
  view.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    await render(view, arg ? decodeURIComponent(arg) : null);
  } catch (e) {
    view.replaceChildren(h('p', { class: 'error', role: 'alert' }, `Could not load: ${e.message}`));
  }
}

function pageHead(title, ...tools) {
  return h('div', { class: 'page-head' }, h('h1', {}, title), h('div', { class: 'tools' }, tools));
}

function table(caption, columns, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  // Focusable and named, so a table wider than the screen can be scrolled by keyboard.
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption }, h('table', {},
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c, i) => h('td', { 'data-label': columns[i] }, c)))))));
}

function searchBox(label, value, onSearch) {
  const input = h('input', { type: 'search', value: value || '' });
  const form = h('form', { class: 'inline', role: 'search' }, field(label, input), h('button', { type: 'submit', class: 'secondary' }, 'Search'));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); onSearch(input.value.trim()); });
  return form;
}

// ---------- Apps ----------
async function appsPage(view) {
  const search = appsPage.search || '';
  const apps = await listAll(`/v1/apps${qs({ search })}`);
  const create = can('admin') ? h('button', { type: 'button', onclick: () => editApp(null) }, 'Create app') : null;
  const rows = apps.map((app) => [
    h('strong', {}, app.name),
    h('code', {}, app.id),
    h('span', { class: 'chips' }, app.scopes.length ? app.scopes.map((s) => h('span', { class: 'chip' }, s)) : h('span', { class: 'muted' }, 'none')),
    app.rate_limit ? `${app.rate_limit.per_second}/s, burst ${app.rate_limit.burst}` : h('span', { class: 'muted' }, 'default'),
    tokenQuotaText(app.token_quota),
    when(app.created_at),
    app.created_by || '—',
    h('span', { class: 'row-actions' },
      h('a', { href: `#/keys/${encodeURIComponent(app.id)}`, class: 'button secondary' }, 'Keys'),
      can('admin') ? h('button', { type: 'button', class: 'secondary', onclick: () => editApp(app) }, 'Edit') : null,
      can('admin') ? h('button', { type: 'button', class: 'danger', 'data-action': 'delete-app', onclick: () => deleteApp(app) }, 'Delete') : null),
  ]);
  view.replaceChildren(
    pageHead('Apps', create),
    searchBox('Search apps by name', search, (s) => { appsPage.search = s; route(); }),
    table('Apps', ['Name', 'ID', 'Scopes', 'Rate limit', 'Token quota', 'Created', 'Created by', 'Actions'], rows,
      search ? 'No app matches.' : 'No apps yet.'),
  );
}

async function keysOf(appId) {
  const keys = await listAll(`/v1/keys${qs({ app: appId, limit: 1000 })}`);
  return { all: keys.length, active: keys.filter((k) => k.status === 'active').length };
}

async function editApp(app) {
  let etag = null;
  let impact = null;
  if (app) {
    const { data, headers } = await api('GET', `/v1/apps/${encodeURIComponent(app.id)}`);
    app = data;
    etag = headers.get('etag');
    impact = await keysOf(app.id);
  }
  const name = h('input', { type: 'text', required: true, value: app ? app.name : '', autocomplete: 'off' });
  const boxes = state.scopes.map((s) => {
    const id = nextId('scope');
    const box = h('input', { type: 'checkbox', id, value: s.name, checked: app ? app.scopes.includes(s.name) : false });
    return { box, el: h('div', { class: 'check' }, box, h('label', { for: id }, h('code', {}, s.name), ` ${s.description}`)) };
  });
  const custom = h('input', { type: 'checkbox', id: nextId('rl'), checked: !!(app && app.rate_limit) });
  const perSecond = h('input', { type: 'number', min: 1, value: app && app.rate_limit ? app.rate_limit.per_second : 50 });
  const burst = h('input', { type: 'number', min: 1, value: app && app.rate_limit ? app.rate_limit.burst : 100 });
  const limits = h('div', { class: 'inline' }, field('Requests per second', perSecond), field('Burst', burst));
  const sync = () => { limits.hidden = !custom.checked; };
  custom.addEventListener('change', sync);
  sync();
  const tokenQuota = tokenQuotaFields(app);
  const notice = app ? h('p', { class: 'warning', role: 'note' },
    h('strong', {}, 'Scope changes apply platform-wide at once: '),
    `they affect all ${impact.all} key${impact.all === 1 ? '' : 's'} of this app (${impact.active} active) on every gateway instance within a second.`) : null;
  formDialog(app ? `Edit app ${app.name}` : 'Create app', [
    field('Name', name),
    h('fieldset', {}, h('legend', {}, 'Scopes'), boxes.map((b) => b.el)),
    notice,
    h('fieldset', {}, h('legend', {}, 'Rate limit'),
      h('div', { class: 'check' }, custom, h('label', { for: custom.id }, 'Override the default rate limit')), limits),
    tokenQuota.el,
  ], app ? 'Save' : 'Create', async () => {
    const body = {
      name: name.value.trim(),
      scopes: boxes.filter((b) => b.box.checked).map((b) => b.box.value),
      rate_limit: custom.checked ? { per_second: Number(perSecond.value), burst: Number(burst.value) } : null,
      token_quota: tokenQuota.value(),
    };
    if (app) {
      await api('PATCH', `/v1/apps/${encodeURIComponent(app.id)}`, body, etag ? { 'If-Match': etag } : {});
      toast(`App ${body.name} saved.`);
    } else {
      if (!body.rate_limit) delete body.rate_limit;
      if (!body.token_quota) delete body.token_quota;
      await api('POST', '/v1/apps', body);
      toast(`App ${body.name} created.`);
    }
    route();
  });
}

// An app's token quota: input plus output tokens of metered routes, counted per key in UTC
// windows. `null` (no override) means the config's default; a window left out has no limit.
const TOKEN_WINDOWS = [['per_minute', 'minute'], ['per_day', 'day'], ['per_month', 'month']];

function tokenQuotaText(quota) {
  if (!quota) return h('span', { class: 'muted' }, 'default');
  const set = TOKEN_WINDOWS.filter(([k]) => quota[k] != null);
  return set.length ? set.map(([k, w]) => `${count(quota[k])}/${w}`).join(', ') : 'no limit';
}

// The dialog's token-quota fieldset and the `token_quota` it stands for (`null`: the default).
function tokenQuotaFields(app) {
  const quota = app ? app.token_quota : null;
  const custom = h('input', { type: 'checkbox', id: nextId('tq'), checked: !!quota });
  const inputs = TOKEN_WINDOWS.map(([k, w]) => ({
    k, w, input: h('input', { type: 'number', min: 1, step: 1, inputmode: 'numeric', value: quota && quota[k] != null ? quota[k] : '' }),
  }));
  const windows = h('div', {},
    h('p', { class: 'hint' }, 'Input plus output tokens of metered routes, for each key of the app. Leave a window empty for no limit in it.'),
    h('div', { class: 'inline' }, inputs.map(({ w, input }) => field(`Tokens per ${w}`, input))));
  const sync = () => { windows.hidden = !custom.checked; };
  custom.addEventListener('change', sync);
  sync();
  return {
    el: h('fieldset', {}, h('legend', {}, 'Token quota'),
      h('div', { class: 'check' }, custom, h('label', { for: custom.id }, 'Override the default token quota')), windows),
    value: () => (custom.checked
      ? Object.fromEntries(inputs.filter(({ input }) => input.value !== '').map(({ k, input }) => [k, Number(input.value)]))
      : null),
  };
}

async function deleteApp(app) {
  const impact = await keysOf(app.id);
  const ok = await confirmDialog(`Delete app ${app.name}?`,
    `Its ${impact.all} key${impact.all === 1 ? '' : 's'} (${impact.active} active) will be revoked at once. This cannot be undone.`, 'Delete app');
  if (!ok) return;
  try {
    await api('DELETE', `/v1/apps/${encodeURIComponent(app.id)}`);
    toast(`App ${app.name} deleted.`);
  } catch (e) { toast(`Delete failed: ${e.message}`); }
  route();
}

// ---------- Keys ----------
const STATUSES = ['active', 'expired', 'disabled', 'revoked'];

async function keysPage(view, appArg) {
  const f = keysPage.filter || (keysPage.filter = { search: '', status: '' });
  const app = appArg || '';
  const [keys, apps] = await Promise.all([
    listAll(`/v1/keys${qs({ search: f.search, status: f.status, app })}`),
    listAll('/v1/apps'),
  ]);
  const appName = Object.fromEntries(apps.map((a) => [a.id, a.name]));
  const search = h('input', { type: 'search', value: f.search });
  const status = h('select', {}, h('option', { value: '' }, 'Any status'),
    STATUSES.map((s) => h('option', { value: s, selected: f.status === s }, s)));
  const appSel = h('select', {}, h('option', { value: '' }, 'All apps'),
    apps.map((a) => h('option', { value: a.id, selected: a.id === app }, a.name)));
  const filters = h('form', { class: 'inline', role: 'search' },
    field('Search keys by name', search), field('Status', status), field('App', appSel),
    h('button', { type: 'submit', class: 'secondary' }, 'Apply'));
  filters.addEventListener('submit', (ev) => {
    ev.preventDefault();
    keysPage.filter = { search: search.value.trim(), status: status.value };
    const target = appSel.value ? `#/keys/${encodeURIComponent(appSel.value)}` : '#/keys';
    if (location.hash === target) route(); else location.hash = target;
  });
  const create = can('operator') && apps.length
    ? h('button', { type: 'button', onclick: () => createKey(apps, app) }, 'Create key') : null;
  const rows = keys.map((k) => [
    h('strong', {}, k.name),
    // The masked form's first and last four characters; its run of `*` is shortened on screen.
    h('code', { class: 'masked', title: k.masked }, k.masked.replace(/\*{4,}/, '••••')),
    appName[k.app_id] || k.app_id,
    h('span', { class: `badge badge-${k.status}` }, k.status),
    when(k.created_at), k.created_by || '—', when(k.last_used_at), when(k.expires_at),
    k.status === 'revoked' ? `${when(k.revoked_at)} by ${k.revoked_by || '—'}` : '—',
    h('span', { class: 'row-actions' },
      h('a', { class: 'button secondary', href: `#/usage/key:${encodeURIComponent(k.id)}` }, 'Usage'),
      can('operator') && k.status !== 'revoked' ? [
        h('button', { type: 'button', class: 'secondary', onclick: () => rollKey(k) }, 'Roll'),
        k.status === 'disabled'
          ? h('button', { type: 'button', class: 'secondary', onclick: () => setDisabled(k, false) }, 'Enable')
          : h('button', { type: 'button', class: 'secondary', onclick: () => setDisabled(k, true) }, 'Disable'),
        h('button', { type: 'button', class: 'danger', onclick: () => revokeKey(k) }, 'Revoke'),
      ] : null),
  ]);
  view.replaceChildren(
    pageHead(app ? `Keys of ${appName[app] || app}` : 'Keys', create),
    filters,
    table('API keys', ['Name', 'Key', 'App', 'Status', 'Created', 'Created by', 'Last used', 'Expires', 'Revoked', 'Actions'],
      rows, 'No key matches.'),
  );
}

function createKey(apps, appId) {
  const app = h('select', { required: true }, apps.map((a) => h('option', { value: a.id, selected: a.id === appId }, a.name)));
  const name = h('input', { type: 'text', required: true, autocomplete: 'off' });
  const days = h('input', { type: 'number', min: 1 });
  const ips = h('input', { type: 'text', autocomplete: 'off', placeholder: '10.0.0.0/8, 192.0.2.7' });
  formDialog('Create key', [
    field('App', app), field('Name', name),
    field('Expires in days', days, 'Empty: the gateway default.'),
    field('Allowed IPs', ips, 'Addresses or CIDRs, comma-separated; empty: any.'),
  ], 'Create key', async () => {
    const body = { name: name.value.trim() };
    if (days.value) body.expires_in_days = Number(days.value);
    const list = ips.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (list.length) body.allowed_ips = list;
    const { data } = await api('POST', `/v1/apps/${encodeURIComponent(app.value)}/keys`, body);
    setTimeout(async () => { await secretDialog('Key created', data); route(); }, 0);
  });
}

function rollKey(k) {
  const grace = h('select', {},
    [['0s', 'None: end the old key now'], ['1h', '1 hour'], ['24h', '24 hours'], ['168h', '7 days']]
      .map(([v, l]) => h('option', { value: v, selected: v === '24h' }, l)));
  formDialog(`Roll key ${k.name}`, [
    h('p', {}, 'A new key is issued for the same app, name and allowed IPs. The old key keeps working for the grace period, then ends.'),
    field('Grace period', grace),
  ], 'Roll key', async () => {
    const { data } = await api('POST', `/v1/keys/${encodeURIComponent(k.id)}/roll`, { grace: grace.value });
    setTimeout(async () => { await secretDialog('Key rolled: the new key', data); route(); }, 0);
  });
}

async function setDisabled(k, disable) {
  try {
    await api('POST', `/v1/keys/${encodeURIComponent(k.id)}/${disable ? 'disable' : 'enable'}`);
    toast(`Key ${k.name} ${disable ? 'disabled' : 'enabled'}.`);
  } catch (e) { toast(`Failed: ${e.message}`); }
  route();
}

async function revokeKey(k) {
  const ok = await confirmDialog(`Revoke key ${k.name}?`,
    `Key ${k.masked} stops working on every gateway instance within a second. A revoked key never works again.`, 'Revoke key');
  if (!ok) return;
  try {
    await api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`);
    toast(`Key ${k.name} revoked.`);
  } catch (e) { toast(`Revoke failed: ${e.message}`); }
  route();
}

// ---------- Usage ----------
function isoDay(d) { return d.toISOString().slice(0, 10); }

// What the usage chart can show: one series of bars, or a stack of them (bottom first). Each
// part is told apart by its fill and, for the second, a hatch, never by colour alone; its
// totals are written out beside the chart.
const CHART_MEASURES = {
  requests: { unit: 'requests', parts: [{ field: 'requests', label: 'Requests', cls: 'bar' }] },
  tokens: {
    unit: 'tokens',
    parts: [
      { field: 'input_tokens', label: 'Input tokens', cls: 'bar bar-input' },
      { field: 'output_tokens', label: 'Output tokens', cls: 'bar bar-output', hatch: true },
    ],
  },
};

const dayTotal = (d, parts) => parts.reduce((a, p) => a + d[p.field], 0);

function barChart(title, series, measure) {
  const { unit, parts } = measure;
  const W = 640; const H = 220; const pad = { l: 52, r: 8, t: 12, b: 28 };
  const max = Math.max(1, ...series.map((d) => dayTotal(d, parts)));
  const bw = (W - pad.l - pad.r) / Math.max(1, series.length);
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  };
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('class', 'chart');
  const total = series.reduce((a, d) => a + dayTotal(d, parts), 0);
  svg.append(s('title', {}, `${title}: ${count(total)} ${unit} over ${series.length} days, at most ${count(max)} in a day`));
  // Diagonal stripes over the part's fill: the stacked parts differ in shape as well as colour.
  const hatch = s('pattern', { id: 'chart-hatch', patternUnits: 'userSpaceOnUse', width: 6, height: 6, patternTransform: 'rotate(45)' });
  hatch.append(s('rect', { width: 6, height: 6, class: 'hatch-fill' }), s('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'hatch-line' }));
  const defs = s('defs', {});
  defs.append(hatch);
  svg.append(defs);
  for (const frac of [0, 0.5, 1]) {
    const y = pad.t + (H - pad.t - pad.b) * (1 - frac);
    svg.append(s('line', { x1: pad.l, x2: W - pad.r, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: pad.l - 6, y: y + 4, 'text-anchor': 'end', class: 'axis' }, count(Math.round(max * frac))));
  }
  series.forEach((d, i) => {
    let base = H - pad.b;
    for (const part of parts) {
      const bh = (H - pad.t - pad.b) * (d[part.field] / max);
      base -= bh;
      const rect = s('rect', { x: pad.l + i * bw + 1, y: base, width: Math.max(1, bw - 2), height: bh, class: part.cls });
      // An attribute, not the stylesheet: a stylesheet's url(#id) would point into the stylesheet.
      if (part.hatch) rect.setAttribute('fill', 'url(#chart-hatch)');
      rect.append(s('title', {}, `${d.date}: ${count(d[part.field])} ${part.label.toLowerCase()}`));
      svg.append(rect);
    }
    if ((series.length - 1 - i) % 7 === 0) { // weekly, ending today
      svg.append(s('text', { x: pad.l + i * bw + bw / 2, y: H - 8, 'text-anchor': 'middle', class: 'axis' }, d.date.slice(5)));
    }
  });
  return svg;
}

// 30 days, oldest first, days without traffic at 0.
function fillDays(rows, days) {
  const by = Object.fromEntries(rows.map((r) => [r.date, r]));
  const out = [];
  const today = new Date();
  for (let i = days - 1; i >= 0; i--) {
    const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    const date = isoDay(d);
    const row = by[date] || {};
    out.push({ date, requests: row.requests || 0, input_tokens: row.input_tokens || 0, output_tokens: row.output_tokens || 0 });
  }
  return out;
}

// The 30 days' totals as text, whichever measure the chart shows.
function usageTotals(series) {
  const sum = (f) => series.reduce((a, d) => a + d[f], 0);
  const input = sum('input_tokens');
  const output = sum('output_tokens');
  const item = (label, value) => h('div', {}, h('dt', {}, label), h('dd', {}, count(value)));
  return h('dl', { class: 'totals' },
    item('Requests', sum('requests')), item('Input tokens', input), item('Output tokens', output), item('Tokens', input + output));
}

// The chart of one measure with its caption and, for a stack, a legend naming each part.
function usageChart(series, measureName, what) {
  const measure = CHART_MEASURES[measureName];
  const { parts } = measure;
  const total = series.reduce((a, d) => a + dayTotal(d, parts), 0);
  const heading = measureName === 'tokens' ? 'Tokens' : 'Requests';
  const split = parts.length > 1
    ? `${parts.map((p) => `${count(series.reduce((a, d) => a + d[p.field], 0))} ${p.label.toLowerCase().replace(' tokens', '')}`).join(' and ')}, `
    : '';
  const legend = parts.length > 1 ? h('ul', { class: 'legend' }, parts.map((p) => h('li', {},
    h('span', { class: `swatch swatch-${p.field}`, 'aria-hidden': 'true' }),
    `${p.label} (${p.hatch ? 'hatched, on top' : 'solid, below'})`))) : null;
  return h('figure', { class: 'chart-box' }, barChart(`${heading} per day for ${what}`, series, measure), legend,
    h('figcaption', {}, `${heading} per day (UTC), last 30 days, ${what}: ${split}${count(total)} in total.`));
}

async function usagePage(view, arg) {
  const [apps, keys] = await Promise.all([listAll('/v1/apps'), listAll('/v1/keys?limit=1000')]);
  const subject = arg || (apps[0] ? `app:${apps[0].id}` : '');
  const pick = h('select', {},
    h('optgroup', { label: 'Apps' }, apps.map((a) => h('option', { value: `app:${a.id}`, selected: subject === `app:${a.id}` }, a.name))),
    h('optgroup', { label: 'Keys' }, keys.map((k) => h('option', { value: `key:${k.id}`, selected: subject === `key:${k.id}` }, `${k.name} (${k.masked}, ${k.status})`))));
  pick.addEventListener('change', () => { location.hash = `#/usage/${encodeURIComponent(pick.value)}`; });
  let chart = h('p', { class: 'muted' }, 'No app or key yet.');
  if (subject) {
    const [kind, id] = [subject.slice(0, 3), subject.slice(4)];
    const rows = (await api('GET', `/v1/${kind === 'app' ? 'apps' : 'keys'}/${encodeURIComponent(id)}/usage?days=30`)).data;
    const label = pick.selectedOptions[0] ? pick.selectedOptions[0].textContent : id;
    const series = fillDays(rows, 30);
    const what = `${kind} ${label}`;
    // Requests or tokens: a switch between two charts of the same days, kept while the tab lives.
    const shown = usagePage.measure || 'requests';
    const holder = h('div', {}, usageChart(series, shown, what));
    const choices = h('fieldset', { class: 'switch' }, h('legend', {}, 'Chart'),
      ['requests', 'tokens'].map((m) => {
        const id = nextId('measure');
        const radio = h('input', { type: 'radio', name: 'measure', id, value: m, checked: m === shown });
        radio.addEventListener('change', () => {
          usagePage.measure = m;
          holder.replaceChildren(usageChart(series, m, what));
        });
        return h('span', { class: 'check' }, radio,
          h('label', { for: id }, m === 'tokens' ? 'Tokens (input and output, stacked)' : 'Requests'));
      }));
    chart = h('section', { 'aria-label': `Usage of ${what}` }, usageTotals(series), choices, holder);
  }
  const today = new Date();
  const from = h('input', { type: 'date', value: isoDay(new Date(today.getTime() - 29 * 864e5)) });
  const to = h('input', { type: 'date', value: isoDay(today) });
  const exportForm = h('form', { class: 'inline' }, field('From', from), field('To', to),
    h('button', { type: 'submit' }, 'Download CSV'));
  exportForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const { data } = await api('GET', `/v1/usage/export${qs({ from: from.value, to: to.value, format: 'csv' })}`);
      const url = URL.createObjectURL(new Blob([data], { type: 'text/csv' }));
      const a = h('a', { href: url, download: `scopegate-usage-${from.value}-${to.value}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (e) { toast(`Export failed: ${e.message}`); }
  });
  view.replaceChildren(pageHead('Usage'), h('form', { class: 'inline' }, field('App or key', pick)), chart,
    h('h2', {}, 'Export'), h('p', {}, 'Requests and tokens per app, key and day as CSV (date, app_id, key_id, requests, input_tokens, output_tokens).'), exportForm);
}

// ---------- Routes ----------
// A target's state: out of rotation while ejected or failing its health check.
function targetState(t) {
  if (t.ejected_until) return h('span', { class: 'badge badge-ejected' }, `ejected until ${when(t.ejected_until)}`);
  if (!t.healthy) return h('span', { class: 'badge badge-failing' }, 'failing check');
  return h('span', { class: 'badge badge-up' }, 'up');
}

// One table per upstream: its targets as they stand now (read each time the page is shown).
function upstreamTables(upstreams) {
  if (!upstreams.length) return h('p', { class: 'muted' }, 'No upstreams.');
  return h('div', {}, upstreams.map((u) => h('section', { class: 'upstream' },
    h('h3', {}, h('code', {}, u.name), ' ', h('span', { class: 'muted' }, `balance: ${u.balance}`)),
    table(`Targets of upstream ${u.name}`, ['Target', 'Address', 'Weight', 'State', 'In flight', 'Connections'],
      u.targets.map((t) => [h('code', {}, t.url), h('code', {}, t.address), String(t.weight), targetState(t),
        String(t.in_flight), String(t.open_connections)]), 'No target resolved yet.'))));
}

async function routesPage(view) {
  const [routes, apps, upstreams] = await Promise.all([api('GET', '/v1/routes').then((r) => r.data), listAll('/v1/apps'),
    api('GET', '/v1/upstreams').then((r) => r.data)]);
  const rows = routes.map((r) => {
    const allowed = r.scope === 'public' ? [h('span', { class: 'muted' }, 'anyone (public, no key)')]
      : apps.filter((a) => a.scopes.includes(r.scope)).map((a) => h('span', { class: 'chip' }, a.name));
    return [
      h('code', {}, r.methods.join(', ')),
      h('code', {}, r.path),
      h('code', {}, r.scope),
      r.upstream,
      h('span', { class: 'chips' }, allowed.length ? allowed : h('span', { class: 'muted' }, 'no app')),
    ];
  });
  view.replaceChildren(pageHead('Routes'),
    h('p', {}, 'From the config in force, first match wins. An app may call a route when it holds the route\'s scope.'),
    table('Routes', ['Methods', 'Path', 'Scope', 'Upstream', 'Apps allowed'], rows, 'No routes.'),
    h('h2', {}, 'Upstreams'),
    h('p', {}, 'Each upstream\'s targets as they stand now. A target out of rotation (failing its health check, or ejected after failed requests) gets no requests until it is back.'),
    upstreamTables(upstreams));
}

// ---------- Credentials ----------
// Upstream credentials: the value is typed into a password field, sent once in the create or
// replace call and cleared; the API never answers with it, so the page only ever shows the
// mask (first and last 3 characters).
const shortMask = (masked) => masked.replace(/\*{4,}/, '••••');
const maskedCode = (masked) => h('code', { class: 'masked', title: masked }, shortMask(masked));

function usedByChips(u) {
  const items = [
    ...(u && u.upstreams ? u.upstreams : []).map((name) => h('span', { class: 'chip' }, `upstream ${name}`)),
    ...(u && u.apps ? u.apps : []).map((a) => h('span', { class: 'chip', title: `app id ${a.id}` }, `app ${a.name} (${a.upstream})`)),
  ];
  return items.length ? h('span', { class: 'chips' }, items) : h('span', { class: 'muted' }, 'not in use');
}

function usedByText(u) {
  const parts = [];
  if (u.upstreams.length) parts.push(`upstream${u.upstreams.length === 1 ? '' : 's'} ${u.upstreams.join(', ')}`);
  if (u.apps.length) parts.push(`app${u.apps.length === 1 ? '' : 's'} ${u.apps.map((a) => `${a.name} (for upstream ${a.upstream})`).join(', ')}`);
  return parts.join('; ');
}

const isUsed = (u) => !!u && (u.upstreams.length + u.apps.length) > 0;

// A password input whose value is wiped when its dialog closes, however it closes.
function secretInput(dlgHolder) {
  const input = h('input', {
    type: 'password', required: true, autocomplete: 'off', spellcheck: 'false',
  });
  dlgHolder.push(input);
  return input;
}

async function credentialsPage(view) {
  const search = credentialsPage.search || '';
  let creds;
  try {
    creds = await listAll(`/v1/credentials${qs({ search })}`);
  } catch (e) {
    if (e.code !== 'credentials_unavailable') throw e;
    view.replaceChildren(pageHead('Credentials'),
      h('div', { class: 'warning notice', role: 'alert' },
        h('p', {}, h('strong', {}, 'Credentials are unavailable on this gateway: it has no master key.')),
        h('p', {}, 'Upstream credentials are encrypted under a master key (32 random bytes, base64). Set ',
          h('code', {}, 'credentials.master_key_env'), ' (or ', h('code', {}, 'master_key_file'),
          ') in the config, provide the key, and restart the gateway.'),
        h('p', { class: 'muted' }, `The gateway answered: ${e.message}`)));
    return;
  }
  const add = can('admin') ? h('button', { type: 'button', onclick: () => addCredential() }, 'Add credential') : null;
  const rows = creds.map((c) => {
    const cells = [
      h('strong', {}, c.name),
      c.description ? c.description : h('span', { class: 'muted' }, '—'),
      maskedCode(c.masked),
      usedByChips(c.used_by),
      c.last_used_at ? when(c.last_used_at) : h('span', { class: 'muted' }, 'never'),
      `${when(c.updated_at)} by ${c.updated_by || '—'}`,
    ];
    if (can('admin')) {
      cells.push(h('span', { class: 'row-actions' },
        h('button', { type: 'button', class: 'secondary', onclick: () => replaceCredential(c) }, 'Replace value'),
        h('button', { type: 'button', class: 'danger', onclick: () => deleteCredential(c) }, 'Delete')));
    }
    return cells;
  });
  const columns = ['Name', 'Description', 'Value', 'Used by', 'Last used', 'Updated'];
  if (can('admin')) columns.push('Actions');
  view.replaceChildren(
    pageHead('Credentials', add),
    h('p', {}, 'Secrets the gateway sends to upstreams on the callers\' behalf (an LLM provider\'s API key, a service token). ',
      'Values are encrypted at rest and never shown again after they are saved: only their first and last 3 characters.'),
    searchBox('Search credentials by name', search, (s) => { credentialsPage.search = s; route(); }),
    table('Upstream credentials', columns, rows, search ? 'No credential matches.' : 'No credentials yet.'),
  );
}

function addCredential() {
  const secrets = [];
  const name = h('input', { type: 'text', required: true, autocomplete: 'off', pattern: '[A-Za-z0-9_\\-]{1,64}', maxlength: 64, spellcheck: 'false' });
  const description = h('input', { type: 'text', autocomplete: 'off' });
  const value = secretInput(secrets);
  const dlg = formDialog('Add credential', [
    field('Name', name, 'Letters, digits, _ and -, at most 64 (e.g. MY_OPENAI).'),
    field('Description', description, 'Optional.'),
    field('Value', value, 'Pasted once; it is encrypted and never shown again.'),
  ], 'Add credential', async () => {
    const body = { name: name.value.trim(), value: value.value };
    if (description.value.trim()) body.description = description.value.trim();
    try {
      const { data } = await api('POST', '/v1/credentials', body);
      toast(`Credential ${data.name} saved: ${shortMask(data.masked)}.`);
    } finally {
      body.value = '';
    }
    route();
  });
  dlg.addEventListener('close', () => { for (const s of secrets) s.value = ''; });
}

function replaceCredential(c) {
  const secrets = [];
  const value = secretInput(secrets);
  const description = h('input', { type: 'text', autocomplete: 'off', value: c.description || '' });
  const dlg = formDialog(`Replace value of ${c.name}`, [
    h('p', {}, 'The new value replaces ', maskedCode(c.masked),
      ' on every gateway instance within a second. The old value is not kept.'),
    field('New value', value, 'Pasted once; it is encrypted and never shown again.'),
    field('Description', description),
  ], 'Replace value', async () => {
    const body = { value: value.value };
    if (description.value.trim() !== (c.description || '')) body.description = description.value.trim();
    try {
      const { data } = await api('PUT', `/v1/credentials/${encodeURIComponent(c.name)}`, body);
      toast(`Credential ${data.name} replaced: ${shortMask(data.masked)}.`);
    } finally {
      body.value = '';
    }
    route();
  });
  dlg.addEventListener('close', () => { for (const s of secrets) s.value = ''; });
}

function inUseDialog(c, message, usedBy) {
  const done = h('button', { type: 'button', onclick: () => dlg.close() }, 'Close');
  const list = usedBy && isUsed(usedBy) ? h('ul', {},
    usedBy.upstreams.map((u) => h('li', {}, 'upstream ', h('code', {}, u), ' (in the config: remove its ', h('code', {}, 'credential:'), ')')),
    usedBy.apps.map((a) => h('li', {}, 'app ', h('strong', {}, a.name), ` (id ${a.id}) for upstream `, h('code', {}, a.upstream)))) : null;
  const dlg = openDialog(`Credential ${c.name} is still in use`, [
    h('p', { class: 'error', role: 'alert' }, `Not deleted: ${message}.`),
    list ? h('p', {}, 'Stop naming it in these first:') : null,
    list,
  ], [done]);
  done.focus();
}

async function deleteCredential(c) {
  const used = isUsed(c.used_by) ? ` It is still used by ${usedByText(c.used_by)}: the gateway refuses to delete it until they stop naming it.` : '';
  const ok = await confirmDialog(`Delete credential ${c.name}?`,
    `The value ${shortMask(c.masked)} is erased. Requests that still need it fail with 502 credential_unavailable. This cannot be undone.${used}`,
    'Delete credential');
  if (!ok) return;
  try {
    await api('DELETE', `/v1/credentials/${encodeURIComponent(c.name)}`);
    toast(`Credential ${c.name} deleted.`);
  } catch (e) {
    if (e.status === 409) {
      let usedBy = null;
      try { usedBy = (await api('GET', `/v1/credentials/${encodeURIComponent(c.name)}`)).data.used_by; } catch { /* shown by the message */ }
      inUseDialog(c, e.message, usedBy);
    } else {
      toast(`Delete failed: ${e.message}`);
    }
  }
  route();
}

// ---------- Audit ----------
async function auditPage(view) {
  const f = auditPage.filter || (auditPage.filter = { since: '', app: '', key: '' });
  const apps = await listAll('/v1/apps');
  const appName = Object.fromEntries(apps.map((a) => [a.id, a.name]));
  const first = await api('GET', `/v1/audit${qs({ since: f.since, app: f.app, key: f.key, limit: 100 })}`);
  let events = first.data;
  let next = nextLink(first.headers);
  const since = h('input', { type: 'datetime-local', value: f.since ? f.since.slice(0, 16) : '' });
  const app = h('select', {}, h('option', { value: '' }, 'All apps'), apps.map((a) => h('option', { value: a.id, selected: a.id === f.app }, a.name)));
  const key = h('input', { type: 'text', value: f.key, autocomplete: 'off' });
  const filters = h('form', { class: 'inline', role: 'search' }, field('Since (UTC)', since), field('App', app), field('Key id', key),
    h('button', { type: 'submit', class: 'secondary' }, 'Apply'));
  filters.addEventListener('submit', (ev) => {
    ev.preventDefault();
    auditPage.filter = { since: since.value ? `${since.value}:00Z` : '', app: app.value, key: key.value.trim() };
    route();
  });
  const holder = h('div');
  const more = h('button', { type: 'button', class: 'secondary' }, 'Load more');
  const draw = () => {
    holder.replaceChildren(table('Audit events', ['At', 'Actor', 'Action', 'App', 'Key', 'Details'], events.map((e) => [
      when(e.at), e.actor, h('span', { class: 'chip' }, e.action),
      e.app_id ? (appName[e.app_id] || e.app_id) : '—', e.key_id ? h('code', {}, e.key_id) : '—',
      e.details && Object.keys(e.details).length ? h('code', { class: 'details' }, JSON.stringify(e.details)) : '—',
    ]), 'No events.'));
    more.hidden = !next;
  };
  more.addEventListener('click', async () => {
    const page = await api('GET', next);
    events = events.concat(page.data);
    next = nextLink(page.headers);
    draw();
  });
  draw();
  view.replaceChildren(pageHead('Audit'), filters, holder, more);
}

document.addEventListener('DOMContentLoaded', start);
