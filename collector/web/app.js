// Tally's billing dashboard and customer portal.
//
// No framework and no build step. The page holds no data of its own: every number comes
// from the same /v1 API any client uses, called with the token the user typed. The token
// lives in sessionStorage (gone when the tab closes) and travels only in the
// Authorization header: never in a URL, never in a cookie. The DOM is built with
// textContent only, so nothing the API returns is ever parsed as HTML. Integers the API
// sends beyond 2^53 stay exact (BigInt), so a quantity is shown digit for digit.

const TOKEN_KEY = 'tally.token';
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signoutButton = document.getElementById('signout');

let me = null; // {token_id, role, customer}

// Idle sign-out: after this many seconds without the user touching the page (the server's
// `serve --ui-idle`, written into the page), the token is dropped and the sign-in form
// shown. Activity is the user's own input: API calls the page makes do not count.
const IDLE_SECS = Math.max(1, Number(document.querySelector('meta[name="tally-ui-idle"]')?.content) || 1800);
const ACTIVE_KEY = 'tally.lastActive';

// --- small helpers -------------------------------------------------------------------

// Children as nodes: null, undefined and false are "nothing here" (`cond ? x : null`), never
// the text "null"; anything else is text.
function nodes(children) {
  return children.flat(Infinity)
    .filter((c) => c !== undefined && c !== null && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else e.setAttribute(k, String(v));
  }
  e.append(...nodes(children));
  return e;
}

// `parent.replaceChildren`, with `el`'s rule for children (the DOM's own prints "null").
function fill(parent, ...children) {
  parent.replaceChildren(...nodes(children));
}

// A table with a "Nothing here." row when there are no rows, in a box that scrolls sideways
// if the table must be wider than the page (the page itself never does). `headers`: text
// or <th> elements.
function table(attrs, headers, rows, empty = 'Nothing here.') {
  const body = rows.length ? rows
    : el('tr', { class: 'empty' }, el('td', { colspan: Math.max(1, headers.length), class: 'muted' }, empty));
  return el('div', { class: 'scroll' },
    el('table', attrs,
      headers.length ? el('thead', {}, el('tr', {}, headers.map((h) => (h instanceof Node ? h : el('th', {}, h))))) : null,
      el('tbody', {}, body)));
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY) || '';
  const r = await fetch(path, {
    method: options.method || 'GET',
    headers: { Authorization: `Bearer ${token}` },
    cache: 'no-store',
  });
  const text = await r.text();
  if (!r.ok) {
    let code = 'error';
    let message = `HTTP ${r.status}`;
    try {
      const j = JSON.parse(text);
      code = j.error.code;
      message = j.error.message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, code, message);
  }
  return options.text ? text : parseJson(text);
}

// JSON.parse, except that an integer beyond 2^53 (which a number would round) is read from
// its source text as a BigInt.
function parseJson(text) {
  return JSON.parse(text, (_key, v, context) => (
    typeof v === 'number' && !Number.isSafeInteger(v) && context && /^-?\d+$/.test(context.source)
      ? BigInt(context.source) : v));
}

// A quantity as text, exact (a number or a BigInt); null is an unlimited limit.
const fmt = (n) => (n === null || n === undefined ? 'unlimited'
  : (typeof n === 'bigint' ? n : Number(n)).toLocaleString('en-US'));
const enc = encodeURIComponent;

function monthOf(d) {
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}
function thisMonth() { return monthOf(new Date()); }
function addMonths(month, k) {
  const [y, m] = month.split('-').map(Number);
  return monthOf(new Date(Date.UTC(y, m - 1 + k, 1)));
}
function isoDay(d) { return d.toISOString().slice(0, 10); }

function showError(where, e) {
  const notFound = e instanceof ApiError && e.status === 404;
  fill(where, el('p', { class: 'error', 'data-error': notFound ? 'not_found' : (e.code || 'error') },
    notFound ? `Not found: ${e.message}` : `Error: ${e.message}`));
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- sign-in ------------------------------------------------------------------------

function renderSignIn(message) {
  fill(nav);
  who.textContent = '';
  signoutButton.hidden = true;
  const input = el('input', { type: 'password', id: 'token', autocomplete: 'off', placeholder: 'tally_…' });
  const form = el('form', { class: 'signin', id: 'signin' },
    el('h1', {}, 'Sign in'),
    el('label', { for: 'token' }, 'API token'),
    input,
    el('button', { type: 'submit' }, 'Sign in'),
    message ? el('p', { class: 'error', id: 'signin-error' }, message) : null);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    // Signing in is activity: the idle time counts from now, however long the form waited.
    touch();
    await start();
  });
  fill(main, form);
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(ACTIVE_KEY);
  me = null;
  location.hash = '';
  renderSignIn(typeof message === 'string' ? message : undefined);
}
signoutButton.addEventListener('click', () => signOut());

function touch() {
  if (sessionStorage.getItem(TOKEN_KEY)) sessionStorage.setItem(ACTIVE_KEY, String(Date.now()));
}
for (const ev of ['pointerdown', 'keydown', 'wheel', 'touchstart']) {
  document.addEventListener(ev, touch, { capture: true, passive: true });
}

function idleFor() {
  const last = Number(sessionStorage.getItem(ACTIVE_KEY));
  return last ? (Date.now() - last) / 1000 : 0;
}

function idleMessage() {
  const n = IDLE_SECS % 60 === 0 ? `${IDLE_SECS / 60} minutes` : `${IDLE_SECS} seconds`;
  return `Signed out after ${n} without activity.`;
}

// Checked every second rather than with one long timer: a timer does not run while the
// machine sleeps, and the check sees the time that really passed.
setInterval(() => {
  if (sessionStorage.getItem(TOKEN_KEY) && idleFor() >= IDLE_SECS) signOut(idleMessage());
}, 1000);

async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return renderSignIn();
  // A tab that comes back (reloaded, restored) after the idle time starts signed out.
  if (idleFor() >= IDLE_SECS) return signOut(idleMessage());
  touch();
  try {
    me = await api('/v1/whoami');
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ACTIVE_KEY);
    return renderSignIn(e.status === 401
      ? `This token is not valid: ${e.message}`
      : `Cannot sign in: ${e.message}`);
  }
  signoutButton.hidden = false;
  fill(who, await whoLabel());
  who.setAttribute('data-role', me.role);
  const links = me.role === 'customer'
    ? [['Usage & statements', `#/customers/${me.customer}`], ['Agents', '#/agents']]
    : [['Customers', '#/'], ['Agents', '#/agents'], ['Anomalies', '#/anomalies'],
       ['Quarantine', '#/quarantine'], ['Audit log', '#/audit']];
  fill(nav, links.map(([t, h]) => el('a', { href: h }, t)));
  route();
}

// The header's "who": a role, or in the customer portal the customer's name (its id beside
// it, secondary). Without the name (the API did not answer), the id alone.
async function whoLabel() {
  if (me.role !== 'customer') return me.role;
  const names = await customerNames().catch(() => new Map());
  const name = names.get(me.customer);
  return name ? [el('span', { class: 'who-name' }, name), ' ', el('span', { class: 'muted who-id' }, me.customer)]
    : `customer ${me.customer}`;
}

// Customer id → name, as /v1/customers answers this token (a customer token: its own).
async function customerNames() {
  const { customers } = await api('/v1/customers');
  return new Map(customers.map((c) => [c.id, c.name]));
}

// --- views --------------------------------------------------------------------------

async function overview() {
  fill(main, el('h1', {}, `Customers — ${thisMonth()}`), el('p', { class: 'muted' }, 'Loading…'));
  const month = thisMonth();
  const { customers } = await api(`/v1/summary?period=${month}`);
  const rows = [];
  for (const c of customers) {
    const lines = c.lines.length ? c.lines : [{ metric: '—', used: 0, limit: null, overage: 0 }];
    for (const l of lines) {
      const pct = l.limit ? Math.min(100, (100 * Number(l.used)) / Number(l.limit)) : 0;
      rows.push(el('tr', { 'data-customer': c.id, 'data-metric': l.metric },
        el('td', {}, el('a', { href: `#/customers/${c.id}` }, c.name)),
        el('td', {}, l.metric),
        el('td', { class: 'num', 'data-field': 'used' }, fmt(l.used)),
        el('td', { class: 'num', 'data-field': 'limit' }, fmt(l.limit)),
        el('td', {}, l.limit ? el('span', { class: `bar${l.used > l.limit ? ' over' : ''}` },
          el('span', { style: null, 'data-pct': pct.toFixed(0) })) : ''),
        el('td', { class: 'num', 'data-field': 'overage' }, fmt(l.overage))));
    }
  }
  fill(main, el('h1', {}, `Customers — ${month}`),
    table({ id: 'overview' }, ['Customer', 'Metric', el('th', { class: 'num' }, 'Used'),
      el('th', { class: 'num' }, 'Limit'), '', el('th', { class: 'num' }, 'Overage')], rows));
  main.append(await alertsTable(''));
  // Bar widths through the CSSOM (the CSP allows no inline style attributes).
  for (const s of main.querySelectorAll('[data-pct]')) s.style.width = `${s.getAttribute('data-pct')}%`;
  main.setAttribute('data-view', 'overview');
}

// An alert is per license: one license's usage of a metric against that license's own
// limit, so it may differ from the statement, which pools the licenses. In the customer
// portal the customer is implicit and the webhook (the vendor's) is not shown at all; for
// staff an undelivered alert says "not delivered" (the API cannot tell whether a webhook
// is configured, so it is not "pending").
async function alertsTable(customer) {
  const portal = me.role === 'customer';
  const q = customer ? `?customer=${enc(customer)}&limit=50` : '?limit=50';
  const [{ alerts }, names] = await Promise.all([api(`/v1/alerts${q}`), portal ? new Map() : customerNames()]);
  const headers = ['Crossed', portal ? null : 'Customer', 'License', 'Metric', 'Month',
    el('th', { class: 'num' }, 'Threshold'), el('th', { class: 'num' }, 'Used'), el('th', { class: 'num' }, 'Limit'),
    portal ? null : el('th', { title: 'Delivery to the vendor\'s webhook ("not delivered" also when none is configured)' }, 'Webhook')];
  return el('div', { class: 'card', id: 'alerts' }, el('h2', {}, 'Usage alerts'),
    el('p', { class: 'muted caption', id: 'alerts-caption' },
      'Each alert is per license, against that license\'s monthly limit: its "used" counts that license only, ',
      'so it can differ from the statement, which pools all licenses that counted usage in the month.'),
    table({}, headers.filter(Boolean),
      alerts.map((a) => el('tr', { 'data-alert': a.id, 'data-customer': a.customer },
        el('td', {}, a.crossed_at),
        portal ? null : el('td', { 'data-field': 'customer' },
          el('a', { href: `#/customers/${a.customer}`, title: a.customer }, names.get(a.customer) || a.customer)),
        el('td', { class: 'mono', 'data-field': 'license' }, a.license),
        el('td', {}, a.metric), el('td', {}, a.period),
        el('td', { class: 'num', 'data-field': 'threshold' }, `${a.threshold_percent}%`),
        el('td', { class: 'num' }, fmt(a.used)), el('td', { class: 'num' }, fmt(a.limit)),
        portal ? null : el('td', { 'data-field': 'webhook' },
          a.delivered_at ? `delivered ${a.delivered_at}` : 'not delivered'))),
      'Nothing here: no threshold crossed.'));
}

async function customerView(id, params) {
  fill(main, el('p', { class: 'muted' }, 'Loading…'));
  const { customers } = await api(`/v1/customers`);
  const c = customers.find((x) => x.id === id);
  if (!c) throw new ApiError(404, 'not_found', `customer ${id} not found`);
  const month = params.get('month') || thisMonth();
  const usageBox = el('div', { class: 'card', id: 'usage' });
  const statementBox = el('div', { class: 'card', id: 'statement' });
  const agentsBox = el('div', { class: 'card', id: 'customer-agents' });
  const alertsBox = el('div', {});
  fill(main, el('h1', { 'data-customer-name': c.name }, c.name),
    el('p', { class: 'muted' }, c.id), usageBox, statementBox, alertsBox, agentsBox);
  main.setAttribute('data-view', 'customer');
  await Promise.all([
    usageChart(usageBox, id, params),
    statement(statementBox, id, month),
    agentsTable(agentsBox, id),
    alertsTable(id).then((t) => fill(alertsBox, t)),
  ]);
}

const GRANULARITY_SECS = { hour: 3600, day: 86400 };

async function usageChart(box, customer, params) {
  const { licenses } = await api(`/v1/licenses?customer=${enc(customer)}`);
  const metrics = [...new Set(licenses.flatMap((l) => l.metrics.map((m) => m.metric)))].sort();
  const metric = params.get('metric') || metrics[0] || '';
  const granularity = params.get('granularity') || 'day';
  const now = new Date();
  const defaultFrom = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const from = params.get('from') || isoDay(defaultFrom);
  const to = params.get('to') || isoDay(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1)));
  const select = el('select', { id: 'metric' }, metrics.map((m) => {
    const o = el('option', { value: m }, m);
    if (m === metric) o.selected = true;
    return o;
  }));
  const gSelect = el('select', { id: 'granularity' }, ['hour', 'day', 'month'].map((g) => {
    const o = el('option', { value: g }, g);
    if (g === granularity) o.selected = true;
    return o;
  }));
  const fromIn = el('input', { type: 'date', id: 'from', value: from });
  const toIn = el('input', { type: 'date', id: 'to', value: to });
  const apply = () => {
    const p = new URLSearchParams({ metric: select.value, granularity: gSelect.value, from: fromIn.value, to: toIn.value });
    location.hash = `#/customers/${customer}?${p}`;
  };
  const csv = el('button', { id: 'usage-csv', type: 'button' }, 'Download CSV');
  const chart = el('div', { id: 'chart' });
  const total = el('p', {}, 'Total: ', el('strong', { id: 'usage-total' }, '…'));
  fill(box, el('h2', {}, 'Usage'),
    el('div', { class: 'controls' },
      el('label', {}, 'Metric', select), el('label', {}, 'Granularity', gSelect),
      el('label', {}, 'From', fromIn), el('label', {}, 'To', toIn),
      el('button', { type: 'button', on: { click: apply } }, 'Show'), csv),
    total, chart);
  if (!metric) { total.lastChild.textContent = '0'; return; }
  const q = (f, t) => `customer=${enc(customer)}&metric=${enc(metric)}&granularity=${enc(granularity)}&from=${enc(f)}&to=${enc(t)}`;
  const fromD = new Date(`${from}T00:00:00Z`);
  const toD = new Date(`${to}T00:00:00Z`);
  const span = toD - fromD;
  const prevFrom = isoDay(new Date(fromD - span));
  const [cur, prev] = await Promise.all([
    api(`/v1/usage?${q(from, to)}`),
    api(`/v1/usage?${q(prevFrom, from)}`),
  ]);
  const sum = cur.rows.reduce((a, r) => a + BigInt(r.quantity), 0n);
  total.lastChild.textContent = fmt(sum);
  total.lastChild.setAttribute('data-value', String(sum));
  csv.addEventListener('click', async () => {
    const text = await api(`/v1/usage?${q(from, to)}&format=csv`, { text: true });
    download(`usage-${customer}-${metric}-${from}-${to}.csv`, text, 'text/csv');
  });
  // One point per period (missing periods are 0), the previous period shifted onto it.
  const step = GRANULARITY_SECS[granularity];
  const xs = [];
  if (step) {
    for (let t = fromD / 1000; t < toD / 1000; t += step) xs.push(t);
  } else {
    for (let m = from.slice(0, 7); `${m}-01` < to; m = addMonths(m, 1)) xs.push(Date.parse(`${m}-01T00:00:00Z`) / 1000);
  }
  const at = (rows, shift) => {
    const by = new Map(rows.map((r) => [Date.parse(r.period_start) / 1000 + shift, Number(r.quantity)]));
    return xs.map((x) => by.get(x) || 0);
  };
  const shift = step ? span / 1000 : 0;
  const data = [xs, at(cur.rows, 0), at(prev.rows, shift)];
  // The x axis ends where the last period does, so its bar or step is drawn whole.
  const end = step ? toD / 1000 : Date.parse(`${addMonths(from.slice(0, 7), xs.length)}-01T00:00:00Z`) / 1000;
  const width = Math.max(400, Math.min(1100, box.clientWidth - 40));
  const style = chartStyle(granularity);
  // eslint-disable-next-line no-undef
  const paths = uPlot.paths;
  const opts = {
    width, height: 300,
    scales: { x: { time: true, range: (_u, min) => [xs.length ? xs[0] : min, end] } },
    series: [{},
      style === 'bars'
        ? { label: metric, stroke: '#2457c5', fill: 'rgba(36, 87, 197, 0.55)', width: 1, paths: paths.bars({ size: [0.8, Infinity], align: 1 }) }
        : { label: metric, stroke: '#2457c5', width: 2, paths: paths.stepped({ align: 1, extend: true }) },
      { label: 'previous period', stroke: '#98a2b3', dash: [6, 4], paths: paths.stepped({ align: 1, extend: true }) }],
    // The y axis as wide as its longest label (quantities may have 19 digits).
    axes: [style === 'bars' ? periodAxis(xs, granularity, width) : {},
      { size: (_u, labels) => Math.max(50, 24 + 8 * Math.max(0, ...(labels || []).map((l) => String(l).length))) }],
  };
  // eslint-disable-next-line no-undef
  new uPlot(opts, data, chart);
  chart.setAttribute('data-chart-style', style);
  chart.setAttribute('data-chart-ready', String(xs.length));
}

// Days and months: a tick at the start of each period's bar (every k-th, to fit), named by
// its UTC date, as the API's periods are.
function periodAxis(xs, granularity, width) {
  const every = Math.ceil(xs.length / Math.max(1, Math.floor(width / 90)));
  const label = (t) => new Date(t * 1000).toISOString().slice(0, granularity === 'month' ? 7 : 10);
  return { splits: () => xs.filter((_, i) => i % every === 0), values: (_u, ticks) => ticks.map(label) };
}

// Each value is one period's total, so it is drawn flat over its period, never as a line
// ramping from the period before: bars for days and months, steps for hours (a year of
// hours is thousands of bars, thinner than a pixel).
function chartStyle(granularity) {
  return granularity === 'hour' ? 'steps' : 'bars';
}

// The licenses a pooled limit comes from (an open statement's line names them; none: no
// license limits the metric).
function licenseList(ids) {
  if (!ids.length) return el('span', { class: 'muted', title: 'no license limits this metric' }, '—');
  return ids.map((id, i) => [i ? ', ' : null, el('span', { class: 'mono', 'data-license': id }, id)]);
}

// A statement pools every license that counted usage in the month (an alert is per license).
// An open one names, per line, the licenses its limit comes from; a closed one (the signed
// document) does not, so neither does the page.
async function statement(box, customer, month) {
  const s = await api(`/v1/statements/${enc(customer)}/${enc(month)}`);
  const open = !s.closed;
  const lines = s.lines.map((l) => el('tr', { 'data-metric': l.metric },
    el('td', {}, l.metric),
    el('td', { class: 'num', 'data-field': 'used' }, fmt(l.used)),
    el('td', { class: 'num', 'data-field': 'limit' }, fmt(l.limit)),
    el('td', { class: 'num', 'data-field': 'overage' }, fmt(l.overage)),
    open ? el('td', { 'data-field': 'licenses' }, licenseList(l.licenses || [])) : null));
  const adjustments = (s.adjustments || []).map((a) => el('tr', {},
    el('td', {}, a.metric), el('td', {}, a.period), el('td', { class: 'num' }, fmt(a.quantity))));
  const nav2 = (k, label) => el('a', { href: `#/customers/${customer}?month=${addMonths(month, k)}` }, label);
  const csv = el('button', { type: 'button', id: 'statement-csv' }, 'Download CSV');
  // The API's CSV, as is (exact integers, whatever their size).
  csv.addEventListener('click', async () => {
    const text = await api(`/v1/statements/${enc(customer)}/${enc(month)}?format=csv`, { text: true });
    download(`statement-${customer}-${month}.csv`, text, 'text/csv');
  });
  fill(box,
    el('h2', {}, 'Statement ', el('span', { id: 'statement-period' }, month), ' ',
      el('span', { class: `badge${s.closed ? ' closed' : ''}`, id: 'statement-state' },
        s.closed ? (s.signature ? 'closed, signed' : 'closed, nothing billed') : 'open')),
    // A month that has not begun has no statement (the API refuses it).
    el('p', {}, nav2(-1, '← previous month'), ' · ', month < thisMonth() ? [nav2(1, 'next month →'), ' · '] : null, csv),
    el('p', { class: 'muted caption', id: 'statement-caption' },
      `This statement covers all licenses that counted usage in ${month}, pooled: a line's used is their total `,
      'and its limit the sum of their limits', open ? ' ("Limit from" names them).' : '.'),
    table({ id: 'statement-lines' }, ['Metric', el('th', { class: 'num' }, 'Used'),
      el('th', { class: 'num' }, 'Limit'), el('th', { class: 'num' }, 'Overage'),
      open ? el('th', { title: 'the licenses that counted usage in the month and limit the metric' }, 'Limit from') : null]
      .filter(Boolean), lines, 'No usage.'),
    adjustments.length ? el('h2', {}, 'Adjustments (late usage of closed months)') : null,
    adjustments.length ? table({ id: 'statement-adjustments' }, ['Metric', 'Month', el('th', { class: 'num' }, 'Quantity')], adjustments) : null,
    s.closed ? el('p', { class: 'muted' }, `Closed ${s.closed_at}, signed by vendor key ${s.key_id}.`) : null);
}

function agentRows(agents) {
  return agents.map((a) => el('tr', { 'data-agent': a.agent_id },
    el('td', {}, el('a', { href: `#/agents/${a.agent_id}` }, a.agent_id)),
    el('td', { class: 'mono', 'data-field': 'key_id' }, a.key_id), el('td', {}, a.customer_id), el('td', {}, a.license_id),
    el('td', { class: `status-${a.status}`, 'data-field': 'status' }, a.status),
    el('td', { class: 'num', 'data-field': 'last_seq' }, String(a.last_seq)),
    el('td', {}, a.last_seen || 'never')));
}

function agentTable(agents) {
  return table({ id: 'agents' }, ['Agent', el('th', { title: "what 'tally-agent status' shows as key_id" }, 'Key id'),
    'Customer', 'License', 'Status', el('th', { class: 'num' }, 'Last seq'), 'Last report'], agentRows(agents));
}

async function agentsTable(box, customer) {
  const { agents } = await api(`/v1/agents?customer=${enc(customer)}`);
  fill(box, el('h2', {}, 'Agents'), agentTable(agents));
}

async function agentsView() {
  const { agents } = await api('/v1/agents');
  fill(main, el('h1', {}, 'Agents'), agentTable(agents));
  main.setAttribute('data-view', 'agents');
}

async function agentView(id, params) {
  const before = params.get('before_seq');
  const q = before ? `?limit=100&before_seq=${enc(before)}` : '?limit=100';
  const { agent, reports, gaps } = await api(`/v1/agents/${enc(id)}/reports${q}`);
  const oldest = reports.length ? reports[reports.length - 1].seq : null;
  fill(main, el('h1', {}, `Agent ${agent.agent_id}`),
    el('p', {}, el('span', { class: `status-${agent.status}`, id: 'agent-status' }, agent.status),
      ` · customer ${agent.customer_id} · license ${agent.license_id} · last seq `,
      el('span', { id: 'agent-last-seq' }, String(agent.last_seq)), ` · last report ${agent.last_seen || 'never'}`),
    el('h2', {}, 'Gaps'),
    gaps.length ? table({ id: 'gaps' }, [], gaps.map((g) => el('tr', {},
      el('td', {}, `seq ${g.seq_from}–${g.seq_to}`), el('td', {}, g.closed_at ? `closed ${g.closed_at}` : 'open'),
      el('td', {}, `opened ${g.opened_at}`)))) : el('p', { class: 'muted' }, 'No gap: every seq arrived.'),
    el('h2', {}, 'Reports'),
    table({ id: 'agent-reports' }, ['Seq', 'Window', 'Received', 'Usage', 'Outcome', 'Reason', 'Digest'],
      reports.map((r) => el('tr', { 'data-seq': r.seq, 'data-status': r.status },
        el('td', { class: 'num' }, r.fork ? `${r.seq} (fork)` : String(r.seq)),
        el('td', {}, `${r.window_start} – ${r.window_end}`), el('td', {}, r.received_at),
        el('td', { 'data-field': 'usage', class: 'wrap' }, r.counters === null ? 'removed (retention)'
          : r.counters.length ? r.counters.map((c) => `${c.metric} ${fmt(c.quantity)}`).join(', ') : 'idle'),
        el('td', { 'data-field': 'status' }, r.status), el('td', { class: 'wrap' }, r.reason),
        el('td', { class: 'mono' }, r.digest.slice(0, 16))))),
    oldest && oldest > 1 && reports.length === 100
      ? el('p', {}, el('a', { href: `#/agents/${agent.agent_id}?before_seq=${oldest}` }, 'older reports →')) : null);
  main.setAttribute('data-view', 'agent');
}

async function anomaliesView() {
  const { anomalies } = await api('/v1/anomalies');
  fill(main, el('h1', {}, 'Anomalies'),
    table({ id: 'anomalies' }, ['Kind', 'Customer', 'Agent', 'Seqs', 'Detail', 'Opened', 'Closed'],
      anomalies.map((a) => el('tr', {},
        el('td', {}, a.kind), el('td', {}, a.customer_id), el('td', {}, a.agent_id),
        el('td', {}, a.seq_from === a.seq_to ? String(a.seq_from) : `${a.seq_from}–${a.seq_to}`),
        el('td', { class: 'wrap' }, a.detail), el('td', {}, a.opened_at), el('td', {}, a.closed_at || 'open')))));
  main.setAttribute('data-view', 'anomalies');
}

async function quarantineView() {
  const { reports } = await api('/v1/quarantine');
  const act = (digest, what) => async () => {
    try {
      await api(`/v1/quarantine/${digest}/${what}`, { method: 'POST' });
      await quarantineView();
    } catch (e) {
      main.append(el('p', { class: 'error', 'data-error': e.code }, `${what}: ${e.message}`));
    }
  };
  const admin = me.role === 'admin';
  fill(main, el('h1', {}, 'Quarantine'),
    admin ? null : el('p', { class: 'muted' }, 'Only an admin token can release or discard.'),
    table({ id: 'quarantine' }, ['Digest', 'Customer', 'Agent', 'Seq', 'Reason', 'Detail', ''],
      reports.map((r) => el('tr', { 'data-digest': r.digest },
        el('td', { class: 'mono' }, r.digest.slice(0, 16)), el('td', {}, r.customer_id), el('td', {}, r.agent_id),
        el('td', { class: 'num' }, String(r.seq)), el('td', {}, r.reason), el('td', { class: 'wrap' }, r.detail),
        el('td', {}, admin ? [
          el('button', { type: 'button', 'data-action': 'release', on: { click: act(r.digest, 'release') } }, 'Release'), ' ',
          el('button', { type: 'button', 'data-action': 'discard', on: { click: act(r.digest, 'discard') } }, 'Discard'),
        ] : null)))));
  main.setAttribute('data-view', 'quarantine');
}

async function auditView() {
  const { entries } = await api('/v1/audit?limit=200');
  // Paths and queries are long words: they wrap anywhere rather than widen the page.
  // Identical successful reads by one token within 10 minutes share a row ("Calls").
  fill(main, el('h1', {}, 'Audit log'),
    el('p', { class: 'muted' }, 'Every API call and admin action. Identical successful reads by the same token within 10 minutes are one row, with their count and the time of the last.'),
    table({ id: 'audit' }, ['At', 'Actor', 'Action', 'Target', 'Outcome', 'Calls'],
      entries.map((e) => el('tr', {},
        el('td', { class: 'nowrap' }, e.at), el('td', { class: 'nowrap mono' }, e.actor), el('td', { class: 'wrap' }, e.action),
        el('td', { class: 'wrap' }, e.target), el('td', {}, e.outcome),
        el('td', { class: 'num', 'data-field': 'calls' }, e.repeats > 1 ? `${e.repeats} (last ${e.last_at})` : '1')))));
  main.setAttribute('data-view', 'audit');
}

// --- routing ------------------------------------------------------------------------

async function route() {
  if (!me) return;
  const [path, query] = (location.hash.slice(1) || '/').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.getAttribute('href') === `#${path}`);
  main.removeAttribute('data-view');
  try {
    if (parts[0] === 'customers' && parts[1]) await customerView(decodeURIComponent(parts[1]), params);
    else if (parts[0] === 'agents' && parts[1]) await agentView(decodeURIComponent(parts[1]), params);
    else if (parts[0] === 'agents') await agentsView();
    else if (parts[0] === 'anomalies') await anomaliesView();
    else if (parts[0] === 'quarantine') await quarantineView();
    else if (parts[0] === 'audit') await auditView();
    else if (me.role === 'customer') { location.hash = `#/customers/${me.customer}`; return; }
    else await overview();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signOut();
    showError(main, e);
    main.setAttribute('data-view', 'error');
  }
}

window.addEventListener('hashchange', route);
start();
