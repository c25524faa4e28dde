// What the browser tests share: the system under test (run.sh started it), the browser,
// API calls from the test's side, and small waits.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';

export const BASE = (process.env.JETJOBS_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
export const SCREENSHOTS = process.env.UI_SCREENSHOTS || '';
export const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run'],
  });
}

// A page that fails the test on any script error, and logs the console.
export async function newPage(browser, errors) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(m.text());
  });
  page.setDefaultTimeout(30000);
  return page;
}

export async function api(method, path, body, headers) {
  const init = { method, headers: Object.assign({ accept: 'application/json' }, headers || {}) };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  return { status: response.status, data, headers: response.headers };
}

export async function submit(kind, payload, options) {
  const r = await api('POST', '/v1/jobs', Object.assign({ kind, payload }, options || {}));
  assert.ok(r.status === 202 || r.status === 200, 'submit ' + kind + ': ' + r.status + ' ' + JSON.stringify(r.data));
  return r.data;
}

export async function eventually(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what + ' (last: ' + (last && last.message ? last.message : JSON.stringify(last)) + ')');
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function jobState(id) {
  const r = await api('GET', '/v1/jobs/' + id);
  return r.data && r.data.state;
}

export async function screenshot(page, name, options) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot(Object.assign({ path: join(SCREENSHOTS, name + '.png') }, options || {}));
}

// The state badge in the job page's heading.
export function stateBadge(page) {
  return page.locator('.view-head .badge[data-state]');
}

// A small PNG (an RGB gradient), made here: no image files in the repository.
export function png(width, height) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    raw[row] = 0;
    for (let x = 0; x < width; x++) {
      const i = row + 1 + x * 3;
      raw[i] = Math.round((255 * x) / width);
      raw[i + 1] = Math.round((255 * y) / height);
      raw[i + 2] = 180;
    }
  }
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function crc32(bytes) {
  let c = ~0;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
