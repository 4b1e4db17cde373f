// Browser tests of the console: Playwright (playwright-core) driving Debian's chromium against
// the real binary with the embedded store, an admin and an operator token, and two tiny upstreams.
// Run with `node tests/console/run.mjs` after `cargo build` (tests/run does both). The Routes
// check needs an upstream of several targets, one of them dead, behind a health check. The
// gateway has a master key (32 random bytes, base64, in an environment variable) for the
// Credentials page; a second gateway without one shows the page's 503 notice. A fake OpenAI
// endpoint behind a route with `meter: openai` gives the Usage page real token counts.
// Screenshots of each page at 1280 and 390 px go to $CONSOLE_SCREENSHOTS (default
// target/console-screenshots); the folder is printed.
import { chromium } from 'playwright-core';
import AxeBuilder from '@axe-core/playwright';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.SCOPEGATE_BIN || join(ROOT, 'target/debug/scopegate');
const SHOTS = resolve(process.env.CONSOLE_SCREENSHOTS || join(ROOT, 'target/console-screenshots'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ADMIN_TOKEN = 'console-admin-token-0123456789';
const OPERATOR_TOKEN = 'console-operator-token-0123456789';
const READ_TOKEN = 'console-read-token-0123456789';
const WIDTHS = [1280, 390];
// A fresh master key per run; it only ever reaches the gateway through its environment.
const MASTER_KEY = randomBytes(32).toString('base64');
const started = Date.now();
const cleanup = [];
let checks = 0;
const ok = (what) => { checks++; console.log(`  ok ${checks} - ${what}`); };

async function freePort() {
  const server = createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

async function waitFor(fn, what, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function startUpstream() {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, path: req.url }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  cleanup.push(() => server.close());
  return `http://127.0.0.1:${server.address().port}`;
}

// A fake OpenAI chat completions endpoint: every answer reports the same usage, so the tokens
// the console shows are exact multiples of it.
const FAKE_USAGE = { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42 };

async function startOpenAi() {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `no ${req.method} ${req.url}` } }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'x', object: 'chat.completion', choices: [], usage: FAKE_USAGE }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  cleanup.push(() => server.close());
  return `http://127.0.0.1:${server.address().port}`;
}

// A target with nothing listening: it fails its health check.
const DEAD_TARGET = 'http://127.0.0.1:1';

async function startGateway(upstream, otherUpstream, openai, { masterKey = true } = {}) {
  if (!existsSync(BIN)) {
    const built = spawnSync('cargo', ['build', '--locked'], { cwd: ROOT, stdio: 'inherit' });
    assert.equal(built.status, 0, 'cargo build');
  }
  const dir = mkdtempSync(join(tmpdir(), 'scopegate-console-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const [proxy, admin, metrics] = [await freePort(), await freePort(), await freePort()];
  const config = join(dir, 'gateway.yaml');
  writeFileSync(config, `listen: 127.0.0.1:${proxy}
admin:
  listen: 127.0.0.1:${admin}
  token_env: CONSOLE_ADMIN_TOKEN
  tokens:
    ci: {env: CONSOLE_OPERATOR_TOKEN, role: operator}
    viewer: {env: CONSOLE_READ_TOKEN, role: read}
metrics:
  listen: 127.0.0.1:${metrics}
${masterKey ? 'credentials:\n  master_key_env: CONSOLE_MASTER_KEY\n' : ''}store:
  path: ${join(dir, 'data')}
scopes:
  deploy_tool: Deploy a tool into an environment
  view_job_status: View the status of a job
upstreams:
  tools:
    url: ${upstream}
  llm:
    url: ${openai}
  models:
    targets:
      - url: ${upstream}
        weight: 2
      - url: ${otherUpstream}
      - url: ${DEAD_TARGET}
    balance: round_robin
    health:
      path: /healthz
      interval: 2s
      timeout: 1s
      unhealthy_after: 1
      healthy_after: 1
routes:
  - method: POST
    path: /api/v1/tools/{tool_id}/deploy
    scope: deploy_tool
    upstream: tools
  - method: GET
    path: /api/v1/jobs/{job_id}
    scope: view_job_status
    upstream: tools
  - method: GET
    path: /api/v1/health
    scope: public
    upstream: tools
  - method: GET
    path: /api/v1/models/{model_id}
    scope: public
    upstream: models
  - method: POST
    path: /v1/chat/completions
    scope: deploy_tool
    upstream: llm
    meter: openai
`);
  const child = spawn(BIN, ['serve', '-c', config], {
    env: {
      ...process.env, CONSOLE_ADMIN_TOKEN: ADMIN_TOKEN, CONSOLE_OPERATOR_TOKEN: OPERATOR_TOKEN, CONSOLE_READ_TOKEN: READ_TOKEN,
      ...(masterKey ? { CONSOLE_MASTER_KEY: MASTER_KEY } : {}), RUST_LOG: 'warn',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  cleanup.push(() => child.kill('SIGTERM'));
  const adminUrl = `http://127.0.0.1:${admin}`;
  await waitFor(async () => (await fetch(`${adminUrl}/console/`)).ok, 'the admin listener');
  return { adminUrl, proxyUrl: `http://127.0.0.1:${proxy}` };
}

// axe-core: no serious or critical violation on the page as it stands.
async function axe(page, name) {
  const result = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']).analyze();
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`), [],
    `axe on ${name}`);
  return result.violations.length;
}

// Each width: screenshot and axe; the page is re-rendered at each width.
async function capture(page, name) {
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: width > 500 ? 800 : 844 });
    await page.evaluate(() => document.querySelector('#toast').classList.remove('show'));
    await page.waitForTimeout(250);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${name} at ${width}px scrolls sideways by ${overflow}px`);
    await page.screenshot({ path: join(SHOTS, `${name}-${width}.png`), fullPage: true });
    await axe(page, `${name} at ${width}px`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
  ok(`${name}: screenshots at ${WIDTHS.join(' and ')} px, no serious axe violation, no sideways scroll`);
}

async function go(page, label, heading) {
  await page.getByRole('navigation', { name: 'Pages' }).getByRole('link', { name: label, exact: true }).click();
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
}

async function signIn(page, adminUrl, token) {
  await page.goto(`${adminUrl}/console/`);
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Apps' }).waitFor();
}

async function adminApi(adminUrl, method, path, body) {
  const res = await fetch(`${adminUrl}${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// A credential value must be nowhere in the page once it is submitted: not in the document's
// markup or text, not in any input's value, not in storage. Its middle (what the mask hides) is
// checked on its own too.
async function assertNoSecret(page, values, when) {
  const found = await page.evaluate((needles) => {
    const inputs = [...document.querySelectorAll('input, textarea, select')].map((i) => i.value);
    const hay = [document.documentElement.outerHTML, document.body.innerText, ...inputs,
      JSON.stringify(sessionStorage), JSON.stringify(localStorage)];
    return needles.filter((n) => hay.some((t) => t.includes(n)));
  }, values.flatMap((v) => [v, v.slice(3, -3)]));
  assert.deepEqual(found, [], `a credential value is in the page ${when}`);
}

async function proxyStatus(proxyUrl, key) {
  const res = await fetch(`${proxyUrl}/api/v1/tools/t1/deploy`, { method: 'POST', headers: { 'X-API-Key': key } });
  await res.arrayBuffer();
  return res.status;
}

// One metered call through the gateway; the fake's answer comes back unchanged.
async function chatCompletion(proxyUrl, key) {
  const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'fake', messages: [{ role: 'user', content: 'hello' }] }),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.deepEqual(body.usage, FAKE_USAGE);
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const upstream = await startUpstream();
  const otherUpstream = await startUpstream();
  const openai = await startOpenAi();
  const [{ adminUrl, proxyUrl }, { adminUrl: noKeyUrl }] = await Promise.all([
    startGateway(upstream, otherUpstream, openai), startGateway(upstream, otherUpstream, openai, { masterKey: false })]);
  const origins = [adminUrl, noKeyUrl];
  const profile = mkdtempSync(join(tmpdir(), 'scopegate-chromium-'));
  cleanup.push(() => rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
  });
  cleanup.unshift(() => context.close());
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: adminUrl });
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('request', (r) => {
    const url = r.url();
    if (!origins.some((o) => url.startsWith(`${o}/`)) && !url.startsWith('blob:') && !url.startsWith('data:')) problems.push(`third-party request: ${url}`);
  });

  // Sign in: the token is kept in sessionStorage only.
  await page.goto(`${adminUrl}/console/`);
  await capture(page, 'signin');
  await signIn(page, adminUrl, ADMIN_TOKEN);
  const storage = await page.evaluate(() => ({ session: JSON.stringify(sessionStorage), local: localStorage.length, url: location.href }));
  assert.ok(storage.session.includes(ADMIN_TOKEN), 'token in sessionStorage');
  assert.equal(storage.local, 0, 'nothing in localStorage');
  assert.ok(!storage.url.includes(ADMIN_TOKEN), 'token not in the URL');
  assert.equal((await context.cookies()).length, 0, 'no cookies');
  await page.getByText('admin (admin)').waitFor();
  ok('sign-in with the admin token; it is kept in sessionStorage only (no URL, cookie or localStorage)');

  // Create an app.
  await page.getByRole('button', { name: 'Create app' }).click();
  const appDialog = page.getByRole('dialog', { name: 'Create app' });
  await appDialog.getByLabel('Name').fill('console-app');
  await appDialog.getByLabel(/deploy_tool/).check();
  await appDialog.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('row', { name: /console-app/ }).waitFor();
  await page.getByRole('button', { name: 'Create app' }).click();
  const second = page.getByRole('dialog', { name: 'Create app' });
  await second.getByLabel('Name').fill('reporting');
  await second.getByLabel(/view_job_status/).check();
  await second.getByRole('button', { name: 'Create' }).click();
  await page.getByRole('row', { name: /reporting/ }).waitFor();
  ok('an app is created from the Apps page');

  // Create a key: shown once, copied to the clipboard.
  await go(page, 'Keys', 'Keys');
  await page.getByRole('button', { name: 'Create key' }).click();
  const keyDialog = page.getByRole('dialog', { name: 'Create key' });
  await keyDialog.getByLabel('App').selectOption({ label: 'console-app' });
  await keyDialog.getByLabel('Name', { exact: true }).fill('ci-deployer');
  await keyDialog.getByRole('button', { name: 'Create key' }).click();
  const secret = page.getByRole('dialog', { name: 'Key created' });
  await secret.waitFor();
  const key = await secret.getByLabel('Full API key').inputValue();
  assert.match(key, /^sg_[A-Za-z0-9]+_[A-Za-z0-9]+$/);
  await secret.getByText('will not be shown again').waitFor();
  await secret.getByRole('button', { name: 'Copy' }).click();
  await secret.getByText('Copied to the clipboard.').waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key, 'clipboard holds the key');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SHOTS, 'key-created-390.png') });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: join(SHOTS, 'key-created-1280.png') });
  await axe(page, 'the key-created dialog');
  await secret.getByRole('button', { name: 'Done' }).click();
  await page.getByRole('row', { name: /ci-deployer/ }).waitFor();
  assert.ok(!(await page.content()).includes(key), 'the full key is gone from the page once the dialog is closed');
  const row = page.getByRole('row', { name: /ci-deployer/ });
  assert.equal(await row.locator('.badge').textContent(), 'active');
  assert.equal(await row.locator('code.masked').textContent(), `${key.slice(0, 4)}••••${key.slice(-4)}`);
  ok('a key is created; the dialog shows it once with the warning, Copy puts it on the clipboard, the list shows it masked');

  assert.equal(await proxyStatus(proxyUrl, key), 200);
  ok('the new key gets 200 from the proxy');

  // Roll a second key with no grace: the new key is shown once, the old one is revoked.
  await page.getByRole('button', { name: 'Create key' }).click();
  const keyDialog2 = page.getByRole('dialog', { name: 'Create key' });
  await keyDialog2.getByLabel('App').selectOption({ label: 'console-app' });
  await keyDialog2.getByLabel('Name', { exact: true }).fill('nightly');
  await keyDialog2.getByLabel('Expires in days').fill('30');
  await keyDialog2.getByRole('button', { name: 'Create key' }).click();
  const nightly = await page.getByRole('dialog', { name: 'Key created' }).getByLabel('Full API key').inputValue();
  await page.getByRole('dialog', { name: 'Key created' }).getByRole('button', { name: 'Done' }).click();
  await page.getByRole('row', { name: /nightly/ }).first().getByRole('button', { name: 'Roll' }).click();
  const roll = page.getByRole('dialog', { name: 'Roll key nightly' });
  await roll.getByLabel('Grace period').selectOption('0s');
  await roll.getByRole('button', { name: 'Roll key' }).click();
  const rolled = page.getByRole('dialog', { name: 'Key rolled: the new key' });
  const rolledKey = await rolled.getByLabel('Full API key').inputValue();
  assert.notEqual(rolledKey, nightly);
  await rolled.getByRole('button', { name: 'Done' }).click();
  await waitFor(async () => (await proxyStatus(proxyUrl, rolledKey)) === 200, 'the rolled key to work');
  await waitFor(async () => (await proxyStatus(proxyUrl, nightly)) === 401, 'the old key to end');
  ok('roll with no grace: the new key is shown once and works, the old one gets 401');

  // Disable and enable.
  await page.getByRole('row', { name: /ci-deployer/ }).getByRole('button', { name: 'Disable' }).click();
  await waitFor(async () => (await page.getByRole('row', { name: /ci-deployer/ }).locator('.badge').textContent()) === 'disabled', 'disabled badge');
  await waitFor(async () => (await proxyStatus(proxyUrl, key)) === 401, 'the disabled key to get 401');
  await page.getByRole('row', { name: /ci-deployer/ }).getByRole('button', { name: 'Enable' }).click();
  await waitFor(async () => (await page.getByRole('row', { name: /ci-deployer/ }).locator('.badge').textContent()) === 'active', 'active badge');
  await waitFor(async () => (await proxyStatus(proxyUrl, key)) === 200, 'the enabled key to work again');
  ok('disable then enable: the badge follows and the proxy answers 401 then 200');

  // Metered traffic: three chat completions with the key, 12 input and 30 output tokens each.
  const METERED = 3;
  for (let i = 0; i < METERED; i++) await chatCompletion(proxyUrl, key);
  ok(`${METERED} metered chat completions through the gateway (meter: openai) answer 200 with the fake's usage`);

  // Usage shows the traffic as a chart, with the 30 days' totals written out.
  await go(page, 'Usage', 'Usage');
  await page.getByLabel('App or key').selectOption({ label: 'console-app' });
  await waitFor(async () => (await page.locator('figcaption').textContent()).includes('console-app'), 'the app chart');
  const total = (label) => page.locator('dl.totals div').filter({ has: page.getByText(label, { exact: true }) }).locator('dd').textContent();
  const TOKENS_IN = String(METERED * FAKE_USAGE.prompt_tokens);
  const TOKENS_OUT = String(METERED * FAKE_USAGE.completion_tokens);
  const TOKENS = String(METERED * (FAKE_USAGE.prompt_tokens + FAKE_USAGE.completion_tokens));
  await waitFor(async () => {
    await page.reload();
    await page.getByRole('heading', { level: 1, name: 'Usage' }).waitFor();
    return !(await page.locator('figcaption').textContent()).includes(': 0 in total')
      && (await total('Output tokens')) === TOKENS_OUT;
  }, 'usage and tokens to be counted');
  const consoleAppId = (await adminApi(adminUrl, 'GET', '/v1/apps?search=console-app')).find((a) => a.name === 'console-app').id;
  const appUsage = await adminApi(adminUrl, 'GET', `/v1/apps/${consoleAppId}/usage?days=30`);
  const apiRequests = appUsage.reduce((a, d) => a + d.requests, 0);
  assert.deepEqual([await total('Requests'), await total('Input tokens'), await total('Output tokens'), await total('Tokens')],
    [String(apiRequests), TOKENS_IN, TOKENS_OUT, TOKENS], 'the totals');
  assert.deepEqual(appUsage.reduce((a, d) => [a[0] + d.input_tokens, a[1] + d.output_tokens], [0, 0]),
    [Number(TOKENS_IN), Number(TOKENS_OUT)], 'the API counts the same tokens');
  assert.equal(await page.locator('figcaption').textContent(),
    `Requests per day (UTC), last 30 days, app console-app: ${apiRequests} in total.`);
  assert.ok(await page.locator('svg.chart rect.bar').count() === 30, '30 bars');
  const download = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download CSV' }).click();
  const csv = readFileSync(await (await download).path(), 'utf8');
  assert.ok(csv.startsWith('date,app_id,key_id,requests,input_tokens,output_tokens\n'), csv);
  assert.ok(csv.split('\n').filter(Boolean).length >= 2, csv);
  assert.ok(csv.split('\n').some((l) => l.startsWith(`${new Date().toISOString().slice(0, 10)},${consoleAppId},`) && l.endsWith(`,${TOKENS_IN},${TOKENS_OUT}`)), csv);
  await capture(page, 'usage');
  ok(`usage: a 30-day bar chart of the requests, totals ${apiRequests} requests, ${TOKENS_IN} + ${TOKENS_OUT} = ${TOKENS} tokens; the CSV export carries the tokens`);

  // The tokens chart: input and output stacked, told apart by a legend in words.
  await page.getByRole('radio', { name: /Tokens/ }).check();
  await waitFor(async () => (await page.locator('figcaption').textContent()).startsWith('Tokens'), 'the tokens chart');
  assert.equal(await page.locator('figcaption').textContent(),
    `Tokens per day (UTC), last 30 days, app console-app: ${TOKENS_IN} input and ${TOKENS_OUT} output, ${TOKENS} in total.`);
  assert.equal(await page.locator('svg.chart rect.bar-input').count(), 30, '30 input bars');
  assert.equal(await page.locator('svg.chart rect.bar-output').count(), 30, '30 output bars');
  const today = new Date().toISOString().slice(0, 10);
  assert.deepEqual(await page.locator('svg.chart rect.bar').evaluateAll((rs, d) => rs.map((r) => r.textContent).filter((t) => t.startsWith(d)), today),
    [`${today}: ${TOKENS_IN} input tokens`, `${today}: ${TOKENS_OUT} output tokens`]);
  // Today's bars: output stacked on input, heights in the counts' ratio, the output's hatch a
  // pattern that is really in the chart (a fill pointing nowhere draws nothing).
  const bars = await page.locator('svg.chart').evaluate((svg, d) => {
    const [input, output] = [...svg.querySelectorAll('rect.bar')].filter((r) => r.textContent.startsWith(d));
    const box = (r) => ({ y: Number(r.getAttribute('y')), h: Number(r.getAttribute('height')) });
    const ref = (output.getAttribute('fill') || '').match(/^url\(#([^)]+)\)$/);
    const pattern = ref && svg.querySelector(`pattern#${ref[1]}`);
    return { input: box(input), output: box(output), pattern: pattern ? pattern.querySelectorAll('rect, line').length : 0 };
  }, today);
  assert.ok(Math.abs(bars.output.y + bars.output.h - bars.input.y) < 1e-6, `output on top of input: ${JSON.stringify(bars)}`);
  assert.ok(Math.abs(bars.output.h / bars.input.h - FAKE_USAGE.completion_tokens / FAKE_USAGE.prompt_tokens) < 1e-6, JSON.stringify(bars));
  assert.equal(bars.pattern, 2, 'the output bars are filled with the hatch pattern');
  assert.deepEqual(await page.locator('ul.legend li').allTextContents(),
    ['Input tokens (solid, below)', 'Output tokens (hatched, on top)']);
  assert.match(await page.locator('svg.chart > title').textContent(), new RegExp(`: ${TOKENS} tokens over 30 days`));
  await capture(page, 'usage-tokens');
  // The key's own usage: the same tokens (the app has no other metered key); the choice stays.
  const keyOption = await page.getByLabel('App or key').locator('option', { hasText: /^ci-deployer / }).getAttribute('value');
  await page.getByLabel('App or key').selectOption(keyOption);
  await waitFor(async () => (await page.locator('figcaption').textContent()).includes('key ci-deployer'), 'the key chart');
  assert.match(await page.locator('figcaption').textContent(), new RegExp(`: ${TOKENS_IN} input and ${TOKENS_OUT} output, ${TOKENS} in total\\.$`));
  assert.deepEqual([await total('Input tokens'), await total('Output tokens'), await total('Tokens')], [TOKENS_IN, TOKENS_OUT, TOKENS]);
  await page.getByRole('radio', { name: 'Requests' }).check();
  await waitFor(async () => (await page.locator('figcaption').textContent()).startsWith('Requests per day'), 'back to requests');
  ok(`usage: the tokens chart stacks input and output (${TOKENS_IN} + ${TOKENS_OUT}), with a worded legend, for the app and for its key`);

  // Revoke the first key: the proxy refuses it and the list shows it revoked.
  await go(page, 'Keys', 'Keys');
  await page.getByRole('row', { name: /ci-deployer/ }).getByRole('button', { name: 'Revoke' }).click();
  const confirm = page.getByRole('dialog', { name: 'Revoke key ci-deployer?' });
  await capture(page, 'revoke-confirm');
  await confirm.getByRole('button', { name: 'Revoke key' }).click();
  await waitFor(async () => (await page.getByRole('row', { name: /ci-deployer/ }).locator('.badge').textContent()) === 'revoked', 'revoked badge');
  assert.equal(await proxyStatus(proxyUrl, key), 401);
  assert.equal(await page.getByRole('row', { name: /ci-deployer/ }).getByRole('button', { name: 'Revoke' }).count(), 0);
  ok('revoke with confirmation: the key gets 401 and is listed as revoked');
  await page.getByLabel('Status').selectOption('revoked');
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 3, 'two revoked keys listed');
  await page.getByLabel('Status').selectOption('');
  await page.getByLabel('Search keys by name').fill('ci-');
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 2, 'search narrows to one key');
  await page.getByLabel('Search keys by name').fill('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 4, 'all three keys');
  await capture(page, 'keys');
  assert.ok(!(await page.content()).match(/sg_[A-Za-z0-9]+_[A-Za-z0-9]{20,}/), 'no full key on the keys page');
  ok('status filter and search narrow the key list; no full key on the page');

  // Apps: edit scopes shows the impact notice; search.
  await go(page, 'Apps', 'Apps');
  await page.getByRole('row', { name: /console-app/ }).getByRole('button', { name: 'Edit' }).click();
  const edit = page.getByRole('dialog', { name: 'Edit app console-app' });
  await edit.getByText('they affect all 3 keys of this app (1 active)').waitFor();
  await edit.getByLabel(/view_job_status/).check();
  await edit.getByLabel('Override the default rate limit').check();
  await edit.getByLabel('Requests per second').fill('20');
  await edit.getByLabel('Burst').fill('40');
  // Token quota: an override with no window is refused by the API, and the dialog says why.
  assert.equal(await edit.getByLabel('Tokens per minute').isVisible(), false, 'windows hidden without the override');
  await edit.getByLabel('Override the default token quota').check();
  await edit.getByRole('button', { name: 'Save' }).click();
  await edit.getByRole('alert').filter({ hasText: 'token_quota' }).waitFor();
  await edit.getByLabel('Tokens per minute').fill('5000');
  await edit.getByLabel('Tokens per month').fill('2000000');
  await capture(page, 'app-edit');
  await edit.getByRole('button', { name: 'Save' }).click();
  await page.getByRole('row', { name: /console-app/ }).getByText('20/s, burst 40').waitFor();
  const consoleAppRow = page.getByRole('row', { name: /console-app/ });
  await consoleAppRow.getByText('5,000/minute, 2,000,000/month').waitFor();
  let saved = await adminApi(adminUrl, 'GET', `/v1/apps/${consoleAppId}`);
  assert.deepEqual(saved.rate_limit, { per_second: 20, burst: 40 });
  assert.deepEqual(saved.token_quota, { per_minute: 5000, per_month: 2000000 });
  assert.ok(saved.scopes.includes('view_job_status'));
  // Edit again: the dialog shows the saved windows; a day window is added.
  await consoleAppRow.getByRole('button', { name: 'Edit' }).click();
  const edit2 = page.getByRole('dialog', { name: 'Edit app console-app' });
  assert.equal(await edit2.getByLabel('Override the default token quota').isChecked(), true);
  assert.deepEqual([await edit2.getByLabel('Tokens per minute').inputValue(), await edit2.getByLabel('Tokens per day').inputValue(),
    await edit2.getByLabel('Tokens per month').inputValue()], ['5000', '', '2000000']);
  await edit2.getByLabel('Tokens per day').fill('100000');
  await edit2.getByRole('button', { name: 'Save' }).click();
  await consoleAppRow.getByText('5,000/minute, 100,000/day, 2,000,000/month').waitFor();
  saved = await adminApi(adminUrl, 'GET', `/v1/apps/${consoleAppId}`);
  assert.deepEqual(saved.token_quota, { per_minute: 5000, per_day: 100000, per_month: 2000000 });
  assert.deepEqual(saved.rate_limit, { per_second: 20, burst: 40 }, 'the rate limit is kept');
  assert.equal(await page.getByRole('row', { name: /reporting/ }).getByRole('cell').nth(4).textContent(), 'default');
  await page.getByLabel('Search apps by name').fill('REPORT');
  await page.getByRole('button', { name: 'Search' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 2, 'search finds one app');
  await page.getByLabel('Search apps by name').fill('');
  await page.getByRole('button', { name: 'Search' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 3, 'both apps');
  await capture(page, 'apps');
  ok('apps: scope edit names the keys it affects, rate-limit and token-quota overrides saved (exact values through the API), search');

  // Routes: route → scope → upstream and the apps allowed.
  await go(page, 'Routes', 'Routes');
  const deploy = page.getByRole('row', { name: /tools\/\{tool_id\}\/deploy/ });
  assert.match(await deploy.textContent(), /deploy_tool.*tools.*console-app/);
  assert.match(await page.getByRole('row', { name: /jobs/ }).textContent(), /console-app.*reporting|reporting.*console-app/);
  assert.match(await page.getByRole('row', { name: /health/ }).textContent(), /public/);
  // Under the routes, a table per upstream: its targets and their state.
  const toolsTargets = page.getByRole('region', { name: 'Targets of upstream tools' });
  const toolsRows = toolsTargets.getByRole('row');
  assert.equal(await toolsRows.count(), 2, 'a header and the one target of a url: upstream');
  const toolsCells = await toolsRows.nth(1).getByRole('cell').allTextContents();
  assert.deepEqual(toolsCells.slice(0, 4), [upstream, upstream.replace('http://', ''), '1', 'up']);
  // models: three targets in config order; the dead one fails its check (read afresh on each
  // showing of the page, so reload until the first check has run).
  const models = page.getByRole('region', { name: 'Targets of upstream models' });
  await waitFor(async () => {
    await page.reload();
    await page.getByRole('heading', { level: 1, name: 'Routes' }).waitFor();
    return (await models.getByRole('row').nth(3).textContent()).includes('failing check');
  }, 'the dead target to fail its health check');
  const modelRows = models.getByRole('row');
  assert.equal(await modelRows.count(), 4, 'a header and three targets');
  assert.deepEqual((await modelRows.nth(1).getByRole('cell').allTextContents()).slice(0, 4),
    [upstream, upstream.replace('http://', ''), '2', 'up']);
  assert.deepEqual((await modelRows.nth(2).getByRole('cell').allTextContents()).slice(0, 4),
    [otherUpstream, otherUpstream.replace('http://', ''), '1', 'up']);
  assert.deepEqual((await modelRows.nth(3).getByRole('cell').allTextContents()).slice(0, 4),
    [DEAD_TARGET, '127.0.0.1:1', '1', 'failing check']);
  assert.match(await page.getByText('balance: round_robin').textContent(), /round_robin/);
  await capture(page, 'routes');
  ok('routes: scope, upstream and the apps allowed to call each; each upstream\'s targets and their state (up, failing check)');


  // Credentials: add (a password field, cleared; only the mask comes back), search, replace the
  // value, delete after a confirmation (refused with the users' names while an app names it).
  const VALUE_1 = `sk-console-${randomBytes(24).toString('hex')}`;
  const VALUE_2 = `sk-rotated-${randomBytes(24).toString('hex')}`;
  const VALUE_3 = `tenant-${randomBytes(24).toString('hex')}`;
  const values = [VALUE_1, VALUE_2, VALUE_3];
  const short = (v) => `${v.slice(0, 3)}••••${v.slice(-3)}`;
  const credRow = (name) => page.getByRole('row', { name: new RegExp(name) });
  await go(page, 'Credentials', 'Credentials');
  await page.getByText('No credentials yet.').waitFor();
  await page.getByRole('button', { name: 'Add credential' }).click();
  const addDialog = page.getByRole('dialog', { name: 'Add credential' });
  await addDialog.getByLabel('Name').fill('MY_OPENAI');
  await addDialog.getByLabel('Description').fill('OpenAI key for the models upstream');
  const valueInput = addDialog.getByLabel('Value', { exact: true });
  assert.equal(await valueInput.getAttribute('type'), 'password', 'the value field is a password field');
  await valueInput.fill(VALUE_1);
  await capture(page, 'credential-add');
  await addDialog.getByRole('button', { name: 'Add credential' }).click();
  await credRow('MY_OPENAI').waitFor();
  await page.getByText(`Credential MY_OPENAI saved: ${short(VALUE_1)}.`).waitFor();
  const masked1 = credRow('MY_OPENAI').locator('code.masked');
  assert.equal(await masked1.textContent(), short(VALUE_1));
  assert.equal(await masked1.getAttribute('title'), `${VALUE_1.slice(0, 3)}${'*'.repeat(VALUE_1.length - 6)}${VALUE_1.slice(-3)}`);
  assert.equal(await page.getByRole('dialog').count(), 0, 'the dialog is gone');
  await assertNoSecret(page, values, 'after the create call');
  const cells = await credRow('MY_OPENAI').getByRole('cell').allTextContents();
  assert.deepEqual(cells.slice(0, 5), ['MY_OPENAI', 'OpenAI key for the models upstream', short(VALUE_1), 'not in use', 'never']);
  assert.match(cells[5], / by admin$/);
  ok('credentials: added through a password field; the list and the answer show only the mask; the value is nowhere in the page');

  // A second one; a name in use is refused in the dialog, and cancelling clears the field.
  await page.getByRole('button', { name: 'Add credential' }).click();
  const dup = page.getByRole('dialog', { name: 'Add credential' });
  await dup.getByLabel('Name').fill('MY_OPENAI');
  await dup.getByLabel('Value', { exact: true }).fill(VALUE_3);
  await dup.getByRole('button', { name: 'Add credential' }).click();
  await dup.getByText('already exists').waitFor();
  await dup.getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await page.getByRole('dialog').count(), 0);
  await assertNoSecret(page, values, 'after a refused create was cancelled');
  await page.getByRole('button', { name: 'Add credential' }).click();
  const another = page.getByRole('dialog', { name: 'Add credential' });
  await another.getByLabel('Name').fill('TENANT_A_TOOLS');
  await another.getByLabel('Value', { exact: true }).fill(VALUE_3);
  await another.getByRole('button', { name: 'Add credential' }).click();
  await credRow('TENANT_A_TOOLS').waitFor();
  await assertNoSecret(page, values, 'after the second create call');
  ok('credentials: a name in use is refused in the dialog (409), and the value is cleared when it is cancelled');

  // Search goes to the API (`?search=`).
  await page.getByLabel('Search credentials by name').fill('tenant');
  await page.getByRole('button', { name: 'Search' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 2, 'search finds one credential');
  assert.equal(await credRow('TENANT_A_TOOLS').count(), 1);
  await page.getByLabel('Search credentials by name').fill('nothing-like-this');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.getByText('No credential matches.').waitFor();
  await page.getByLabel('Search credentials by name').fill('');
  await page.getByRole('button', { name: 'Search' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 3, 'both credentials');
  await capture(page, 'credentials');
  ok('credentials: search by name narrows the list');

  // Replace the value.
  await credRow('MY_OPENAI').getByRole('button', { name: 'Replace value' }).click();
  const replace = page.getByRole('dialog', { name: 'Replace value of MY_OPENAI' });
  const newValue = replace.getByLabel('New value');
  assert.equal(await newValue.getAttribute('type'), 'password');
  await newValue.fill(VALUE_2);
  await capture(page, 'credential-replace');
  await replace.getByRole('button', { name: 'Replace value' }).click();
  await waitFor(async () => (await credRow('MY_OPENAI').locator('code.masked').textContent()) === short(VALUE_2), 'the new mask');
  assert.equal((await adminApi(adminUrl, 'GET', '/v1/credentials/MY_OPENAI')).masked.slice(0, 3), VALUE_2.slice(0, 3));
  await assertNoSecret(page, values, 'after the replace call');
  ok('credentials: Replace value (a password field) changes the mask; neither value is in the page');

  // Delete: cancel keeps it; while an app names it the gateway refuses, and the page names the app.
  const apps = await adminApi(adminUrl, 'GET', '/v1/apps?search=console-app');
  const appId = apps.find((a) => a.name === 'console-app').id;
  await adminApi(adminUrl, 'PATCH', `/v1/apps/${appId}`, { credentials: { tools: 'TENANT_A_TOOLS' } });
  await page.reload();
  await page.getByRole('heading', { level: 1, name: 'Credentials' }).waitFor();
  assert.equal(await credRow('TENANT_A_TOOLS').getByRole('cell').nth(3).textContent(), 'app console-app (tools)');
  await credRow('TENANT_A_TOOLS').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog', { name: 'Delete credential TENANT_A_TOOLS?' }).getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await credRow('TENANT_A_TOOLS').count(), 1, 'cancel keeps it');
  await credRow('TENANT_A_TOOLS').getByRole('button', { name: 'Delete' }).click();
  const confirmDelete = page.getByRole('dialog', { name: 'Delete credential TENANT_A_TOOLS?' });
  await confirmDelete.getByText('still used by app console-app (for upstream tools)').waitFor();
  await capture(page, 'credential-delete-confirm');
  await confirmDelete.getByRole('button', { name: 'Delete credential' }).click();
  const inUse = page.getByRole('dialog', { name: 'Credential TENANT_A_TOOLS is still in use' });
  await inUse.getByText(/Not deleted: the credential is still used by apps console-app/).waitFor();
  await inUse.getByRole('listitem').filter({ hasText: `app console-app (id ${appId}) for upstream tools` }).waitFor();
  await capture(page, 'credential-in-use');
  await inUse.getByRole('button', { name: 'Close' }).click();
  assert.equal(await credRow('TENANT_A_TOOLS').count(), 1, 'refused: still listed');
  await adminApi(adminUrl, 'PATCH', `/v1/apps/${appId}`, { credentials: {} });
  await page.reload();
  await page.getByRole('heading', { level: 1, name: 'Credentials' }).waitFor();
  await credRow('TENANT_A_TOOLS').getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog', { name: 'Delete credential TENANT_A_TOOLS?' }).getByRole('button', { name: 'Delete credential' }).click();
  await waitFor(async () => (await credRow('TENANT_A_TOOLS').count()) === 0, 'the credential to go');
  await page.getByText('Credential TENANT_A_TOOLS deleted.').waitFor();
  assert.equal((await fetch(`${adminUrl}/v1/credentials/TENANT_A_TOOLS`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } })).status, 404);
  await assertNoSecret(page, values, 'after the deletes');
  ok('credentials: delete after a confirmation; while an app names it the 409 is shown with the app\'s name');

  // Audit: the writes above, filterable by app.
  await go(page, 'Audit', 'Audit');
  await page.getByRole('cell', { name: 'key.revoked' }).first().waitFor();
  for (const action of ['app.created', 'app.updated', 'key.created', 'key.rolled', 'key.disabled', 'key.enabled',
    'credential.created', 'credential.updated', 'credential.deleted']) {
    assert.ok(await page.getByRole('cell', { name: action, exact: true }).count() >= 1, action);
  }
  await page.getByLabel('App').selectOption({ label: 'reporting' });
  await page.getByRole('button', { name: 'Apply' }).click();
  await waitFor(async () => (await page.getByRole('row').count()) === 2, 'one event for reporting');
  await page.getByLabel('App').selectOption('');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.getByRole('cell', { name: 'key.revoked' }).first().waitFor();
  assert.ok(!(await page.content()).includes(key), 'the audit never shows the key');
  await assertNoSecret(page, values, 'on the audit page');
  await capture(page, 'audit');
  ok('audit: every write listed with its actor, filter by app');

  // Delete an app with confirmation.
  await go(page, 'Apps', 'Apps');
  await page.getByRole('row', { name: /reporting/ }).getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog', { name: 'Delete app reporting?' }).getByRole('button', { name: 'Delete app' }).click();
  await waitFor(async () => (await page.getByRole('row', { name: /reporting/ }).count()) === 0, 'the app to go');
  ok('delete an app after confirmation');

  // Keyboard: from a fresh load, Tab reaches the skip link, then the nav, with a focus ring;
  // Enter on a nav link opens its page.
  await page.reload();
  await page.getByRole('heading', { level: 1, name: 'Apps' }).waitFor();
  const focusedNow = () => page.evaluate(() => {
    const el = document.activeElement;
    return { tag: el.tagName, text: el.textContent.trim(), outline: getComputedStyle(el).outlineStyle };
  });
  await page.keyboard.press('Tab');
  assert.deepEqual((await focusedNow()).text, 'Skip to content');
  await page.keyboard.press('Tab');
  const focused = await focusedNow();
  assert.deepEqual([focused.tag, focused.text], ['A', 'Apps']);
  assert.notEqual(focused.outline, 'none', 'focus is visible');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
  ok('keyboard: Tab reaches the skip link and the nav with a visible focus ring; Enter follows a link');

  // Operator: keys yes, app writes no.
  await page.getByRole('button', { name: 'Sign out' }).click();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'sign-out clears the token');
  await signIn(page, adminUrl, OPERATOR_TOKEN);
  await page.getByText('ci (operator)').waitFor();
  await page.getByRole('row', { name: /console-app/ }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Delete' }).count(), 0, 'no app deletion for an operator');
  assert.equal(await page.getByRole('button', { name: 'Create app' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Edit' }).count(), 0);
  await capture(page, 'apps-operator');
  await go(page, 'Keys', 'Keys');
  assert.equal(await page.getByRole('button', { name: 'Create key' }).count(), 1, 'an operator may create keys');
  await go(page, 'Credentials', 'Credentials');
  await credRow('MY_OPENAI').waitFor();
  for (const name of ['Add credential', 'Replace value', 'Delete']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `no ${name} for an operator`);
  }
  await capture(page, 'credentials-operator');
  ok('operator token: no app create/edit/delete buttons, key creation offered; credentials listed without write buttons');

  // Read: no write at all.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await signIn(page, adminUrl, READ_TOKEN);
  await page.getByText('viewer (read)').waitFor();
  await page.getByRole('row', { name: /console-app/ }).waitFor();
  await go(page, 'Keys', 'Keys');
  await page.getByRole('row', { name: /nightly/ }).first().waitFor();
  for (const name of ['Create key', 'Roll', 'Disable', 'Enable', 'Revoke']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `no ${name} for a read token`);
  }
  await go(page, 'Credentials', 'Credentials');
  await credRow('MY_OPENAI').waitFor();
  for (const name of ['Add credential', 'Replace value', 'Delete']) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, `no ${name} for a read token`);
  }
  ok('read token: keys and credentials listed, no write button');

  // A gateway without a master key: the Credentials page says so instead of failing.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await signIn(page, noKeyUrl, ADMIN_TOKEN);
  await go(page, 'Credentials', 'Credentials');
  const notice = page.getByRole('alert').filter({ hasText: 'it has no master key' });
  await notice.waitFor();
  assert.match(await notice.textContent(), /credentials\.master_key_env/);
  assert.equal(await page.getByRole('button', { name: 'Add credential' }).count(), 0, 'no Add without a master key');
  await capture(page, 'credentials-unavailable');
  ok('without a master key the Credentials page shows a notice (503 credentials_unavailable), not an error');

  // A wrong token is refused on the sign-in page.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Admin token').fill('nope');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That token was not accepted.').waitFor();
  ok('a wrong token is refused');

  // 401: the wrong token; 409: the refused name and delete; 422: the token quota with no window;
  // 503: the gateway without a master key.
  const unexpected = problems.filter((p) => !['401 (Unauthorized)', '409 (Conflict)', '422 (Unprocessable Entity)', '503 (Service Unavailable)'].some((s) => p.includes(s)));
  assert.deepEqual(unexpected, [], 'no page errors, CSP violations or third-party requests');
  ok('no script error, CSP violation or third-party request');
}

try {
  console.log('console browser tests');
  await main();
  console.log(`console browser tests: ${checks} passed in ${((Date.now() - started) / 1000).toFixed(1)}s; screenshots in ${SHOTS}`);
} catch (e) {
  console.error(`console browser tests FAILED after ${checks} checks: ${e.stack || e}`);
  console.error(`screenshots so far in ${SHOTS}`);
  process.exitCode = 1;
} finally {
  for (const f of cleanup) { try { await f(); } catch { /* already gone */ } }
}
