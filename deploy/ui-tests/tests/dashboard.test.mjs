// The dashboard (/ui) in headless Chromium against the real system: every page, what an
// operator does on it, and what must never happen (markup from payloads executing, a
// render per event). run.sh starts the system and runs this file.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { execFile } from 'node:child_process';
import http from 'node:http';
import { promisify } from 'node:util';

import {
  BASE, UUID, api, eventually, jobState, launch, newPage, png, screenshot, stateBadge, submit,
} from './helpers.mjs';

const run = promisify(execFile);
let browser;
let page;
const errors = [];

before(async () => {
  browser = await launch();
  page = await newPage(browser, errors);
});

after(async () => {
  if (browser) await browser.close();
});

// No script error on any page of any test.
function noScriptErrors() {
  assert.deepEqual(errors.splice(0), [], 'script errors in the page');
}

async function open(hash) {
  await page.goto(BASE + '/ui/' + hash);
  await page.waitForFunction(() => window.__jetjobs !== undefined);
}

async function chooseKind(kind) {
  await page.locator('#submit-kind option[value="' + kind + '"]').waitFor({ state: 'attached' });
  await page.selectOption('#submit-kind', kind);
}

async function submitFromForm(kind, payload, options) {
  const opts = options || {};
  await open('#/submit');
  await chooseKind(kind);
  await page.fill('#payload-editor', typeof payload === 'string' ? payload : JSON.stringify(payload, null, 2));
  if (opts.maxAttempts) await page.fill('#submit-max-attempts', String(opts.maxAttempts));
  if (opts.file) await page.setInputFiles('#submit-file', opts.file);
  if (opts.callback) await page.fill('#submit-callback-url', opts.callback);
  await page.locator('#payload-checks li.ok').waitFor();
  await page.click('#submit-job');
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/);
  const id = page.url().match(UUID)[0];
  await page.locator('#job-id').waitFor();
  return id;
}

test('/ui redirects to the page; it loads from the gateway alone', async () => {
  const response = await page.goto(BASE + '/ui');
  assert.equal(new URL(page.url()).pathname, '/ui/');
  assert.equal(response.status(), 200);
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.reload();
  await page.locator('#kinds-panel').waitFor();
  page.removeAllListeners('request');
  for (const url of requests) assert.ok(url.startsWith(BASE + '/'), 'a request outside the gateway: ' + url);
  noScriptErrors();
});

test('a job submitted from the form reaches succeeded without reloading', async () => {
  const id = await submitFromForm('sleep', { ms: 1500 });
  await page.evaluate(() => {
    window.__samePage = true;
    // Every state the badge shows, as it changes.
    window.__states = [];
    const seen = () => {
      const badge = document.querySelector('.view-head .badge[data-state]');
      const state = badge && badge.dataset.state;
      if (state && window.__states[window.__states.length - 1] !== state) window.__states.push(state);
    };
    seen();
    new MutationObserver(seen).observe(document.getElementById('main'), { subtree: true, childList: true, attributes: true });
  });
  await stateBadge(page).and(page.locator('[data-state="succeeded"]')).waitFor({ timeout: 20000 });
  const states = await page.evaluate(() => window.__states);
  assert.ok(states.includes('running') || states.includes('queued'), 'saw it before it ended: ' + states);
  assert.equal(states[states.length - 1], 'succeeded');
  assert.equal(await page.evaluate(() => window.__samePage), true, 'the page was not reloaded');
  assert.equal(await jobState(id), 'succeeded');
  await page.locator('#result .j-key', { hasText: 'slept_ms' }).waitFor();
  assert.match(await page.locator('#payload').innerText(), /"ms": 1500/);
  await page.locator('#timeline li[data-type="succeeded"]').waitFor();
  await page.locator('#timeline li[data-type="started"]').waitFor();
  // The dashboard sent a traceparent with the job: its trace id is shown.
  assert.match(await page.locator('#trace-id').innerText(), /^[0-9a-f]{32}$/);
  noScriptErrors();
});

test('the payload editor checks the kind\'s schema; the server\'s 422 is shown too', async () => {
  await open('#/submit');
  await chooseKind('sleep');
  const checks = page.locator('#payload-checks');
  await page.fill('#payload-editor', '{"ms": 999999, "x": 1}');
  await checks.locator('li', { hasText: 'must be at most 60000' }).waitFor();
  await checks.locator('li', { hasText: 'unknown field "x"' }).waitFor();
  assert.equal(await page.isDisabled('#submit-job'), true);
  await screenshot(page, 'submit');
  await page.fill('#payload-editor', '{"ms": ');
  await checks.locator('li', { hasText: 'not JSON' }).waitFor();
  await page.fill('#payload-editor', '{}');
  await checks.locator('li', { hasText: 'missing required field "ms"' }).waitFor();
  await chooseKind('hash');
  await page.fill('#payload-editor', '{"size": 10, "data_b64": "aGk=", "rounds": 1}');
  await checks.locator('li', { hasText: 'exactly one of: data_b64, data_blob, size' }).waitFor();
  await chooseKind('flaky');
  await page.fill('#payload-editor', '{"fail": "sometimes"}');
  await checks.locator('li', { hasText: 'must be one of "retryable", "permanent", "panic", "hang"' }).waitFor();
  // What the schema does not cover, the server refuses: its detail is shown.
  await page.fill('#payload-editor', '{"fail": "permanent"}');
  await page.fill('#submit-max-attempts', '99');
  await checks.locator('li.ok').waitFor();
  await page.click('#submit-job');
  await page.locator('#submit-result .banner', { hasText: 'max_attempts must be between 1 and 25' }).waitFor();
  assert.match(page.url(), /#\/submit/);
  noScriptErrors();
});

test('a hash job\'s progress bar moves while it runs', async () => {
  const job = await submit('hash', { size: 64 << 20, rounds: 60 });
  await open('#/jobs/' + job.id);
  const bar = page.locator('#progress-panel [role="progressbar"]');
  await bar.waitFor({ timeout: 20000 });
  const seen = [];
  await eventually('the job to end', async () => {
    const now = Number(await bar.getAttribute('aria-valuenow'));
    if (seen[seen.length - 1] !== now) seen.push(now);
    return (await stateBadge(page).getAttribute('data-state')) === 'succeeded';
  }, 60000);
  const during = seen.filter((v) => v > 0 && v < 60);
  assert.ok(during.length >= 2, 'the bar showed at least two values on the way: ' + seen);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1], 'it only moves forward: ' + seen);
  assert.equal(await bar.getAttribute('aria-valuenow'), '60', 'full once done');
  // One entry per stored report (all after the run's `started`): wait for the first.
  await page.locator('#timeline li[data-type="progress"]').first().waitFor();
  noScriptErrors();
});

test('a long sleep is cancelled with the button', async () => {
  const id = await submitFromForm('sleep', { ms: 60000 });
  await stateBadge(page).and(page.locator('[data-state="running"]')).waitFor({ timeout: 20000 });
  assert.equal(await page.isDisabled('#retry'), true);
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('#cancel');
  await stateBadge(page).and(page.locator('[data-state="cancelled"]')).waitFor();
  assert.equal(await jobState(id), 'cancelled');
  await page.locator('#timeline li[data-type="cancelled"]').waitFor();
  assert.equal(await page.isDisabled('#cancel'), true);
  noScriptErrors();
});

test('a failing job shows its retries, lands in dead letters, and is replayed', async () => {
  const id = await submitFromForm('flaky', { fail: 'retryable', times: 10 }, { maxAttempts: 2 });
  await stateBadge(page).and(page.locator('[data-state="failed"]')).waitFor({ timeout: 30000 });
  const retry = page.locator('#timeline li[data-type="retrying"]');
  await retry.first().waitFor();
  const text = await retry.first().innerText();
  assert.match(text, /attempt 1 failed as asked/);
  assert.match(text, /next attempt in/);
  await page.locator('#timeline li[data-type="failed"]', { hasText: 'attempt 2 failed as asked' }).waitFor();
  await screenshot(page, 'job-failed', { fullPage: true });

  // Dead letters: the job is there, can be inspected and replayed.
  await page.click('nav a[data-nav="dead-letters"]');
  const row = page.locator('#main tr[data-id="' + id + '"]');
  await row.waitFor({ timeout: 15000 });
  assert.match(await row.innerText(), /attempt 2 failed as asked/);
  await row.locator('button.inspect').click();
  await page.locator('#main tr.details', { hasText: 'Snapshot now' }).waitFor();
  await row.locator('button.replay').click();
  await page.locator('.flash .banner', { hasText: 'Replayed 1 job' }).waitFor();
  // Replayed, it runs attempts 3 and 4, fails again and comes back.
  await eventually('the replayed job to fail again', async () => {
    const r = await api('GET', '/v1/jobs/' + id);
    return r.data.state === 'failed' && r.data.attempt === 4;
  });
  await page.locator('#main tr[data-id="' + id + '"]').waitFor();
  await open('#/jobs/' + id);
  await page.locator('#timeline li[data-type="requeued"]').waitFor();
  assert.equal(await stateBadge(page).getAttribute('data-state'), 'failed');
  // The job page's Retry button does the same.
  await page.click('#retry');
  await page.locator('.flash .banner', { hasText: 'Queued again' }).waitFor();
  await eventually('the retried job to fail again', async () => {
    const r = await api('GET', '/v1/jobs/' + id);
    return r.data.state === 'failed' && r.data.attempt === 6;
  });
  await page.locator('#timeline li[data-type="failed"]', { hasText: 'attempt 6 failed as asked' }).waitFor();
  assert.equal(await page.locator('#timeline li[data-type="requeued"]').count(), 2);

  // Replay all of a kind.
  const permanent = [await submit('flaky', { fail: 'permanent' }), await submit('flaky', { fail: 'permanent' })];
  for (const job of permanent) await eventually('a permanent failure', async () => (await jobState(job.id)) === 'failed');
  await open('#/dead-letters?kind=flaky');
  for (const job of permanent) await page.locator('#main tr[data-id="' + job.id + '"]').waitFor({ timeout: 15000 });
  await screenshot(page, 'dead-letters');
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('#replay-all');
  const done = await page.locator('.flash .banner', { hasText: /Replayed \d+ jobs? \(all of flaky\)/ }).innerText();
  assert.ok(Number(done.match(/Replayed (\d+)/)[1]) >= 3, done);
  for (const job of permanent) {
    await eventually('the replayed job to have run again', async () => {
      const r = await api('GET', '/v1/jobs/' + job.id);
      return r.data.attempt >= 2;
    });
  }
  noScriptErrors();
});

test('markup in payloads and in the names of fields renders as text', async () => {
  const evil = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">';
  // Accepted (a string is a string), it fails in the processor: shown on its page.
  const id = await submitFromForm('hash', { data_b64: evil, rounds: 1 });
  await stateBadge(page).and(page.locator('[data-state="failed"]')).waitFor({ timeout: 20000 });
  const payload = await page.locator('#payload pre').textContent();
  assert.ok(payload.includes(JSON.stringify(evil).slice(1, -1)), 'the payload shows the markup as text: ' + payload);
  // A field name the schema refuses is quoted in the editor's errors.
  await open('#/submit');
  await chooseKind('noop');
  await page.fill('#payload-editor', JSON.stringify({ [evil]: 1 }));
  await page.locator('#payload-checks li', { hasText: '<script>window.__xss = 1</script>' }).waitFor();
  // Back on the job's page: nothing from the payload became an element or ran.
  await open('#/jobs/' + id);
  await page.locator('#payload pre').waitFor();
  await page.waitForTimeout(300);
  const found = await page.evaluate(() => ({
    xss: window.__xss,
    scripts: [...document.scripts].map((s) => s.src.replace(/\?.*/, '').replace(/.*\//, '')),
    images: [...document.querySelectorAll('img')].map((i) => i.getAttribute('src')).filter((s) => s === 'x'),
  }));
  assert.equal(found.xss, undefined, 'nothing from the payload ran');
  assert.deepEqual(found.scripts, ['schema.js', 'app.js'], 'no script element came from the payload');
  assert.deepEqual(found.images, [], 'no image element came from the payload');
  noScriptErrors();
  // An HTML upload opened from the gateway's origin runs nothing either.
  const upload = await fetch(BASE + '/v1/blobs', { method: 'POST', headers: { 'content-type': 'text/html' }, body: evil });
  const blob = await upload.json();
  await page.goto(BASE + '/v1/blobs/' + blob.id);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'the upload\'s script did not run');
  errors.splice(0); // the browser reports the blocked script as an error: expected here
});

test('jobs: live rows, filters, cursor pages and search by id', async () => {
  const made = [];
  for (let i = 0; i < 7; i++) made.push((await submit('noop', {})).id);
  for (const id of made) await eventually('noop to finish', async () => (await jobState(id)) === 'succeeded');
  await open('#/jobs?kind=noop&limit=5');
  const rows = page.locator('#main tbody tr[data-id]');
  await rows.nth(4).waitFor();
  assert.equal(await rows.count(), 5);
  const first = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
  assert.equal(first[0], made[made.length - 1], 'newest first');
  await page.click('#page-next');
  await page.waitForURL(/cursor=/);
  await eventually('the next page', async () => {
    const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
    return ids.length > 0 && !ids.some((id) => first.includes(id));
  });
  await page.click('#page-prev');
  await eventually('the first page again', async () => (await rows.first().getAttribute('data-id')) === first[0]);

  // A job submitted elsewhere appears on top, and its state follows, without reloading.
  await open('#/jobs');
  await rows.first().waitFor();
  await page.evaluate(() => {
    window.__samePage = true;
  });
  const other = await submit('sleep', { ms: 1200 });
  const row = page.locator('#main tbody tr[data-id="' + other.id + '"]');
  await row.waitFor();
  await row.locator('[data-state="succeeded"]').waitFor({ timeout: 20000 });
  assert.equal(await page.evaluate(() => window.__samePage), true);
  assert.equal(await rows.first().getAttribute('data-id'), other.id, 'on top');
  await screenshot(page, 'jobs');

  // Filters: kind and state from the form.
  await page.selectOption('#job-filters select[name="kind"]', 'flaky');
  await page.check('#job-filters input[value="failed"]');
  await page.click('#job-filters button[type="submit"]');
  await page.waitForURL(/kind=flaky/);
  await rows.first().waitFor();
  const states = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.state));
  assert.ok(states.length > 0 && states.every((s) => s === 'failed'), 'only failed jobs: ' + states);

  // Search by id opens the job.
  await page.fill('#search-id', made[0]);
  await page.press('#search-id', 'Enter');
  await page.waitForURL(new RegExp('#/jobs/' + made[0]));
  await stateBadge(page).waitFor();
  assert.equal(await page.locator('#job-id').innerText(), made[0]);
  noScriptErrors();
});

test('webhook deliveries are in the timeline: a refused attempt, then delivered', async () => {
  const calls = [];
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      calls.push(req.headers['webhook-id']);
      res.statusCode = calls.length === 1 ? 503 : 200;
      res.end();
    });
  });
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  try {
    const url = 'http://127.0.0.1:' + receiver.address().port + '/hook';
    const id = await submitFromForm('noop', {}, { callback: url });
    await stateBadge(page).and(page.locator('[data-state="succeeded"]')).waitFor({ timeout: 20000 });
    const hooks = page.locator('#timeline li[data-type="webhook"]');
    await hooks.filter({ hasText: 'delivered' }).waitFor({ timeout: 30000 });
    assert.match(await hooks.filter({ hasText: 'HTTP 503' }).first().innerText(), /webhook succeeded[\s\S]*retrying[\s\S]*delivery attempt 1, HTTP 503, next in/);
    assert.match(await hooks.filter({ hasText: 'delivered' }).first().innerText(), /webhook succeeded[\s\S]*delivery attempt 2, HTTP 200/);
    assert.match(await page.locator('#main .facts').innerText(), /delivered/);
    assert.equal(calls.length, 2);
    assert.ok(calls.every((c) => c && c.startsWith(id)), 'the same webhook-id each time: ' + calls);
  } finally {
    receiver.close();
  }
  noScriptErrors();
});

test('a thumbnail from an uploaded image: the result is shown as an image', async () => {
  const id = await submitFromForm('thumbnail', { width: 96, height: 96 }, {
    file: { name: 'gradient.png', mimeType: 'image/png', buffer: png(320, 200) },
  });
  await stateBadge(page).and(page.locator('[data-state="succeeded"]')).waitFor({ timeout: 30000 });
  const image = page.locator('#result img.result-image');
  await image.waitFor();
  assert.match(await image.getAttribute('src'), /^data:image\/png;base64,iVBORw0KGgo/);
  const size = await image.evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [96, 60]);
  assert.match(await page.locator('#payload').innerText(), /gradient\.png/);
  await page.locator('#timeline li[data-type="succeeded"]').waitFor();
  await screenshot(page, 'job', { fullPage: true });
  assert.equal(await jobState(id), 'succeeded');
  noScriptErrors();
});

test('overview: kinds, consumers and processors, live; a thousand changes a second cost a few renders', async () => {
  await open('#/');
  await page.locator('#kinds-panel tr[data-kind="noop"]').waitFor();
  const consumer = page.locator('#consumers-panel tr[data-consumer="processor-io"]');
  await consumer.waitFor();
  assert.match(await consumer.innerText(), /connected/);
  await page.locator('#processors-panel td', { hasText: 'processor-cpu' }).first().waitFor();

  // Load: jobs as fast as loadgen submits them, each a few state changes.
  const before = await page.evaluate(() => Object.assign({}, window.__jetjobs.perf));
  const started = Date.now();
  const loadgen = run(process.env.LOADGEN || 'target/debug/jetjobs-loadgen',
    ['--url', BASE, '-n', '3000', '-c', '64', '--no-progress', '--json', '--timeout-secs', '120'],
    { env: process.env, maxBuffer: 1 << 20 });
  // The page stays responsive while it runs.
  let slowest = 0;
  let done = false;
  loadgen.finally(() => {
    done = true;
  });
  while (!done) {
    const t = Date.now();
    await page.evaluate(() => 1);
    slowest = Math.max(slowest, Date.now() - t);
    await new Promise((r) => setTimeout(r, 100));
  }
  const { stdout } = await loadgen;
  // Every job's end reaches the page (the stream is a KV watch: it lags, it never drops).
  await eventually('the page to see every job end', async () =>
    (await page.evaluate(() => window.__jetjobs.perf.events)) - before.events >= 3000, 30000);
  await page.waitForTimeout(500);
  const elapsed = Date.now() - started;
  const perf = await page.evaluate(() => Object.assign({}, window.__jetjobs.perf));
  const events = perf.events - before.events;
  const renders = perf.renders - before.renders;
  const report = JSON.parse(stdout);
  console.log('# load: ' + events + ' events in ' + elapsed + ' ms (' + Math.round(events / (elapsed / 1000)) +
    '/s; loadgen: ' + JSON.stringify(report).slice(0, 200) + '), ' + renders +
    ' renders, slowest render ' + perf.maxRenderMs.toFixed(1) + ' ms, slowest page round trip ' + slowest + ' ms');
  assert.ok(events >= 3000, 'the page saw every job end: ' + events);
  assert.ok(renders <= elapsed / 250 + 4, renders + ' renders in ' + elapsed + ' ms: at most one per 250 ms');
  assert.ok(slowest < 1500, 'the page kept answering throughout: ' + slowest + ' ms at worst');
  const noop = page.locator('#kinds-panel tr[data-kind="noop"] td:nth-child(5)');
  await eventually('succeeded per minute to count the load', async () =>
    Number((await noop.innerText()).replace(/,/g, '')) >= 3000, 5000);
  await page.waitForTimeout(1200);
  await screenshot(page, 'overview', { fullPage: true });
  noScriptErrors();
});

test('ten thousand changes at thousands a second: rendered at most every 250 ms, every row right', async () => {
  await open('#/jobs');
  await page.locator('#main tbody tr[data-id]').first().waitFor();
  // The changes take the path of /v1/events' snapshots (a test machine cannot make real
  // ones this fast): 200 jobs, each queued, running with progress, then succeeded.
  const result = await page.evaluate(async () => {
    const jj = window.__jetjobs;
    const before = { events: jj.perf.events, renders: jj.perf.renders };
    const created = new Date().toISOString();
    const ids = Array.from({ length: 200 }, (_, i) => 'ffffffff-0000-7000-8000-' + String(i).padStart(12, '0'));
    const started = performance.now();
    let longestBatch = 0;
    for (let batch = 0; batch < 50; batch++) {
      const t0 = performance.now();
      const step = batch < 10 ? 0 : batch < 49 ? 1 : 2;
      for (const id of ids) {
        jj.ingest({
          id, kind: 'noop', state: ['queued', 'running', 'succeeded'][step], attempt: step ? 1 : 0, max_attempts: 3,
          created_at: created, updated_at: new Date().toISOString(),
          progress: step === 1 ? { current: batch, total: 48 } : null, result: step === 2 ? {} : null, error: null,
        }, 0);
      }
      longestBatch = Math.max(longestBatch, performance.now() - t0);
      await new Promise((r) => setTimeout(r, 40));
    }
    const elapsed = performance.now() - started;
    await new Promise((r) => setTimeout(r, 700));
    return {
      events: jj.perf.events - before.events,
      renders: jj.perf.renders - before.renders,
      elapsed,
      longestBatch,
      states: ids.map((id) => document.querySelector('tr[data-id="' + id + '"]')?.dataset.state),
    };
  });
  console.log('# synthetic: ' + result.events + ' changes in ' + Math.round(result.elapsed) + ' ms, ' + result.renders +
    ' renders, longest batch of 200 ' + result.longestBatch.toFixed(1) + ' ms');
  assert.equal(result.events, 10000);
  assert.ok(result.renders <= result.elapsed / 250 + 4, result.renders + ' renders in ' + Math.round(result.elapsed) + ' ms');
  assert.ok(result.states.every((s) => s === 'succeeded'), 'every row shows its last state: ' + result.states.join());
  noScriptErrors();
});
