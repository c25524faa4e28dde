// The jetjobs dashboard: plain JavaScript, no build step, no dependency, talking only to
// the public HTTP API (the routes the CLI uses). Everything shown is put in the page as
// text nodes (never innerHTML): payloads, results and errors are user data.
//
// Live updates come from server-sent events (/v1/events, /v1/jobs/{id}/events,
// /v1/stats/events). Events only update a model; the page is rendered from it at most
// every RENDER_MS, in an animation frame, so a thousand changes a second cost a few
// renders, not a thousand.
(function () {
  'use strict';

  const Schema = window.JJSchema;
  // The API is the parent of the page's directory (/ui/ -> /), also under a proxy prefix.
  const BASE = new URL('../', location.href).pathname.replace(/\/$/, '');
  const RENDER_MS = 250;
  const STATES = ['scheduled', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const ACTIVE = new Set(['scheduled', 'queued', 'running', 'retrying']);
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const CHART_WINDOW_MS = 15 * 60 * 1000;
  const BUCKET_MS = 10 * 1000;

  // ---------------------------------------------------------------- DOM helpers

  // h('a', {href: '#/x', class: 'c'}, 'text', child): every string becomes a text node.
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
        else if (key === 'dataset') Object.assign(el.dataset, value);
        else if (key === 'style') Object.assign(el.style, value);
        else if (key === 'value' || key === 'checked' || key === 'disabled' || key === 'selected') el[key] = value;
        else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    add(el, children);
    return el;
  }

  function add(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function fill(el, ...children) {
    el.replaceChildren();
    return add(el, children);
  }

  function setText(el, value) {
    const text = value === undefined || value === null ? '' : String(value);
    if (el.textContent !== text) el.textContent = text;
  }

  // ---------------------------------------------------------------- formatting

  const pad = (n, w = 2) => String(n).padStart(w, '0');

  function fmtTime(iso, ms) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const day = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
    const time = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
    return day + ' ' + time + (ms ? '.' + pad(d.getMilliseconds(), 3) : '');
  }

  function fmtClock(t) {
    const d = new Date(t);
    return pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  function fmtDur(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + ' ms';
    if (ms < 10000) return (ms / 1000).toFixed(2) + ' s';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    const s = Math.round(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function fmtNum(n, digits) {
    if (n === null || n === undefined || !Number.isFinite(Number(n))) return '—';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  function since(iso, to) {
    const a = Date.parse(iso);
    const b = to ? Date.parse(to) : Date.now();
    return Number.isFinite(a) && Number.isFinite(b) ? b - a : null;
  }

  function badge(state, big) {
    return h('span', { class: 'badge st-' + state + (big ? ' big' : ''), dataset: { state } }, state);
  }

  function progressBar(progress, done, big) {
    const pct = progress && progress.total > 0 ? Math.min(100, (100 * progress.current) / progress.total) : 0;
    const inner = h('span', { style: { width: pct.toFixed(1) + '%' } });
    return h('div', {
      class: 'bar' + (big ? ' big' : '') + (done ? ' done' : ''),
      role: 'progressbar',
      'aria-valuemin': '0',
      'aria-valuemax': progress ? String(progress.total) : '0',
      'aria-valuenow': progress ? String(progress.current) : '0',
    }, inner);
  }

  function updateBar(bar, progress, done) {
    const pct = progress && progress.total > 0 ? Math.min(100, (100 * progress.current) / progress.total) : 0;
    bar.firstChild.style.width = pct.toFixed(1) + '%';
    bar.setAttribute('aria-valuenow', progress ? String(progress.current) : '0');
    bar.setAttribute('aria-valuemax', progress ? String(progress.total) : '0');
    bar.classList.toggle('done', !!done);
  }

  // Pretty JSON as text nodes in spans: keys, strings, numbers, literals coloured.
  // Long strings are cut (the download has all of it); base64 images are shown as
  // images by the caller, their strings are summarized here.
  function jsonView(value, options) {
    const opts = Object.assign({ maxString: 2000, maxNodes: 20000 }, options || {});
    const pre = h('pre', { class: 'json' });
    let nodes = 0;
    const span = (cls, text) => h('span', { class: cls }, text);
    function walk(v, indent, out) {
      if (++nodes > opts.maxNodes) {
        out.push('…');
        return;
      }
      if (v === null || typeof v === 'boolean') out.push(span('j-lit', String(v)));
      else if (typeof v === 'number') out.push(span('j-num', String(v)));
      else if (typeof v === 'string') {
        let s = v;
        if (imageType(v)) s = v.slice(0, 32) + '… (a base64 image, ' + fmtNum(v.length) + ' characters: shown above)';
        else if (s.length > opts.maxString) s = s.slice(0, opts.maxString) + '… (' + fmtNum(v.length) + ' characters)';
        out.push(span('j-str', JSON.stringify(s)));
      } else if (Array.isArray(v)) {
        if (v.length === 0) return out.push('[]');
        out.push('[\n');
        v.forEach((item, i) => {
          out.push(indent + '  ');
          walk(item, indent + '  ', out);
          out.push(i < v.length - 1 ? ',\n' : '\n');
        });
        out.push(indent + ']');
      } else if (typeof v === 'object') {
        const keys = Object.keys(v);
        if (keys.length === 0) return out.push('{}');
        out.push('{\n');
        keys.forEach((k, i) => {
          out.push(indent + '  ', span('j-key', JSON.stringify(k)), ': ');
          walk(v[k], indent + '  ', out);
          out.push(i < keys.length - 1 ? ',\n' : '\n');
        });
        out.push(indent + '}');
      } else out.push(String(v));
    }
    const out = [];
    walk(value, '', out);
    return add(pre, out);
  }

  // "png"/"jpeg"/"gif"/"webp" if a string is a base64 image (by its magic bytes).
  function imageType(s) {
    if (typeof s !== 'string' || s.length < 64 || !/^[A-Za-z0-9+/=\s]+$/.test(s.slice(0, 64))) return null;
    if (s.startsWith('iVBORw0KGgo')) return 'png';
    if (s.startsWith('/9j/')) return 'jpeg';
    if (s.startsWith('R0lGOD')) return 'gif';
    if (s.startsWith('UklGR')) return 'webp';
    return null;
  }

  // Every base64 image in a JSON value, with where it is.
  function findImages(value, path, out) {
    out = out || [];
    path = path || '';
    if (out.length >= 8) return out;
    if (typeof value === 'string') {
      const type = imageType(value);
      if (type) out.push({ path: path || '/', type, data: value });
    } else if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) findImages(v, path + '/' + k, out);
    }
    return out;
  }

  function downloadLink(label, text, filename, type) {
    return h('button', {
      type: 'button',
      onclick() {
        const blobUrl = URL.createObjectURL(new Blob([text], { type: type || 'application/json' }));
        const a = h('a', { href: blobUrl, download: filename });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
      },
    }, label);
  }

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, problem, fallback) {
      super((problem && problem.detail) || fallback || 'HTTP ' + status);
      this.status = status;
      this.problem = problem || null;
    }
  }

  async function call(method, path, options) {
    const opts = options || {};
    const init = { method, headers: Object.assign({ accept: 'application/json' }, opts.headers || {}) };
    if (opts.form) init.body = opts.form;
    else if (opts.body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(BASE + path, init);
    } catch (e) {
      throw new ApiError(0, null, 'the gateway cannot be reached (' + e.message + ')');
    }
    let data = null;
    const type = response.headers.get('content-type') || '';
    if (type.includes('json')) {
      try {
        data = await response.json();
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, data, response.status + ' ' + response.statusText);
    return { status: response.status, data, headers: response.headers };
  }

  // A 404 of a route this gateway does not have (an older gateway), not of a resource.
  function missingRoute(e) {
    return e instanceof ApiError && (e.status === 404 || e.status === 405) && e.problem && /endpoint/.test(e.problem.detail || '');
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === '') continue;
      q.set(k, String(v));
    }
    const s = q.toString();
    return s ? '?' + s : '';
  }

  let kindsCache = null;
  async function kinds(refresh) {
    if (!kindsCache || refresh) {
      kindsCache = call('GET', '/v1/kinds').then((r) => r.data.kinds || []).catch((e) => {
        kindsCache = null;
        throw e;
      });
    }
    return kindsCache;
  }

  // What this browser submitted: the payload and the trace id it sent, by job id (the
  // API returns neither with a job).
  const submitted = {
    key: (id) => 'jetjobs.submitted.' + id,
    save(id, record) {
      try {
        const text = JSON.stringify(record);
        if (text.length < 512 * 1024) sessionStorage.setItem(this.key(id), text);
      } catch (_) {
        /* storage full or off: the job page then says the payload is not available */
      }
    },
    load(id) {
      try {
        const text = sessionStorage.getItem(this.key(id));
        return text ? JSON.parse(text) : null;
      } catch (_) {
        return null;
      }
    },
  };

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- rendering

  const perf = { events: 0, renders: 0, maxRenderMs: 0, lastRenderAt: 0 };
  let renderQueued = false;
  let view = null;

  // Asks for a render: at most one every RENDER_MS, in an animation frame.
  function invalidate() {
    if (renderQueued) return;
    renderQueued = true;
    const wait = Math.max(0, perf.lastRenderAt + RENDER_MS - performance.now());
    setTimeout(() => requestAnimationFrame(renderNow), wait);
  }

  function renderNow() {
    renderQueued = false;
    const started = performance.now();
    perf.lastRenderAt = started;
    perf.renders++;
    try {
      if (view && view.render) view.render();
    } catch (e) {
      console.error('render failed', e);
    }
    perf.maxRenderMs = Math.max(perf.maxRenderMs, performance.now() - started);
  }

  // ---------------------------------------------------------------- live streams

  const liveBadge = () => document.getElementById('live');

  // An EventSource that comes back after the server closed it or refused it (a 503 when
  // the gateway serves too many streams), with backoff; the browser's own reconnect
  // covers network errors.
  class Live {
    constructor(path, events, handlers) {
      this.path = path;
      this.events = events;
      this.handlers = handlers;
      this.delay = 1000;
      this.closed = false;
      this.open();
    }

    open() {
      if (this.closed) return;
      const source = new EventSource(BASE + this.path);
      this.source = source;
      source.onopen = () => {
        this.delay = 1000;
        if (this.handlers.open) this.handlers.open();
      };
      source.onerror = () => {
        if (this.handlers.error) this.handlers.error(source.readyState);
        if (source.readyState === EventSource.CLOSED && !this.closed) {
          setTimeout(() => this.open(), this.delay);
          this.delay = Math.min(this.delay * 2, 15000);
        }
      };
      for (const name of this.events) {
        source.addEventListener(name, (e) => {
          let data;
          try {
            data = JSON.parse(e.data);
          } catch (_) {
            return;
          }
          this.handlers.message(data, e);
        });
      }
    }

    close() {
      this.closed = true;
      if (this.source) this.source.close();
    }
  }

  // Every job's changes, for the whole app: the overview's rates and chart, the list's
  // rows, the dead letters' refresh.
  const jobListeners = new Set();
  let everyJob = null;
  function startEveryJob() {
    everyJob = new Live('/v1/events', ['snapshot'], {
      open() {
        const el = liveBadge();
        el.className = 'live on';
        el.textContent = 'live';
      },
      error() {
        const el = liveBadge();
        el.className = 'live off';
        el.textContent = 'reconnecting';
      },
      message(job, e) {
        dispatch(job, Number(e.lastEventId) || 0);
      },
    });
  }

  function dispatch(job, revision) {
    perf.events++;
    metrics.record(job);
    for (const listener of jobListeners) listener(job, revision);
  }

  // ---------------------------------------------------------------- throughput model

  // Outcomes seen (from /v1/events since the page opened, and the last 15 minutes read
  // from GET /v1/jobs at start), in 10-second buckets: the chart and the per-minute rates.
  const metrics = {
    buckets: new Map(), // bucket start (ms) -> {succeeded, failed, latencies: []}
    recent: [], // {at, kind, state}, the last minute
    seen: new Set(),
    seenOrder: [],
    version: 0,

    record(job) {
      if (job.state !== 'succeeded' && job.state !== 'failed') return;
      const key = job.id + ':' + job.state + ':' + job.attempt;
      if (this.seen.has(key)) return;
      this.seen.add(key);
      this.seenOrder.push(key);
      if (this.seenOrder.length > 200000) this.seen.delete(this.seenOrder.shift());
      const at = Date.parse(job.updated_at);
      if (!Number.isFinite(at) || Date.now() - at > CHART_WINDOW_MS) return;
      const start = Math.floor(at / BUCKET_MS) * BUCKET_MS;
      const bucket = this.bucket(start);
      // A bucket the gateway's counts filled (backfill) only takes latency samples.
      if (!(bucket.seeded && at < this.seededUntil)) bucket[job.state]++;
      if (job.state === 'succeeded') {
        const latency = at - Date.parse(job.created_at);
        if (Number.isFinite(latency)) {
          // A bounded sample per bucket (reservoir) keeps percentiles cheap at any rate.
          const n = bucket.succeeded;
          if (bucket.latencies.length < 400) bucket.latencies.push(latency);
          else {
            const i = Math.floor(Math.random() * n);
            if (i < 400) bucket.latencies[i] = latency;
          }
        }
      }
      this.recent.push({ at, kind: job.kind, state: job.state });
      this.version++;
    },

    bucket(start) {
      let bucket = this.buckets.get(start);
      if (!bucket) {
        bucket = { succeeded: 0, failed: 0, latencies: [] };
        this.buckets.set(start, bucket);
      }
      return bucket;
    },

    seededUntil: 0,

    prune(now) {
      for (const start of this.buckets.keys()) {
        if (now - start > CHART_WINDOW_MS + BUCKET_MS) this.buckets.delete(start);
      }
      let drop = 0;
      while (drop < this.recent.length && now - this.recent[drop].at > 60000) drop++;
      if (drop) this.recent.splice(0, drop);
    },

    perMinute(now) {
      this.prune(now);
      const out = new Map();
      for (const r of this.recent) {
        if (!out.has(r.kind)) out.set(r.kind, { succeeded: 0, failed: 0 });
        out.get(r.kind)[r.state]++;
      }
      return out;
    },

    // Backfill. Throughput: the gateway's own counts of the last 15 minutes
    // (GET /v1/stats/history), exact whatever the rate. Latency percentiles need the jobs
    // themselves: outcomes of the jobs created in the last 15 minutes (two pages at most).
    async backfill() {
      try {
        const r = await call('GET', '/v1/stats/history');
        const step = ((r.data && r.data.step_secs) || 10) * 1000;
        for (const p of (r.data && r.data.points) || []) {
          const end = Date.parse(p.at);
          if (!Number.isFinite(end) || Date.now() - end > CHART_WINDOW_MS) continue;
          const start = Math.floor((end - 1) / BUCKET_MS) * BUCKET_MS;
          const bucket = this.bucket(start);
          bucket.succeeded += Math.round((Number(p.succeeded_per_sec) || 0) * step / 1000);
          bucket.failed += Math.round((Number(p.failed_per_sec) || 0) * step / 1000);
          bucket.seeded = true;
          this.seededUntil = Math.max(this.seededUntil, start + BUCKET_MS);
        }
      } catch (_) {
        // Counted from the jobs below instead.
      }
      const after = new Date(Date.now() - CHART_WINDOW_MS).toISOString();
      let cursor = null;
      for (let page = 0; page < 2; page++) {
        const q = query({ created_after: after, state: 'succeeded,failed', limit: 1000, cursor });
        const r = await call('GET', '/v1/jobs' + q);
        for (const job of r.data.jobs || []) this.record(job);
        cursor = r.data.next_cursor;
        if (!cursor) break;
      }
      invalidate();
    },
  };

  function percentile(sorted, p) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
  }

  // A small time-series chart on a canvas (text on a canvas is pixels, not markup).
  function drawChart(canvas, series, options) {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 190;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 52;
    const right = 10;
    const top = 10;
    const bottom = 22;
    const w = width - left - right;
    const hgt = height - top - bottom;
    const { from, to, stacked } = options;
    let max = 0;
    const count = series[0] ? series[0].values.length : 0;
    for (let i = 0; i < count; i++) {
      if (stacked) max = Math.max(max, series.reduce((s, x) => s + (x.values[i] || 0), 0));
      else for (const s of series) max = Math.max(max, s.values[i] || 0);
    }
    max = niceMax(max);
    const muted = cssVar('--muted');
    const line = cssVar('--line');
    ctx.font = '11px ' + cssVar('--sans');
    ctx.fillStyle = muted;
    ctx.strokeStyle = line;
    ctx.lineWidth = 1;
    for (let g = 0; g <= 4; g++) {
      const y = top + hgt - (g / 4) * hgt;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + w, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.textAlign = 'right';
      ctx.textBaseline = 'middle';
      ctx.fillText(options.format((g / 4) * max, max / 4), left - 6, y);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let t = Math.ceil(from / 180000) * 180000; t <= to; t += 180000) {
      const x = left + ((t - from) / (to - from)) * w;
      ctx.fillText(fmtClock(t), x, top + hgt + 6);
    }
    if (!count || max <= 0) return;
    const slot = w / count;
    if (stacked) {
      const base = new Array(count).fill(0);
      for (const s of series) {
        ctx.fillStyle = s.color;
        for (let i = 0; i < count; i++) {
          const v = s.values[i] || 0;
          if (!v) continue;
          const y0 = top + hgt - (base[i] / max) * hgt;
          const y1 = top + hgt - ((base[i] + v) / max) * hgt;
          ctx.fillRect(left + i * slot + 0.5, y1, Math.max(1, slot - 1), y0 - y1);
          base[i] += v;
        }
      }
    } else {
      for (const s of series) {
        ctx.strokeStyle = s.color;
        ctx.lineWidth = 2;
        ctx.beginPath();
        let pen = false;
        const points = [];
        for (let i = 0; i < count; i++) {
          const v = s.values[i];
          if (v === null || v === undefined) {
            pen = false;
            continue;
          }
          const x = left + (i + 0.5) * slot;
          const y = top + hgt - (Math.min(v, max) / max) * hgt;
          if (pen) ctx.lineTo(x, y);
          else ctx.moveTo(x, y);
          pen = true;
          points.push([x, y]);
        }
        ctx.stroke();
        // Points too, so that a lone bucket shows.
        ctx.fillStyle = s.color;
        for (const [x, y] of points) {
          ctx.beginPath();
          ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // ---------------------------------------------------------------- views

  function viewHead(title, sub, actions) {
    return h('div', { class: 'view-head' }, h('h1', null, title), sub ? h('span', { class: 'sub' }, sub) : null,
      actions ? h('div', { class: 'actions' }, actions) : null);
  }

  function banner(kind, ...children) {
    return h('div', { class: 'banner ' + (kind || '') }, children);
  }

  function errorBanner(e) {
    const lines = [e.message];
    if (e.problem && Array.isArray(e.problem.errors)) {
      for (const err of e.problem.errors) lines.push(h('br'), (err.pointer || '') + ': ' + (err.detail || ''));
    }
    return banner('bad', lines);
  }

  function table(headers, tbody) {
    return h('table', null,
      h('thead', null, h('tr', null, headers.map((x) => {
        const [label, cls] = Array.isArray(x) ? x : [x];
        return h('th', { class: cls }, label);
      }))),
      tbody);
  }

  // ---- Overview

  function overviewView() {
    let stats = null;
    let statsError = null;
    let statsMissing = false;
    let statsLive = null;
    let statsDirty = true;
    let drawnVersion = -1;
    let drawnAt = 0;
    let registered = [];
    const el = {};

    function statsHandler(doc) {
      stats = doc;
      statsError = null;
      statsDirty = true;
      invalidate();
    }

    return {
      name: 'overview',
      mount(root) {
        el.cards = h('div', { class: 'cards' });
        el.notice = h('div');
        el.kinds = h('tbody');
        el.consumers = h('tbody');
        el.processors = h('tbody');
        el.throughput = h('canvas', { class: 'chart', 'aria-label': 'Throughput chart' });
        el.latency = h('canvas', { class: 'chart', 'aria-label': 'Latency chart' });
        el.updated = h('span', { class: 'sub' });
        const legend = (items) => h('div', { class: 'legend' }, items.map(([label, color]) =>
          h('span', null, h('i', { style: { background: cssVar(color) } }), label)));
        fill(root,
          viewHead('Overview', null, el.updated),
          el.notice,
          el.cards,
          h('div', { class: 'panel flush', id: 'kinds-panel' }, h('h2', null, 'Kinds'),
            table(['kind', ['waiting', 'num'], ['scheduled', 'num'], ['running', 'num'], ['succeeded / min', 'num'],
              ['failed / min', 'num'], ['dead letters', 'num'], ['held', 'num'], ['redelivered', 'num']], el.kinds)),
          h('div', { class: 'grid two' },
            h('div', { class: 'panel' }, h('h2', null, 'Throughput, last 15 minutes (jobs/s per 10 s)'), el.throughput,
              legend([['succeeded', '--ok'], ['failed', '--bad']])),
            h('div', { class: 'panel' }, h('h2', null, 'Latency, submit to done (succeeded jobs)'), el.latency,
              legend([['p50', '--accent'], ['p95', '--warn']]))),
          h('div', { class: 'panel flush', id: 'consumers-panel' }, h('h2', null, 'Durable consumers'),
            table(['stream', 'consumer', ['pending', 'num'], ['ack pending', 'num'], ['redelivered', 'num'],
              ['waiting pulls', 'num'], 'last active', 'processors'], el.consumers)),
          h('div', { class: 'panel flush', id: 'processors-panel' }, h('h2', null, 'Processors'),
            table(['processor', 'instance', 'kinds', ['running', 'num'], 'started', 'last seen'], el.processors)));
        call('GET', '/v1/stats').then((r) => {
          statsHandler(r.data);
          statsLive = new Live('/v1/stats/events', ['stats'], {
            message: statsHandler,
            error() {
              statsError = 'the stats stream was interrupted; reconnecting';
              statsDirty = true;
              invalidate();
            },
            open() {
              statsError = null;
            },
          });
        }).catch((e) => {
          if (missingRoute(e)) statsMissing = true;
          else statsError = e.message;
          statsDirty = true;
          invalidate();
        });
        kinds().then((list) => {
          registered = list;
          statsDirty = true;
          invalidate();
        }).catch(() => {});
        this.tick = setInterval(invalidate, 2000); // the chart's time axis moves
        invalidate();
      },
      unmount() {
        if (statsLive) statsLive.close();
        clearInterval(this.tick);
      },
      onJob() {
        // metrics.record already counted it; the chart redraws on its own schedule.
        invalidate();
      },
      render() {
        const now = Date.now();
        const rates = metrics.perMinute(now);
        if (statsDirty || metrics.version !== drawnVersion) this.renderTables(rates);
        if (metrics.version !== drawnVersion || now - drawnAt > 5000) {
          drawnVersion = metrics.version;
          drawnAt = now;
          this.renderCharts(now);
        }
      },
      renderTables(rates) {
        statsDirty = false;
        if (statsMissing) {
          fill(el.notice, banner('', 'This gateway has no GET /v1/stats: queue depths, consumers and processors are not available. Rates and charts below come from the live event stream.'));
        } else if (statsError) fill(el.notice, banner('bad', statsError));
        else el.notice.replaceChildren();
        const kindsList = stats ? stats.kinds || [] : [];
        const names = new Set(kindsList.map((k) => k.kind));
        for (const k of registered) names.add(k.kind);
        for (const k of rates.keys()) names.add(k);
        const byKind = new Map(kindsList.map((k) => [k.kind, k]));
        const sum = (f) => kindsList.reduce((s, k) => s + (Number(k[f]) || 0), 0);
        const r = stats && stats.rates;
        const card = (label, value, unit) => h('div', { class: 'card' }, h('div', { class: 'label' }, label),
          h('div', { class: 'value' }, value, unit ? h('small', null, ' ' + unit) : null));
        fill(el.cards,
          card('waiting', stats ? fmtNum(sum('waiting')) : '—'),
          card('running', stats ? fmtNum(sum('running')) : '—'),
          card('submitted', r ? fmtNum(r.submitted_per_sec, 1) : '—', '/s'),
          card('succeeded', r ? fmtNum(r.succeeded_per_sec, 1) : '—', '/s'),
          card('failed', r ? fmtNum(r.failed_per_sec, 1) : '—', '/s'),
          card('dead letters', stats ? fmtNum(sum('dead_lettered')) : '—'));
        const rows = [...names].sort().map((name) => {
          const k = byKind.get(name) || {};
          const m = rates.get(name) || { succeeded: 0, failed: 0 };
          const n = (v) => h('td', { class: 'num' }, v === undefined ? '—' : fmtNum(v));
          return h('tr', { dataset: { kind: name } },
            h('td', null, h('a', { href: '#/jobs' + query({ kind: name }) }, name)),
            n(k.waiting), n(k.scheduled), n(k.running), n(m.succeeded), n(m.failed),
            h('td', { class: 'num' }, k.dead_lettered ? h('a', { href: '#/dead-letters' + query({ kind: name }) }, fmtNum(k.dead_lettered))
              : k.dead_lettered === undefined ? '—' : '0'),
            n(k.ack_pending), n(k.redelivered));
        });
        fill(el.kinds, rows.length ? rows : h('tr', null, h('td', { colspan: 9, class: 'empty' }, 'No kinds registered yet.')));
        const consumers = stats ? stats.consumers || [] : [];
        fill(el.consumers, consumers.length ? consumers.map((c) => h('tr', { dataset: { consumer: c.name } },
          h('td', null, c.stream), h('td', { class: 'mono' }, c.name),
          h('td', { class: 'num' }, fmtNum(c.pending)), h('td', { class: 'num' }, fmtNum(c.ack_pending)),
          h('td', { class: 'num' }, fmtNum(c.redelivered)), h('td', { class: 'num' }, fmtNum(c.waiting_pulls)),
          h('td', null, c.last_active ? fmtTime(c.last_active) : '—'),
          h('td', null, h('span', { class: 'dot ' + (c.connected ? 'on' : 'off') }), c.connected ? 'connected' : 'none connected')))
          : h('tr', null, h('td', { colspan: 8, class: 'empty' }, stats ? 'No durable consumers.' : '—')));
        const processors = stats ? stats.processors || [] : [];
        fill(el.processors, processors.length ? processors.map((p) => h('tr', null,
          h('td', null, p.name), h('td', { class: 'mono' }, p.instance),
          h('td', null, (p.kinds || []).join(', ')),
          h('td', { class: 'num' }, fmtNum(p.running) + (p.concurrency !== undefined ? ' / ' + fmtNum(p.concurrency) : '')),
          h('td', null, fmtTime(p.started_at)), h('td', null, fmtTime(p.seen_at))))
          : h('tr', null, h('td', { colspan: 6, class: 'empty' }, stats ? 'No processor is running.' : '—')));
        setText(el.updated, stats ? 'stats as of ' + fmtTime(stats.at) : '');
      },
      renderCharts(now) {
        metrics.prune(now);
        const end = Math.floor(now / BUCKET_MS) * BUCKET_MS;
        const from = end - CHART_WINDOW_MS + BUCKET_MS;
        const ok = [];
        const bad = [];
        const p50 = [];
        const p95 = [];
        for (let t = from; t <= end; t += BUCKET_MS) {
          const b = metrics.buckets.get(t);
          ok.push(b ? b.succeeded / (BUCKET_MS / 1000) : 0);
          bad.push(b ? b.failed / (BUCKET_MS / 1000) : 0);
          const sorted = b && b.latencies.length ? b.latencies.slice().sort((x, y) => x - y) : [];
          p50.push(percentile(sorted, 50));
          p95.push(percentile(sorted, 95));
        }
        const range = { from, to: end + BUCKET_MS };
        drawChart(el.throughput, [{ values: ok, color: cssVar('--ok') }, { values: bad, color: cssVar('--bad') }],
          Object.assign({ stacked: true, format: (v, step) => fmtNum(v, step >= 1 ? 0 : step >= 0.1 ? 1 : 2) + '/s' }, range));
        drawChart(el.latency, [{ values: p50, color: cssVar('--accent') }, { values: p95, color: cssVar('--warn') }],
          Object.assign({ stacked: false, format: (v) => fmtDur(v) }, range));
      },
    };
  }

  // ---- Jobs

  const LIVE_ROWS_MAX = 500;

  function jobsView(params) {
    const filters = {
      kind: params.get('kind') || '',
      state: (params.get('state') || '').split(',').filter((s) => STATES.includes(s)),
      after: params.get('created_after') || '',
      before: params.get('created_before') || '',
      limit: Number(params.get('limit')) || 50,
      cursor: params.get('cursor') || '',
    };
    const rows = new Map(); // id -> {tr, job, cells}
    const dirty = new Set();
    const fresh = [];
    let liveAdded = 0;
    let skipped = 0;
    let nextCursor = null;
    let newest = 0; // created_at of the newest job the page read (ms)
    const el = {};

    function matches(job) {
      if (filters.kind && job.kind !== filters.kind) return false;
      if (filters.state.length && !filters.state.includes(job.state)) return false;
      if (filters.after && Date.parse(job.created_at) < Date.parse(filters.after)) return false;
      if (filters.before && Date.parse(job.created_at) >= Date.parse(filters.before)) return false;
      return true;
    }

    function makeRow(job) {
      const cells = {
        state: h('td'),
        attempt: h('td', { class: 'num' }),
        progress: h('td'),
        updated: h('td', { class: 'time' }),
        took: h('td', { class: 'num' }),
        error: h('td', { class: 'err-text' }),
      };
      const tr = h('tr', { dataset: { id: job.id } },
        h('td', { class: 'mono' }, h('a', { href: '#/jobs/' + encodeURIComponent(job.id) }, job.id)),
        h('td', null, job.kind),
        cells.state, cells.attempt, cells.progress,
        h('td', { class: 'time' }, fmtTime(job.created_at)), cells.updated, cells.took, cells.error);
      const row = { tr, job, cells, state: null };
      updateRow(row);
      return row;
    }

    function updateRow(row) {
      const job = row.job;
      const { cells } = row;
      if (row.state !== job.state) {
        fill(cells.state, badge(job.state));
        row.state = job.state;
        row.tr.dataset.state = job.state;
      }
      setText(cells.attempt, job.attempt + ' / ' + job.max_attempts);
      if (job.progress && job.progress.total > 0) {
        if (!row.bar) {
          row.bar = progressBar(job.progress, TERMINAL.has(job.state));
          fill(cells.progress, row.bar);
        } else updateBar(row.bar, job.progress, TERMINAL.has(job.state));
      } else if (row.bar) {
        row.bar = null;
        cells.progress.replaceChildren();
      }
      setText(cells.updated, fmtTime(job.updated_at));
      setText(cells.took, TERMINAL.has(job.state) ? fmtDur(since(job.created_at, job.updated_at)) : '');
      setText(cells.error, job.error ? job.error.slice(0, 160) : '');
    }

    async function load() {
      try {
        const q = query({
          kind: filters.kind,
          state: filters.state.join(','),
          created_after: filters.after,
          created_before: filters.before,
          limit: filters.limit,
          cursor: filters.cursor,
        });
        const r = await call('GET', '/v1/jobs' + q);
        nextCursor = r.data.next_cursor || null;
        const jobs = r.data.jobs || [];
        // Rows that arrived live while the page loaded: newer than what it read.
        const early = [...rows.values()];
        const earlyById = new Map(early.map((row) => [row.job.id, row]));
        rows.clear();
        fresh.length = 0;
        el.body.replaceChildren();
        for (const job of jobs) {
          const seen = earlyById.get(job.id);
          const row = makeRow(seen && Date.parse(seen.job.updated_at) >= Date.parse(job.updated_at) ? seen.job : job);
          rows.set(job.id, row);
          el.body.append(row.tr);
          newest = Math.max(newest, Date.parse(job.created_at) || 0);
        }
        if (!filters.cursor) {
          for (const row of early) {
            if (rows.has(row.job.id)) continue;
            rows.set(row.job.id, row);
            fresh.push(row.job.id);
          }
        }
        el.status.replaceChildren();
        el.loaded = true;
      } catch (e) {
        fill(el.status, errorBanner(e));
      }
      invalidate();
    }

    function setHash(next) {
      const q = query({
        kind: next.kind,
        state: next.state.join(','),
        created_after: next.after,
        created_before: next.before,
        limit: next.limit === 50 ? '' : next.limit,
        cursor: next.cursor,
      });
      location.hash = '#/jobs' + q;
    }

    function localInput(iso) {
      if (!iso) return '';
      const d = new Date(iso);
      if (Number.isNaN(d.getTime())) return '';
      return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes());
    }

    return {
      name: 'jobs',
      mount(root) {
        el.body = h('tbody');
        el.status = h('div');
        el.live = h('div');
        el.pager = h('div', { class: 'pager' });
        el.count = h('span', { class: 'sub' });
        const kindSelect = h('select', { name: 'kind', 'aria-label': 'Kind' }, h('option', { value: '' }, 'all kinds'));
        kinds().then((list) => {
          for (const k of list) kindSelect.append(h('option', { value: k.kind, selected: k.kind === filters.kind }, k.kind));
          if (filters.kind && !list.some((k) => k.kind === filters.kind)) {
            kindSelect.append(h('option', { value: filters.kind, selected: true }, filters.kind));
          }
        }).catch(() => {});
        const stateBoxes = STATES.map((s) => h('label', null,
          h('input', { type: 'checkbox', name: 'state', value: s, checked: filters.state.includes(s) }), s));
        const after = h('input', { type: 'datetime-local', name: 'created_after', value: localInput(filters.after) });
        const before = h('input', { type: 'datetime-local', name: 'created_before', value: localInput(filters.before) });
        const limit = h('select', { name: 'limit' }, [25, 50, 100, 250, 1000].map((n) =>
          h('option', { value: String(n), selected: n === filters.limit }, String(n))));
        const form = h('form', {
          class: 'filters',
          id: 'job-filters',
          onsubmit(e) {
            e.preventDefault();
            const toIso = (v) => (v ? new Date(v).toISOString() : '');
            setHash({
              kind: kindSelect.value,
              state: stateBoxes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value),
              after: toIso(after.value),
              before: toIso(before.value),
              limit: Number(limit.value),
              cursor: '',
            });
          },
        },
        h('label', null, 'kind', kindSelect),
        h('fieldset', null, h('legend', null, 'state'), stateBoxes),
        h('label', null, 'created after', after),
        h('label', null, 'created before', before),
        h('label', null, 'per page', limit),
        h('button', { type: 'submit', class: 'primary' }, 'Apply'),
        h('button', { type: 'button', onclick: () => { location.hash = '#/jobs'; } }, 'Reset'));
        fill(root,
          viewHead('Jobs', 'newest first; new jobs and changes appear as they happen', el.count),
          h('div', { class: 'panel' }, form),
          el.status, el.live,
          h('div', { class: 'panel flush' },
            table(['id', 'kind', 'state', ['attempt', 'num'], 'progress', 'created', 'updated', ['took', 'num'], 'error'], el.body),
            el.pager));
        el.loaded = false;
        load();
      },
      onJob(job) {
        const row = rows.get(job.id);
        if (row) {
          if (Date.parse(job.updated_at) >= Date.parse(row.job.updated_at)) {
            row.job = job;
            dirty.add(job.id);
            invalidate();
          }
          return;
        }
        if (filters.cursor || !matches(job)) return;
        if (liveAdded >= LIVE_ROWS_MAX) {
          skipped++;
          invalidate();
          return;
        }
        // Only jobs newer than the page's newest belong on top of the first page.
        if (el.loaded && Date.parse(job.created_at) < newest) return;
        rows.set(job.id, makeRow(job));
        fresh.push(job.id);
        liveAdded++;
        invalidate();
      },
      render() {
        // New rows first (newest on top), then changed ones: only what changed is touched.
        if (fresh.length) {
          const fragment = document.createDocumentFragment();
          for (let i = fresh.length - 1; i >= 0; i--) {
            const row = rows.get(fresh[i]);
            if (!row) continue;
            row.tr.classList.add('fresh');
            fragment.append(row.tr);
          }
          el.body.prepend(fragment);
          fresh.length = 0;
        }
        for (const id of dirty) {
          const row = rows.get(id);
          if (row) updateRow(row);
        }
        dirty.clear();
        if (skipped) {
          fill(el.live, banner('info', fmtNum(skipped) + ' more new jobs arrived.',
            h('button', { type: 'button', onclick: () => { location.hash = '#/jobs?r=' + Date.now(); } }, 'Show newest')));
        }
        if (el.loaded && rows.size === 0 && !el.body.firstChild) {
          el.body.append(h('tr', { class: 'empty-row' }, h('td', { colspan: 9, class: 'empty' }, 'No jobs match.')));
        } else if (rows.size && el.body.querySelector('.empty-row')) el.body.querySelector('.empty-row').remove();
        setText(el.count, fmtNum(rows.size) + ' shown');
        const buttons = [];
        if (filters.cursor) {
          buttons.push(h('button', { type: 'button', id: 'page-first', onclick: () => setHash(Object.assign({}, filters, { cursor: '' })) }, '« Newest'));
          buttons.push(h('button', { type: 'button', id: 'page-prev', onclick: () => history.back() }, '‹ Newer'));
        }
        buttons.push(h('button', {
          type: 'button',
          id: 'page-next',
          disabled: !nextCursor,
          onclick: () => setHash(Object.assign({}, filters, { cursor: nextCursor })),
        }, 'Older ›'));
        if (el.pagerKey !== String(nextCursor) + filters.cursor) {
          el.pagerKey = String(nextCursor) + filters.cursor;
          fill(el.pager, buttons, h('span', { class: 'sub' }, nextCursor ? 'more jobs on the next page' : 'no more jobs'));
        }
      },
    };
  }

  // ---- One job

  function jobView(id) {
    let job = null;
    let revision = 0;
    let stream = null;
    let history = null; // {events, more, error, missing}
    let historyTimer = null;
    let historyLoading = false;
    let historyAgain = false;
    let lastHistoryKey = '';
    let flash = null;
    let busy = false;
    let notFound = false;
    let loadError = null;
    let dirty = true;
    const local = submitted.load(id);
    const el = {};

    function apply(snapshot, rev) {
      if (snapshot.id !== id) return;
      if (rev && rev <= revision) return;
      if (rev) revision = rev;
      const before = job;
      job = snapshot;
      dirty = true;
      // The timeline follows the job: read again when something other than progress changed.
      const key = [job.state, job.attempt, job.error, job.webhook ? JSON.stringify(job.webhook) : ''].join('|');
      if (!before || key !== lastHistoryKey) {
        lastHistoryKey = key;
        scheduleHistory(before && !TERMINAL.has(job.state) ? 300 : 50);
      }
      if (TERMINAL.has(job.state) && stream) {
        stream.close(); // the server closes it too; no reconnect wanted
        stream = null;
      }
      invalidate();
    }

    function follow() {
      if (stream) stream.close();
      stream = new Live('/v1/jobs/' + encodeURIComponent(id) + '/events', ['snapshot'], {
        message(snapshot, e) {
          apply(snapshot, Number(e.lastEventId) || 0);
        },
        error() {},
      });
    }

    function scheduleHistory(delay) {
      if (historyTimer) return;
      historyTimer = setTimeout(() => {
        historyTimer = null;
        loadHistory();
      }, delay);
    }

    async function loadHistory() {
      if (historyLoading) {
        historyAgain = true;
        return;
      }
      historyLoading = true;
      try {
        const events = [];
        let cursor = null;
        let more = false;
        for (let page = 0; page < 10; page++) {
          const r = await call('GET', '/v1/jobs/' + encodeURIComponent(id) + '/history' + query({ limit: 1000, cursor }));
          events.push(...(r.data.events || []));
          cursor = r.data.next_cursor;
          if (!cursor) break;
          more = page === 9;
        }
        history = { events, more };
      } catch (e) {
        history = missingRoute(e) ? { missing: true } : { error: e.message };
      } finally {
        historyLoading = false;
      }
      dirty = true;
      invalidate();
      if (historyAgain) {
        historyAgain = false;
        scheduleHistory(300);
      }
    }

    async function act(method, path, doneText) {
      busy = true;
      flash = null;
      dirty = true;
      invalidate();
      try {
        const r = await call(method, path);
        if (r.data && r.data.id === id) apply(r.data, 0);
        flash = banner('ok', doneText);
        if (r.data && ACTIVE.has(r.data.state)) follow();
      } catch (e) {
        flash = errorBanner(e);
      }
      busy = false;
      dirty = true;
      scheduleHistory(200);
      invalidate();
    }

    return {
      name: 'job',
      async mount(root) {
        el.root = root;
        fill(root, h('p', { class: 'empty' }, 'Loading job ', h('code', null, id), '…'));
        try {
          const r = await call('GET', '/v1/jobs/' + encodeURIComponent(id));
          const etag = (r.headers.get('etag') || '').replace(/"/g, '');
          apply(r.data, 0);
          revision = Math.max(revision, Number(etag) || 0);
          if (!TERMINAL.has(r.data.state)) follow();
        } catch (e) {
          if (e.status === 404 || e.status === 400) notFound = e.message;
          else loadError = e;
          dirty = true;
          invalidate();
        }
      },
      unmount() {
        if (stream) stream.close();
        clearTimeout(historyTimer);
      },
      onJob(snapshot, rev) {
        if (snapshot.id !== id) return;
        // The every-job stream sees this job too: a retry from elsewhere is followed.
        const wasTerminal = job && TERMINAL.has(job.state);
        apply(snapshot, rev);
        if (wasTerminal && ACTIVE.has(snapshot.state) && !stream) follow();
      },
      render() {
        if (!dirty) return;
        dirty = false;
        const root = el.root;
        if (notFound) {
          fill(root, viewHead('Job not found'), banner('bad', notFound), h('p', null, h('code', null, id)));
          return;
        }
        if (loadError) {
          fill(root, viewHead('Job'), errorBanner(loadError));
          return;
        }
        if (!job) return;
        if (!el.built) this.build();
        this.update();
      },
      build() {
        el.built = true;
        el.state = h('span');
        el.actions = h('div', { class: 'actions' });
        el.flash = h('div', { class: 'flash' });
        el.facts = h('dl', { class: 'facts' });
        el.progress = h('div', { class: 'panel', id: 'progress-panel', hidden: true });
        el.errors = h('div');
        el.timeline = h('div', { class: 'panel', id: 'timeline' });
        el.payload = h('div', { class: 'panel', id: 'payload' });
        el.result = h('div', { class: 'panel', id: 'result' });
        fill(el.root,
          h('div', { class: 'view-head' },
            h('h1', null, job.kind, ' job'), el.state,
            h('code', { class: 'sub', id: 'job-id' }, id),
            el.actions),
          el.flash,
          h('div', { class: 'panel' }, el.facts),
          el.progress,
          el.errors,
          h('div', { class: 'grid two' },
            el.timeline,
            h('div', null, el.payload, el.result)));
      },
      update() {
        fill(el.state, badge(job.state, true));
        fill(el.actions,
          h('button', {
            type: 'button',
            class: 'danger',
            id: 'cancel',
            disabled: busy || !ACTIVE.has(job.state),
            onclick: () => {
              if (window.confirm('Cancel job ' + id + '?')) act('DELETE', '/v1/jobs/' + encodeURIComponent(id), 'Cancelled.');
            },
          }, 'Cancel'),
          h('button', {
            type: 'button',
            id: 'retry',
            disabled: busy || job.state !== 'failed',
            onclick: () => act('POST', '/v1/jobs/' + encodeURIComponent(id) + '/retry', 'Queued again.'),
          }, 'Retry'));
        fill(el.flash, flash);
        this.updateFacts();
        this.updateProgress();
        this.updateErrors();
        this.updateTimeline();
        this.updatePayload();
        this.updateResult();
      },
      updateFacts() {
        const fact = (label, ...value) => h('div', null, h('dt', null, label), h('dd', null, value));
        const trace = traceId();
        const facts = [
          fact('attempt', job.attempt + ' of ' + job.max_attempts),
          fact('created', fmtTime(job.created_at, true)),
          fact('updated', fmtTime(job.updated_at, true)),
          fact(TERMINAL.has(job.state) ? 'took' : 'age', fmtDur(since(job.created_at, TERMINAL.has(job.state) ? job.updated_at : null))),
        ];
        if (job.run_at) facts.push(fact('runs at', fmtTime(job.run_at, true)));
        if (job.expires_at) facts.push(fact('expires at', fmtTime(job.expires_at, true)));
        if (job.priority && job.priority !== 'normal') facts.push(fact('priority', job.priority));
        if (job.schedule) facts.push(fact('schedule', job.schedule));
        facts.push(fact('trace id', trace.id ? h('code', { id: 'trace-id' }, trace.id) : h('span', { class: 'muted', id: 'trace-id' }, 'none (tracing is off for this job)'),
          trace.note ? h('div', { class: 'muted' }, trace.note) : null));
        if (job.callback_url) facts.push(fact('webhook', h('span', { class: 'wrap' }, job.callback_url)));
        if (job.webhook) {
          const w = job.webhook;
          facts.push(fact('delivery', h('span', { class: 'badge ' + (w.state === 'delivered' ? 'ok' : w.state === 'failed' ? 'bad' : 'warn') }, w.state),
            ' ', (w.event || '') + ', ' + fmtNum(w.attempts) + ' attempt(s)' + (w.last_status ? ', HTTP ' + w.last_status : ''),
            w.last_error ? h('div', { class: 'err-text' }, w.last_error) : null));
        }
        fill(el.facts, facts);
      },
      updateProgress() {
        let p = job.progress;
        // A job that succeeded has no progress any more: its bar, if it had one, is full.
        if (!p && el.bar && job.state === 'succeeded') {
          const total = Number(el.bar.getAttribute('aria-valuemax')) || 1;
          p = { current: total, total };
        }
        el.progress.hidden = !p;
        if (!p) return;
        const done = TERMINAL.has(job.state);
        if (!el.bar) {
          el.bar = progressBar(p, done, true);
          el.progressText = h('span', { class: 'mono' });
          fill(el.progress, h('h2', null, 'Progress'), h('div', { class: 'progress-line' }, el.bar, el.progressText));
        }
        updateBar(el.bar, p, done && job.state === 'succeeded');
        const pct = p.total > 0 ? ((100 * p.current) / p.total).toFixed(1) + ' %' : '';
        setText(el.progressText, fmtNum(p.current) + ' / ' + fmtNum(p.total) + (pct ? '  (' + pct + ')' : ''));
      },
      updateErrors() {
        if (!job.error) {
          el.errors.replaceChildren();
          return;
        }
        fill(el.errors, h('div', { class: 'panel', id: 'error' }, h('h2', null, job.state === 'cancelled' ? 'Why it was cancelled' : 'Last error'),
          h('div', { class: 'err-text' }, job.error)));
      },
      updateTimeline() {
        const items = [];
        if (history && history.events) {
          const created = Date.parse(job.created_at);
          const at = (e) => {
            const off = Date.parse(e.at) - created;
            return h('span', { class: 'when', title: fmtTime(e.at, true) }, fmtTime(e.at, true).slice(11) + (Number.isFinite(off) ? '  +' + fmtDur(off) : ''));
          };
          const events = history.events;
          for (let i = 0; i < events.length; i++) {
            const e = events[i];
            if (e.type === 'progress') {
              // Consecutive progress reports are one line.
              let j = i;
              while (j + 1 < events.length && events[j + 1].type === 'progress') j++;
              const last = events[j];
              items.push(h('li', { class: 'ev-progress', dataset: { type: 'progress' } },
                h('span', { class: 'what' }, 'progress'), at(last),
                h('div', { class: 'detail' }, fmtNum(last.current) + ' / ' + fmtNum(last.total) +
                  (j > i ? ' (' + (j - i + 1) + ' reports)' : ''))));
              i = j;
              continue;
            }
            items.push(timelineItem(e, at(e)));
          }
          if (history.more) items.push(h('li', null, h('span', { class: 'muted' }, 'More events than shown (10,000 read).')));
        }
        const body = [h('h2', null, 'Timeline')];
        if (history && history.missing) {
          body.push(banner('', 'This gateway has no GET /v1/jobs/{id}/history; the attempts below come from the snapshot.'));
          items.push(...fallbackTimeline(job));
        } else if (history && history.error) body.push(banner('bad', history.error));
        else if (!history) body.push(h('p', { class: 'muted' }, 'Loading…'));
        body.push(h('ol', { class: 'timeline' }, items));
        fill(el.timeline, body);
      },
      updatePayload() {
        const fromHistory = history && history.events && history.events.find((e) => e.payload !== undefined);
        const payload = fromHistory ? fromHistory.payload : job.payload !== undefined ? job.payload : local ? local.payload : undefined;
        if (el.payloadShown === payload && el.payloadShownSet) return;
        el.payloadShown = payload;
        el.payloadShownSet = true;
        const body = [h('h2', null, 'Payload')];
        if (payload === undefined) {
          body.push(h('p', { class: 'muted' }, 'The payload is kept while the job waits, runs or is dead; this job\'s is gone (it ended).'));
        } else {
          if (!fromHistory && local) body.push(h('p', { class: 'muted' }, 'As submitted from this browser tab.'));
          body.push(...images(payload));
          body.push(jsonView(payload));
          if (local && local.file) body.push(h('p', { class: 'muted' }, 'With the file ', h('code', null, local.file.name), ' (' + fmtBytes(local.file.size) + ')'));
        }
        fill(el.payload, body);
      },
      updateResult() {
        const key = job.state + '|' + (job.result_ref ? job.result_ref.blob : '') + '|' + (job.result ? 'r' : '');
        if (el.resultKey === key) return;
        el.resultKey = key;
        const body = [h('h2', null, 'Result')];
        const resultUrl = BASE + '/v1/jobs/' + encodeURIComponent(id) + '/result';
        if (job.result_ref) {
          const ref = job.result_ref;
          body.push(h('p', null, 'Stored as a blob (' + fmtBytes(ref.size) + ', ' + ref.content_type + '): ',
            h('a', { class: 'button', href: resultUrl, download: id + '-result' + (ref.content_type.includes('json') ? '.json' : ''), id: 'result-download' }, 'Download the result')));
          if (/^image\//.test(ref.content_type)) body.push(h('img', { class: 'result-image', src: resultUrl, alt: 'result' }));
        } else if (job.state === 'succeeded') {
          const text = JSON.stringify(job.result, null, 2);
          body.push(...images(job.result));
          if (text && text.length > 256 * 1024) {
            body.push(h('p', null, 'A large result (' + fmtBytes(text.length) + '): ', downloadLink('Download it', text, id + '-result.json')));
          } else body.push(jsonView(job.result));
        } else body.push(h('p', { class: 'muted' }, TERMINAL.has(job.state) ? 'No result: the job ' + job.state + '.' : 'Not finished yet.'));
        fill(el.result, body);
      },
    };

    function traceId() {
      if (history && history.trace_id) return { id: history.trace_id };
      const fromEvents = history && history.events && history.events.find((e) => e.trace_id || e.traceparent);
      if (fromEvents) return { id: fromEvents.trace_id || String(fromEvents.traceparent).split('-')[1] };
      if (job.trace_id) return { id: job.trace_id };
      if (local && local.trace_id) return { id: local.trace_id, note: 'sent as traceparent by this dashboard when it submitted the job' };
      return {};
    }
  }

  function images(value) {
    return findImages(value).map((img) => h('figure', { style: { margin: '0 0 8px' } },
      h('img', { class: 'result-image', src: 'data:image/' + img.type + ';base64,' + img.data.replace(/\s/g, ''), alt: img.path }),
      h('figcaption', { class: 'muted' }, img.path)));
  }

  function timelineItem(e, when) {
    const attempt = e.attempt ? ' · attempt ' + e.attempt + (e.max_attempts ? ' of ' + e.max_attempts : '') : '';
    let what = e.type;
    const detail = [];
    switch (e.type) {
      case 'created':
        what = 'created';
        break;
      case 'queued':
        what = 'queued';
        break;
      case 'started':
        what = 'started';
        break;
      case 'retrying':
        what = 'failed, will retry';
        detail.push(h('div', { class: 'err-text' }, e.error || ''));
        if (e.retry_in_ms !== undefined) detail.push(h('div', { class: 'muted' }, 'next attempt in ' + fmtDur(e.retry_in_ms)));
        break;
      case 'succeeded':
        if (e.result_ref) detail.push(h('div', { class: 'muted' }, 'result stored as a blob, ' + fmtBytes(e.result_ref.size)));
        break;
      case 'failed':
        what = 'failed';
        detail.push(h('div', { class: 'err-text' }, e.error || ''));
        break;
      case 'cancelled':
        if (e.reason) detail.push(h('div', { class: 'muted wrap' }, e.reason));
        break;
      case 'requeued':
        what = 'queued again (retry)';
        break;
      case 'webhook': {
        what = 'webhook ' + (e.event || '');
        const outcome = e.outcome || '';
        detail.push(h('div', null,
          h('span', { class: 'badge ' + (outcome === 'delivered' ? 'ok' : outcome === 'failed' ? 'bad' : 'warn') }, outcome),
          ' delivery attempt ' + (e.delivery_attempt || '?') + (e.status ? ', HTTP ' + e.status : '') +
          (e.retry_in_ms !== undefined ? ', next in ' + fmtDur(e.retry_in_ms) : '')));
        if (e.error) detail.push(h('div', { class: 'err-text' }, e.error));
        break;
      }
      default:
        break;
    }
    return h('li', { class: 'ev-' + e.type, dataset: { type: e.type } },
      h('span', { class: 'what' }, what), h('span', { class: 'muted' }, attempt), when,
      detail.length ? h('div', { class: 'detail' }, detail) : null);
  }

  // Without the history route: what a snapshot tells (creation, each failed attempt, now).
  function fallbackTimeline(job) {
    const items = [timelineItem({ type: 'created', at: job.created_at }, h('span', { class: 'when' }, fmtTime(job.created_at, true)))];
    for (const err of job.errors || []) {
      if (job.state === 'failed' && err.attempt === job.attempt) continue; // the last entry says it
      items.push(timelineItem({ type: 'retrying', attempt: err.attempt, error: err.error, at: err.at },
        h('span', { class: 'when' }, fmtTime(err.at, true))));
    }
    if (job.state !== 'queued') {
      items.push(timelineItem({ type: job.state, attempt: job.attempt, error: job.error, at: job.updated_at },
        h('span', { class: 'when' }, fmtTime(job.updated_at, true))));
    }
    return items;
  }

  // ---- Dead letters

  function deadLettersView(params) {
    const kind = params.get('kind') || '';
    const cursor = params.get('cursor') || '';
    let list = null;
    let error = null;
    let missing = false;
    let nextCursor = null;
    let flash = null;
    let busy = false;
    let refreshTimer = null;
    let dirty = true;
    const open = new Set();
    const details = new Map(); // id -> snapshot or error
    const el = {};

    async function load() {
      try {
        const r = await call('GET', '/v1/dead-letters' + query({ kind, limit: 50, cursor }));
        list = r.data.dead_letters || [];
        nextCursor = r.data.next_cursor || null;
        error = null;
      } catch (e) {
        if (missingRoute(e)) missing = true;
        else error = e;
      }
      dirty = true;
      invalidate();
    }

    async function replay(body, label) {
      busy = true;
      flash = null;
      dirty = true;
      invalidate();
      try {
        let replayed = 0;
        const failed = [];
        let remaining = 0;
        // "all" replays at most 1000 per request: go on while it makes progress.
        for (let round = 0; round < 100; round++) {
          const r = await call('POST', '/v1/dead-letters/replay', { body });
          replayed += (r.data.replayed || []).length;
          failed.push(...(r.data.failed || []));
          remaining = r.data.remaining || 0;
          if (!body.all || remaining === 0 || (r.data.replayed || []).length === 0) break;
        }
        const parts = ['Replayed ' + fmtNum(replayed) + ' job' + (replayed === 1 ? '' : 's') + ' (' + label + ').'];
        if (failed.length) parts.push(' Not replayed: ' + failed.map((f) => (f.id || '?') + ' (' + f.status + ': ' + f.detail + ')').join('; '));
        if (remaining) parts.push(' Still dead: ' + fmtNum(remaining) + '.');
        flash = banner(failed.length ? '' : 'ok', parts.join(''));
      } catch (e) {
        flash = errorBanner(e);
      }
      busy = false;
      await load();
    }

    async function inspect(id) {
      if (open.has(id)) open.delete(id);
      else {
        open.add(id);
        if (!details.has(id)) {
          details.set(id, null);
          call('GET', '/v1/jobs/' + encodeURIComponent(id)).then((r) => details.set(id, r.data))
            .catch((e) => details.set(id, { fetchError: e.message }))
            .finally(() => {
              dirty = true;
              invalidate();
            });
        }
      }
      dirty = true;
      invalidate();
    }

    return {
      name: 'dead-letters',
      mount(root) {
        el.root = root;
        el.select = h('select', {
          id: 'dead-kind',
          'aria-label': 'Kind',
          onchange: () => {
            location.hash = '#/dead-letters' + query({ kind: el.select.value });
          },
        }, h('option', { value: '' }, 'all kinds'));
        kinds().then((list2) => {
          for (const k of list2) el.select.append(h('option', { value: k.kind, selected: k.kind === kind }, k.kind));
        }).catch(() => {});
        el.replayAll = h('button', {
          type: 'button',
          class: 'danger',
          id: 'replay-all',
          onclick: () => {
            const what = kind ? 'every dead ' + kind + ' job' : 'every dead job of every kind';
            if (window.confirm('Replay ' + what + '?')) replay(kind ? { all: true, kind } : { all: true }, kind ? 'all of ' + kind : 'all kinds');
          },
        }, kind ? 'Replay all ' + kind : 'Replay all');
        el.flash = h('div', { class: 'flash' });
        el.body = h('div');
        fill(root,
          viewHead('Dead letters', 'jobs that failed for good, oldest first', [h('label', { class: 'row' }, 'kind ', el.select), el.replayAll]),
          el.flash, el.body);
        load();
      },
      unmount() {
        clearTimeout(refreshTimer);
      },
      onJob(job) {
        // A job that fails for good lands here; one that is queued again leaves.
        // Its dead letter is stored just after the failed event: read at once and again later.
        if ((job.state === 'failed' || job.state === 'queued') && (!kind || job.kind === kind) && !cursor && !refreshTimer) {
          refreshTimer = setTimeout(() => {
            load();
            refreshTimer = setTimeout(() => {
              refreshTimer = null;
              load();
            }, 2000);
          }, 500);
        }
      },
      render() {
        if (!dirty) return;
        dirty = false;
        fill(el.flash, flash);
        el.replayAll.disabled = busy || missing || !list || list.length === 0;
        if (missing) {
          fill(el.body, banner('', 'This gateway has no GET /v1/dead-letters yet.'));
          return;
        }
        if (error) {
          fill(el.body, errorBanner(error));
          return;
        }
        if (!list) {
          fill(el.body, h('p', { class: 'empty' }, 'Loading…'));
          return;
        }
        const rows = [];
        for (const d of list) {
          const key = d.id || 'seq-' + d.seq;
          rows.push(h('tr', { dataset: { id: key, kind: d.kind } },
            h('td', { class: 'mono' }, d.id ? h('a', { href: '#/jobs/' + encodeURIComponent(d.id) }, d.id) : h('span', { class: 'muted' }, 'not a job (seq ' + d.seq + ')')),
            h('td', null, d.kind),
            h('td', { class: 'time' }, fmtTime(d.failed_at)),
            h('td', { class: 'num' }, fmtNum(d.attempt)),
            h('td', { class: 'err-text' }, d.error),
            h('td', null, h('div', { class: 'row' },
              d.id ? h('button', { type: 'button', class: 'inspect', onclick: () => inspect(d.id) }, open.has(d.id) ? 'Hide' : 'Inspect') : null,
              h('button', {
                type: 'button',
                class: 'replay',
                disabled: busy || !d.replayable || !d.id,
                title: d.replayable ? 'Queue this job again (same id, same request)' : 'This dead letter cannot be replayed',
                onclick: () => replay({ ids: [d.id] }, d.id),
              }, 'Replay')))));
          if (d.id && open.has(d.id)) {
            const snap = details.get(d.id);
            rows.push(h('tr', { class: 'details' }, h('td', { colspan: 6 },
              snap === null || snap === undefined ? 'Loading…' : snap.fetchError ? h('span', { class: 'err-text' }, snap.fetchError)
                : h('div', null,
                  h('p', null, h('a', { href: '#/jobs/' + encodeURIComponent(d.id) }, 'The job’s page'), ': its timeline, errors and actions.'),
                  h('h3', null, 'Dead letter'), jsonView(d),
                  h('h3', null, 'Snapshot now'), jsonView(snap)))));
          }
        }
        const pager = h('div', { class: 'pager' },
          cursor ? h('button', { type: 'button', onclick: () => history.back() }, '‹ Back') : null,
          h('button', {
            type: 'button',
            id: 'dead-next',
            disabled: !nextCursor,
            onclick: () => {
              location.hash = '#/dead-letters' + query({ kind, cursor: nextCursor });
            },
          }, 'Next ›'));
        fill(el.body, h('div', { class: 'panel flush' },
          table(['job', 'kind', 'failed at', ['attempt', 'num'], 'error', ''],
            h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: 6, class: 'empty' }, 'No dead letters' + (kind ? ' of kind ' + kind : '') + '.')))),
          pager));
      },
    };
  }

  // ---- Submit

  function submitView(params) {
    let kindList = null;
    let current = null;
    let checkTimer = null;
    let busy = false;
    const el = {};

    function parsePayload() {
      const text = el.editor.value.trim();
      if (text === '') return { value: {} };
      try {
        return { value: JSON.parse(text) };
      } catch (e) {
        return { error: 'not JSON: ' + e.message };
      }
    }

    // The payload against the kind's schema, shown next to the editor; a chosen file
    // stands for the upload field.
    function check() {
      const items = [];
      const parsed = parsePayload();
      let ok = true;
      if (parsed.error) {
        items.push(h('li', null, parsed.error));
        ok = false;
      } else if (current) {
        const value = parsed.value;
        const file = el.file && el.file.files && el.file.files[0];
        let checked = value;
        if (file && current.upload_field && value && typeof value === 'object' && !Array.isArray(value)) {
          checked = Object.assign({}, value, { [current.upload_field]: 'the uploaded file' });
          if (Object.prototype.hasOwnProperty.call(value, current.upload_field)) {
            items.push(h('li', null, h('code', null, '/payload/' + current.upload_field), ': leave it out when uploading a file (the file goes there)'));
            ok = false;
          }
        }
        const errors = Schema.validate(current.payload_schema || {}, checked);
        for (const err of errors) {
          items.push(h('li', null, h('code', null, '/payload' + err.path), ': ' + err.message));
        }
        if (errors.length) ok = false;
        if (ok) items.push(h('li', { class: 'ok' }, 'The payload fits the ' + current.kind + ' schema.'));
      }
      fill(el.checks, items);
      el.editor.classList.toggle('invalid', !ok);
      el.submit.disabled = !ok || busy || !current;
      return ok ? parsed.value : undefined;
    }

    function selectKind(name) {
      current = kindList.find((k) => k.kind === name) || kindList[0] || null;
      if (!current) return;
      el.kind.value = current.kind;
      fill(el.help, current.description || '', h('div', { class: 'muted' },
        'processor ' + (current.processor || '?') + ' · ' + (current.max_attempts || '?') + ' attempts by default · timeout ' + fmtDur((current.timeout_secs || 0) * 1000)));
      el.editor.value = JSON.stringify(Schema.example(current.payload_schema || {}, current.upload_field || undefined), null, 2);
      fill(el.schema, h('summary', null, 'payload schema'), jsonView(current.payload_schema || {}));
      el.fileField.hidden = !current.upload_field;
      if (current.upload_field) {
        fill(el.fileLabel, 'file (goes into ', h('code', null, current.upload_field), ')');
      }
      el.file.value = '';
      el.maxAttempts.placeholder = String(current.max_attempts || '');
      el.timeout.placeholder = String(current.timeout_secs || '');
      check();
    }

    async function send(e) {
      e.preventDefault();
      const payload = check();
      if (payload === undefined || !current) return;
      const body = { kind: current.kind, payload };
      const num = (input) => (input.value.trim() === '' ? undefined : Number(input.value));
      if (num(el.maxAttempts) !== undefined) body.max_attempts = num(el.maxAttempts);
      if (num(el.timeout) !== undefined) body.timeout_secs = num(el.timeout);
      if (num(el.delay) !== undefined) body.delay_secs = num(el.delay);
      if (el.priority.value !== 'normal') body.priority = el.priority.value;
      if (el.callback.value.trim()) body.callback_url = el.callback.value.trim();
      const traceIdHex = randomHex(16);
      const headers = { traceparent: '00-' + traceIdHex + '-' + randomHex(8) + '-01' };
      if (el.idem.value.trim()) headers['idempotency-key'] = el.idem.value.trim();
      const file = current.upload_field && el.file.files[0];
      busy = true;
      el.submit.disabled = true;
      fill(el.result, h('p', { class: 'muted' }, 'Submitting…'));
      try {
        let r;
        if (file) {
          const form = new FormData();
          form.append('job', new Blob([JSON.stringify(body)], { type: 'application/json' }));
          form.append('file', file, file.name);
          r = await call('POST', '/v1/jobs', { form, headers });
        } else r = await call('POST', '/v1/jobs', { body, headers });
        const job = r.data;
        submitted.save(job.id, { payload, trace_id: traceIdHex, file: file ? { name: file.name, size: file.size } : null });
        location.hash = '#/jobs/' + encodeURIComponent(job.id);
      } catch (err) {
        fill(el.result, errorBanner(err));
      } finally {
        busy = false;
        if (el.submit) check();
      }
    }

    return {
      name: 'submit',
      mount(root) {
        el.kind = h('select', { id: 'submit-kind', name: 'kind', onchange: () => selectKind(el.kind.value) });
        el.help = h('div', { class: 'kind-help' });
        el.editor = h('textarea', {
          class: 'editor',
          id: 'payload-editor',
          name: 'payload',
          spellcheck: 'false',
          autocomplete: 'off',
          'aria-label': 'Payload (JSON)',
          oninput: () => {
            clearTimeout(checkTimer);
            checkTimer = setTimeout(check, 120);
          },
          onkeydown: (e) => {
            if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey) {
              e.preventDefault();
              el.editor.setRangeText('  ', el.editor.selectionStart, el.editor.selectionEnd, 'end');
              el.editor.dispatchEvent(new Event('input'));
            }
          },
        });
        el.checks = h('ul', { class: 'checks', id: 'payload-checks', 'aria-live': 'polite' });
        el.schema = h('details', { class: 'schema' });
        el.file = h('input', { type: 'file', id: 'submit-file', name: 'file', onchange: () => check() });
        el.fileLabel = h('span');
        el.fileField = h('label', { class: 'field', hidden: true }, el.fileLabel, el.file);
        el.maxAttempts = h('input', { type: 'number', id: 'submit-max-attempts', min: '1', step: '1', inputmode: 'numeric' });
        el.timeout = h('input', { type: 'number', id: 'submit-timeout', min: '1', step: '1' });
        el.delay = h('input', { type: 'number', id: 'submit-delay', min: '0', step: 'any', placeholder: 'now' });
        el.priority = h('select', { id: 'submit-priority' }, ['high', 'normal', 'low'].map((p) => h('option', { value: p, selected: p === 'normal' }, p)));
        el.idem = h('input', { type: 'text', id: 'submit-idempotency-key', placeholder: 'optional', autocomplete: 'off' });
        el.callback = h('input', { type: 'url', id: 'submit-callback-url', placeholder: 'https://… (optional)', autocomplete: 'off' });
        el.submit = h('button', { type: 'submit', class: 'primary', id: 'submit-job', disabled: true }, 'Submit job');
        el.result = h('div', { id: 'submit-result' });
        const form = h('form', { id: 'submit-form', onsubmit: send },
          h('div', { class: 'submit-grid' },
            h('div', { class: 'panel' },
              h('label', { class: 'field' }, 'kind', el.kind),
              el.help,
              h('label', { class: 'field' }, 'payload (JSON)', el.editor),
              el.fileField,
              h('div', { class: 'options' },
                h('label', { class: 'field' }, 'max attempts', el.maxAttempts),
                h('label', { class: 'field' }, 'timeout per attempt (s)', el.timeout),
                h('label', { class: 'field' }, 'delay (s)', el.delay),
                h('label', { class: 'field' }, 'priority', el.priority),
                h('label', { class: 'field' }, 'idempotency key', el.idem),
                h('label', { class: 'field' }, 'webhook URL (callback_url)', el.callback)),
              h('div', { class: 'row' }, el.submit,
                h('button', { type: 'button', onclick: () => selectKind(current && current.kind) }, 'Reset payload'))),
            h('div', null,
              h('div', { class: 'panel' }, h('h2', null, 'Checked against the kind\'s schema'), el.checks, el.schema),
              el.result)));
        fill(root, viewHead('Submit a job', 'POST /v1/jobs'), form);
        kinds(true).then((list) => {
          kindList = list;
          fill(el.kind, list.map((k) => h('option', { value: k.kind }, k.kind)));
          if (!list.length) fill(el.result, banner('', 'No kinds are registered: is a processor running?'));
          else selectKind(params.get('kind') || list[0].kind);
        }).catch((e) => fill(el.result, errorBanner(e)));
      },
      unmount() {
        clearTimeout(checkTimer);
      },
    };
  }

  // ---------------------------------------------------------------- routing

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const [path, search] = hash.split('?');
    const params = new URLSearchParams(search || '');
    const parts = path.split('/').filter(Boolean);
    let next;
    let nav;
    if (parts[0] === 'jobs' && parts[1]) {
      next = jobView(decodeURIComponent(parts[1]));
      nav = 'jobs';
    } else if (parts[0] === 'jobs') {
      next = jobsView(params);
      nav = 'jobs';
    } else if (parts[0] === 'dead-letters') {
      next = deadLettersView(params);
      nav = 'dead-letters';
    } else if (parts[0] === 'submit') {
      next = submitView(params);
      nav = 'submit';
    } else {
      next = overviewView();
      nav = 'overview';
    }
    if (view && view.unmount) view.unmount();
    for (const a of document.querySelectorAll('.top nav a')) a.classList.toggle('active', a.dataset.nav === nav);
    view = next;
    const main = document.getElementById('main');
    main.replaceChildren();
    main.dataset.view = next.name;
    next.mount(main);
    document.title = 'jetjobs · ' + (next.name === 'job' ? 'job' : nav.replace('-', ' '));
  }

  function start() {
    jobListeners.add((job, revision) => {
      if (view && view.onJob) view.onJob(job, revision);
    });
    startEveryJob();
    metrics.backfill().catch(() => {});
    document.getElementById('search').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = document.getElementById('search-id');
      const id = input.value.trim().toLowerCase();
      if (!UUID.test(id)) {
        input.setCustomValidity('A job id is a UUID, e.g. 019aa6d2-5c1e-7b43-9a0e-2f2f8c1d9b11');
        input.reportValidity();
        return;
      }
      input.setCustomValidity('');
      input.value = '';
      location.hash = '#/jobs/' + id;
    });
    document.getElementById('search-id').addEventListener('input', (e) => e.target.setCustomValidity(''));
    window.addEventListener('hashchange', route);
    route();
  }

  // For the browser tests: how many events arrived and how many renders they cost, and
  // a way to feed the page changes faster than a test machine can make real ones (they
  // take the path of /v1/events' snapshots from there on).
  window.__jetjobs = { perf, ingest: dispatch };

  start();
})();
