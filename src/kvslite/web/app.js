/* kvslite web viewer.
 *
 * Plain ES2020, no build step. It uses only the public KVS API of the origin it was loaded
 * from (rest-json: POST /<operation> with a JSON body), signed with SigV4 when the user gave
 * keys, exactly like any other client. Views:
 *   #/                                 the list of streams
 *   #/stream/<name>?start=<ms>&end=<ms> one stream: timeline, thumbnails, player, downloads
 */
'use strict';

/* ------------------------------------------------------------------------------------ */
/* SHA-256 and HMAC in plain JS: WebCrypto (crypto.subtle) only exists in secure contexts,
 * and a self-hosted server is often reached over plain http on a LAN address. */

const SHA256_K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256(bytes) {
  const length = bytes.length;
  const padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
  view.setUint32(padded.length - 4, (length << 3) >>> 0);
  const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64);
  const ror = (x, n) => (x >>> n) | (x << (32 - n));
  for (let offset = 0; offset < padded.length; offset += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g))
                  + SHA256_K[i] + w[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  h.forEach((word, i) => outView.setUint32(4 * i, word));
  return out;
}

function hmacSha256(key, message) {
  if (key.length > 64) key = sha256(key);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = (key[i] || 0) ^ 0x36;
    outer[i] = (key[i] || 0) ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return sha256(outer);
}

const utf8 = (text) => new TextEncoder().encode(text);
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/* ------------------------------------------------------------------------------------ */
/* Credentials and SigV4 */

const CREDENTIALS_KEY = 'kvslite.credentials';
const AUTH_ERRORS = new Set(['MissingAuthenticationTokenException', 'UnrecognizedClientException',
  'InvalidSignatureException', 'IncompleteSignatureException']);

function loadCredentials() {
  try {
    const value = JSON.parse(sessionStorage.getItem(CREDENTIALS_KEY) || 'null');
    return value && value.accessKeyId && value.secretAccessKey ? value : null;
  } catch (_) {
    return null;
  }
}

/** SigV4 headers for a POST of `body` to `path` on this origin (service kinesisvideo). */
function signRequest(path, body, credentials, now = new Date()) {
  const amzDate = now.toISOString().replace(/[-:]|\.\d{3}/g, '');
  const date = amzDate.slice(0, 8);
  const region = credentials.region || 'us-east-1';
  const scope = `${date}/${region}/kinesisvideo/aws4_request`;
  // The browser sends Host itself, as location.host (no port for the scheme's default).
  const signedHeaders = 'host;x-amz-date';
  const canonicalRequest = ['POST', path.split('/').map(encodeURIComponent).join('/'), '',
    `host:${location.host}\nx-amz-date:${amzDate}\n`, signedHeaders,
    hex(sha256(utf8(body)))].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope,
    hex(sha256(utf8(canonicalRequest)))].join('\n');
  let key = utf8('AWS4' + credentials.secretAccessKey);
  for (const part of [date, region, 'kinesisvideo', 'aws4_request']) key = hmacSha256(key, utf8(part));
  const signature = hex(hmacSha256(key, utf8(stringToSign)));
  return {
    'x-amz-date': amzDate,
    authorization: `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope}, ` +
      `SignedHeaders=${signedHeaders}, Signature=${signature}`,
  };
}

/* ------------------------------------------------------------------------------------ */
/* The API client */

class ApiError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
}

/** POST /<operation> with a JSON body; the parsed JSON, or the Response itself with raw. */
async function api(path, params = {}, { signal, raw = false } = {}) {
  const body = JSON.stringify(params);
  const headers = { 'content-type': 'application/json' };
  const credentials = loadCredentials();
  if (credentials) Object.assign(headers, signRequest(path, body, credentials));
  let response;
  try {
    response = await fetch(path, { method: 'POST', headers, body, signal, cache: 'no-store' });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError('NetworkError', `Cannot reach the server: ${error.message}`, 0);
  }
  if (!response.ok) {
    const code = (response.headers.get('x-amzn-ErrorType') || `HTTP${response.status}`)
      .split(':')[0];
    let message = '';
    try {
      message = (await response.json()).message || '';
    } catch (_) { /* not JSON */ }
    const error = new ApiError(code, message || `${code} (HTTP ${response.status})`,
      response.status);
    if (AUTH_ERRORS.has(code)) askForCredentials(error);
    throw error;
  }
  return raw ? response : response.json();
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => {
    clearTimeout(timer);
    reject(new DOMException('Aborted', 'AbortError'));
  }, { once: true });
});

/** Runs at most `n` of the given async functions at once. */
function limiter(n) {
  let active = 0;
  const queue = [];
  const next = () => {
    if (active >= n || !queue.length) return;
    active++;
    const { fn, resolve, reject } = queue.shift();
    fn().then(resolve, reject).finally(() => { active--; next(); });
  };
  return (fn) => new Promise((resolve, reject) => { queue.push({ fn, resolve, reject }); next(); });
}
const imageSlots = limiter(3);  // the server sheds GetImages over its limit (default 8)

/* The smallest SamplingInterval the server accepts: AWS's is 3000 ms; kvslite's is a server
 * setting. Start optimistic and learn it from the InvalidArgumentException. */
const MIN_INTERVAL_KEY = 'kvslite.minSamplingIntervalMs';
let minSamplingInterval = Number(sessionStorage.getItem(MIN_INTERVAL_KEY)) || 1;

function learnMinimumInterval(error, tried) {
  if (error.code !== 'InvalidArgumentException' || !/SamplingInterval/i.test(error.message)) {
    return null;
  }
  const match = /at least (\d+)/i.exec(error.message) || /minimum[^\d]*(\d+)/i.exec(error.message);
  const minimum = match ? Number(match[1]) : 3000;
  if (minimum <= tried) return null;
  minSamplingInterval = minimum;
  sessionStorage.setItem(MIN_INTERVAL_KEY, String(minimum));
  return minimum;
}

/** One GetImages call, retried when the server is busy (ClientLimitExceededException). */
async function getImages(params, { signal, adjustInterval = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return { page: await imageSlots(() => api('/getImages', params, { signal })), params };
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      const minimum = adjustInterval && !params.NextToken &&
        learnMinimumInterval(error, params.SamplingInterval);
      if (minimum) {
        params = { ...params, SamplingInterval: minimum };
        continue;
      }
      if (error.code === 'ClientLimitExceededException' && attempt < 6) {
        await sleep(150 * 2 ** attempt, signal);
        continue;
      }
      throw error;
    }
  }
}

/** Every fragment of a ListFragments query, at most `maxPages` pages of 1000. */
async function listFragments(stream, selector, { maxPages = 10, signal } = {}) {
  const fragments = [];
  let token = null;
  let pages = 0;
  do {
    const params = token ? { StreamName: stream, MaxResults: 1000, NextToken: token }
      : { StreamName: stream, MaxResults: 1000, ...(selector ? { FragmentSelector: selector } : {}) };
    const page = await api('/listFragments', params, { signal });
    for (const f of page.Fragments || []) {
      const start = Math.round(f.ProducerTimestamp * 1000);
      fragments.push({
        number: f.FragmentNumber,
        start,
        end: start + (f.FragmentLengthInMilliseconds || 0),
        server: Math.round(f.ServerTimestamp * 1000),
        size: f.FragmentSizeInBytes || 0,
      });
    }
    token = page.NextToken;
    pages++;
  } while (token && pages < maxPages);
  return { fragments, complete: !token };
}

const timeRange = (type, start, end) => ({
  FragmentSelectorType: type,
  TimestampRange: { StartTimestamp: start / 1000, EndTimestamp: end / 1000 },
});

/* ------------------------------------------------------------------------------------ */
/* Formatting */

const p2 = (n) => String(n).padStart(2, '0');
const p3 = (n) => String(n).padStart(3, '0');

function fmtDate(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}`;
}

function fmtClock(ms, precision = 's') {
  const d = new Date(ms);
  let text = `${p2(d.getHours())}:${p2(d.getMinutes())}`;
  if (precision !== 'm') text += `:${p2(d.getSeconds())}`;
  if (precision === 'ms') text += `.${p3(d.getMilliseconds())}`;
  return text;
}

const fmtDateTime = (ms, precision = 's') => `${fmtDate(ms)} ${fmtClock(ms, precision)}`;

function fmtDuration(ms) {
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${+s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

function fmtAgo(ms) {
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function fmtBytes(bytes) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

function fmtRetention(hours) {
  if (!hours) return 'none';
  if (hours % 24 === 0) return `${hours / 24} d`;
  return `${hours} h`;
}

/** A compact UTC stamp for file names: 20240131T235959.123Z */
const fileStamp = (ms) => new Date(ms).toISOString().replace(/[-:]/g, '');

function toLocalInput(ms) {
  const d = new Date(ms);
  return `${fmtDate(ms)}T${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}` +
    `.${p3(d.getMilliseconds())}`;
}

/** "UTC+02:00": the zone of the datetime-local fields. */
function zoneName(ms = Date.now()) {
  const offset = -new Date(ms).getTimezoneOffset();
  const sign = offset < 0 ? '-' : '+';
  return `UTC${sign}${p2(Math.floor(Math.abs(offset) / 60))}:${p2(Math.abs(offset) % 60)}`;
}

function fromLocalInput(value) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,3}))?)?$/.exec(value || '');
  if (!m) return NaN;
  return new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0),
    +(m[7] || '0').padEnd(3, '0')).getTime();
}

/* ------------------------------------------------------------------------------------ */
/* DOM helpers */

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function showError(error) {
  const box = $('#error');
  if (!error) { box.hidden = true; box.textContent = ''; return; }
  if (error.name === 'AbortError') return;
  box.textContent = error.code ? `${error.code}: ${error.message}` : String(error.message || error);
  box.hidden = false;
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/* ------------------------------------------------------------------------------------ */
/* A store-only ZIP writer (images are already compressed) */

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** files: [{name, data: Uint8Array, time: ms}] -> Blob (application/zip) */
function makeZip(files) {
  const parts = [];
  const central = [];
  let offset = 0;
  for (const file of files) {
    const name = utf8(file.name);
    const d = new Date(file.time);
    const dosTime = (d.getHours() << 11) | (d.getMinutes() << 5) | (d.getSeconds() >> 1);
    const dosDate = ((Math.max(d.getFullYear(), 1980) - 1980) << 9) | ((d.getMonth() + 1) << 5)
      | d.getDate();
    const crc = crc32(file.data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true);       // UTF-8 names
    local.setUint16(8, 0, true);            // stored
    local.setUint16(10, dosTime, true);
    local.setUint16(12, dosDate, true);
    local.setUint32(14, crc, true);
    local.setUint32(18, file.data.length, true);
    local.setUint32(22, file.data.length, true);
    local.setUint16(26, name.length, true);
    local.setUint16(28, 0, true);
    parts.push(local, name, file.data);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(10, 0, true);
    entry.setUint16(12, dosTime, true);
    entry.setUint16(14, dosDate, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, file.data.length, true);
    entry.setUint32(24, file.data.length, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(42, offset, true);
    central.push(entry, name);
    offset += 30 + name.length + file.data.length;
  }
  const centralSize = central.reduce((sum, part) => sum + part.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, centralSize, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: 'application/zip' });
}

/* ------------------------------------------------------------------------------------ */
/* Stream summaries: size and newest fragment from ListFragments, bounded */

const SUMMARY_PAGES = 5;  // 5000 fragments; past that the size is shown as a lower bound
const summaries = new Map();  // name -> {at, promise}
const summarySlots = limiter(4);

function streamSummary(name, { maxAgeMs = 30_000 } = {}) {
  const cached = summaries.get(name);
  if (cached && Date.now() - cached.at < maxAgeMs) return cached.promise;
  const promise = summarySlots(() => computeSummary(name));
  summaries.set(name, { at: Date.now(), promise });
  promise.catch(() => summaries.delete(name));
  return promise;
}

async function computeSummary(name) {
  let result;
  try {
    result = await listFragments(name, null, { maxPages: SUMMARY_PAGES });
  } catch (error) {
    if (error.code === 'NoDataRetentionException') return { noRetention: true };
    throw error;
  }
  const summary = { count: 0, bytes: 0, complete: result.complete, first: Infinity,
    last: -Infinity, lastServer: -Infinity };
  const add = (f) => {
    summary.first = Math.min(summary.first, f.start);
    summary.last = Math.max(summary.last, f.end);
    summary.lastServer = Math.max(summary.lastServer, f.server);
  };
  for (const f of result.fragments) {
    summary.count++;
    summary.bytes += f.size;
    add(f);
  }
  if (!result.complete) {
    // Too many to walk: the newest fragment is among those that arrived in the last day.
    const now = Date.now();
    const recent = await listFragments(name, timeRange('SERVER_TIMESTAMP', now - 86_400_000, now),
      { maxPages: SUMMARY_PAGES });
    recent.fragments.forEach(add);
  }
  return summary;
}

/* ------------------------------------------------------------------------------------ */
/* The stream list */

let listGeneration = 0;

async function showList() {
  const generation = ++listGeneration;
  $('#list-view').hidden = false;
  $('#crumbs').textContent = '';
  document.title = 'kvslite';
  const tbody = $('#streams tbody');
  const streams = [];
  let token = null;
  try {
    do {
      const page = await api('/listStreams', token ? { NextToken: token, MaxResults: 10000 }
        : { MaxResults: 10000 });
      streams.push(...(page.StreamInfoList || []));
      token = page.NextToken;
    } while (token);
  } catch (error) {
    showError(error);
    return;
  }
  if (generation !== listGeneration) return;
  streams.sort((a, b) => a.StreamName.localeCompare(b.StreamName));
  tbody.replaceChildren();
  $('#no-streams').hidden = streams.length > 0;
  $('#streams').hidden = streams.length === 0;
  for (const info of streams) {
    const href = `#/stream/${encodeURIComponent(info.StreamName)}`;
    const row = el('tr', { 'data-stream': info.StreamName, tabIndex: -1 },
      el('td', { class: 'name', 'data-label': 'Name' },
        el('a', { href, text: info.StreamName })),
      el('td', { class: 'codec', 'data-label': 'Codec', text: info.MediaType || '—' }),
      el('td', { class: 'retention', 'data-label': 'Retention',
        text: fmtRetention(info.DataRetentionInHours) }),
      el('td', { class: 'last pending', 'data-label': 'Last fragment', text: '…' }),
      el('td', { class: 'size pending', 'data-label': 'Size', text: '…' }));
    row.addEventListener('click', (event) => {
      if (event.target.closest('a')) return;
      location.hash = href;
    });
    tbody.append(row);
    fillSummary(row, info.StreamName, generation);
  }
  filterList();
  $('#list-view').dataset.ready = 'true';
}

async function fillSummary(row, name, generation) {
  const last = $('.last', row);
  const size = $('.size', row);
  try {
    const summary = await streamSummary(name, { maxAgeMs: 5_000 });
    if (generation !== listGeneration) return;
    if (summary.noRetention) {
      last.textContent = 'not kept';
      size.textContent = '—';
    } else if (!summary.count) {
      last.textContent = 'never';
      size.textContent = '0 B';
    } else {
      const newest = summary.last;
      last.textContent = Number.isFinite(newest) ? `${fmtDateTime(newest)} (${fmtAgo(newest)})`
        : '> 1 day ago';
      last.title = Number.isFinite(newest) ? new Date(newest).toISOString() : '';
      last.dataset.ms = Number.isFinite(newest) ? newest : '';
      size.textContent = (summary.complete ? '' : '≥ ') + fmtBytes(summary.bytes);
      size.title = `${summary.count}${summary.complete ? '' : '+'} fragments`;
      size.dataset.bytes = summary.bytes;
    }
  } catch (error) {
    last.textContent = '—';
    size.textContent = '—';
    last.title = size.title = error.message;
  }
  last.classList.remove('pending');
  size.classList.remove('pending');
}

function filterList() {
  const needle = $('#stream-filter').value.trim().toLowerCase();
  for (const row of document.querySelectorAll('#streams tbody tr')) {
    row.hidden = needle && !row.dataset.stream.toLowerCase().includes(needle);
  }
}

/* ------------------------------------------------------------------------------------ */
/* One stream: timeline, thumbnails, player */

const MIN_RANGE_MS = 200;
const MAX_RANGE_MS = 90 * 86_400_000;
const MAX_FRAGMENT_MS = 20_000;       // fragments start at most this long before they matter
const SPAN_TOLERANCE_MS = 250;        // closer fragments are drawn as one span
const TICK_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4,
  3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5];

const S = {
  stream: null,
  info: null,
  view: { start: 0, end: 1 },
  extent: null,               // {start, end} of the archive, producer time
  fragments: new Map(),       // number -> fragment
  sorted: [],                 // fragments by start
  spans: [],                  // merged [start, end)
  loaded: [],                 // producer-time intervals whose fragments are all known
  unknown: null,              // [start, end) not loaded because a query was cut short
  thumbs: [],                 // [{ts, src|null, error, width}]
  thumbCache: new Map(),      // `${ts}` -> {src, error}
  generation: 0,
  abort: null,
  hls: null,
  playBase: null,
};

function resetStream(name) {
  S.abort?.abort();
  stopPlayer();
  Object.assign(S, {
    stream: name, info: null, extent: null, fragments: new Map(), sorted: [], spans: [],
    loaded: [], unknown: null, thumbs: [], thumbCache: new Map(), generation: S.generation + 1,
    abort: new AbortController(),
  });
  $('#thumbs').replaceChildren();
  $('#track').replaceChildren();
  $('#axis').replaceChildren();
  $('#stream-status').textContent = '';
  delete $('#thumbs').dataset.ready;
  delete $('#track').dataset.ready;
  delete $('#timeline').dataset.busy;
}

async function showStream(name, query) {
  const view = $('#stream-view');
  view.hidden = false;
  document.title = `${name} · kvslite`;
  $('#crumbs').replaceChildren(el('a', { href: '#/', text: 'Streams' }), ' / ', name);
  if (S.stream !== name) resetStream(name);
  const signal = S.abort.signal;
  try {
    const [described, summary] = await Promise.all([
      api('/describeStream', { StreamName: name }, { signal }),
      streamSummary(name),
    ]);
    if (S.stream !== name) return;
    S.info = described.StreamInfo;
    if (summary.noRetention) {
      $('#stream-status').textContent = 'This stream keeps no data (retention 0): nothing to show.';
    }
    if (summary.count && Number.isFinite(summary.first) && Number.isFinite(summary.last)) {
      S.extent = { start: summary.first, end: summary.last };
    }
  } catch (error) {
    showError(error);
    return;
  }
  const start = Number(query.get('start'));
  const end = Number(query.get('end'));
  if (Number.isFinite(start) && Number.isFinite(end) && end > start) {
    setView(start, end);
  } else {
    fitView();
  }
  view.dataset.ready = 'true';
}

function fitView() {
  if (!S.extent) {
    const now = Date.now();
    setView(now - 3_600_000, now);
    if (!$('#stream-status').textContent) $('#stream-status').textContent = 'No archived media yet.';
    return;
  }
  let { start, end } = S.extent;
  if (end - start > 2 * 86_400_000) start = end - 3_600_000;  // long archives: the last hour
  const pad = Math.max(500, (end - start) * 0.03);
  setView(start - pad, end + pad);
}

function setView(start, end) {
  let range = Math.min(MAX_RANGE_MS, Math.max(MIN_RANGE_MS, end - start));
  const middle = (start + end) / 2;
  start = Math.round(middle - range / 2);
  end = start + Math.round(range);
  S.view = { start, end };
  scheduleRender();
  scheduleLoad();
}

function zoomAt(factor, anchor = (S.view.start + S.view.end) / 2) {
  const { start, end } = S.view;
  const range = Math.min(MAX_RANGE_MS, Math.max(MIN_RANGE_MS, (end - start) * factor));
  const ratio = (anchor - start) / (end - start);
  setView(anchor - ratio * range, anchor - ratio * range + range);
}

function pan(deltaMs) {
  setView(S.view.start + deltaMs, S.view.end + deltaMs);
}

const timelineWidth = () => $('#timeline').clientWidth || 1;
const xOf = (t) => ((t - S.view.start) / (S.view.end - S.view.start)) * timelineWidth();
const timeAt = (x) => S.view.start + (x / timelineWidth()) * (S.view.end - S.view.start);

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function render() {
  if (!S.stream || $('#stream-view').hidden) return;
  const { start, end } = S.view;
  const width = timelineWidth();
  const range = end - start;
  const precision = range < 10_000 ? 'ms' : 's';
  $('#view-range').textContent =
    `${fmtDateTime(start, precision)} – ${fmtClock(end, precision)} · ${fmtDuration(range)}`;

  // Axis: ticks at round local times, at least ~90 px apart.
  const step = TICK_STEPS.find((s) => (s / range) * width >= 90) || TICK_STEPS.at(-1);
  const zone = -new Date(start).getTimezoneOffset() * 60_000;
  const ticks = [];
  for (let t = Math.ceil((start + zone) / step) * step - zone; t <= end; t += step) {
    const label = step >= 864e5 ? fmtDate(t) : step >= 6e4 ? fmtClock(t, 'm')
      : step >= 1e3 ? fmtClock(t) : fmtClock(t, 'ms');
    const tick = el('div', { class: 'tick', text: label });
    tick.style.left = `${xOf(t)}px`;
    ticks.push(tick);
  }
  $('#axis').replaceChildren(...ticks);

  // Archived spans; gaps are the empty space between them.
  const spans = [];
  for (const [s, e] of S.spans) {
    if (e < start || s > end) continue;
    const left = Math.max(0, xOf(s));
    const right = Math.min(width, xOf(e));
    const span = el('div', { class: 'span', 'data-start': s, 'data-end': e,
      title: `${fmtDateTime(s, 'ms')} – ${fmtDateTime(e, 'ms')}` });
    span.style.left = `${left}px`;
    span.style.width = `${Math.max(1, right - left)}px`;
    spans.push(span);
  }
  if (S.unknown && S.unknown[1] > start && S.unknown[0] < end) {
    const left = Math.max(0, xOf(S.unknown[0]));
    const unknown = el('div', { class: 'unknown', title: 'Not loaded: zoom in for detail' });
    unknown.style.left = `${left}px`;
    unknown.style.width = `${Math.max(0, Math.min(width, xOf(S.unknown[1])) - left)}px`;
    spans.push(unknown);
  }
  $('#track').replaceChildren(...spans);

  // Thumbnails stay where their sample time is while the view moves.
  for (const tile of $('#thumbs').children) {
    const ts = Number(tile.dataset.center);
    const w = Number(tile.dataset.w);
    tile.style.left = `${xOf(ts) - w / 2}px`;
    tile.style.width = `${w}px`;
  }
  renderPlayhead();
}

/* -- loading fragments and thumbnails for the visible range -- */

let loadTimer = null;
function scheduleLoad() {
  clearTimeout(loadTimer);
  const timeline = $('#timeline');
  timeline.dataset.busy = 'true';  // until this view's fragments and thumbnails are in
  loadTimer = setTimeout(() => {
    loadTimer = null;
    if (!S.stream || $('#stream-view').hidden) {
      delete timeline.dataset.busy;
      return;
    }
    const generation = ++S.generation;
    const fragments = loadFragments(generation).catch(showError);
    const thumbs = loadThumbs(generation, fragments).catch(showError);
    Promise.allSettled([fragments, thumbs]).then(() => {
      if (generation === S.generation && loadTimer === null) delete timeline.dataset.busy;
    });
    history.replaceState(null, '', `#/stream/${encodeURIComponent(S.stream)}` +
      `?start=${S.view.start}&end=${S.view.end}`);
  }, 200);
}

function covered(start, end) {
  return S.loaded.some(([a, b]) => a <= start && end <= b);
}

function markLoaded(start, end) {
  const all = [...S.loaded, [start, end]].sort((x, y) => x[0] - y[0]);
  const merged = [];
  for (const [a, b] of all) {
    const last = merged.at(-1);
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  S.loaded = merged;
}

async function loadFragments(generation) {
  const stream = S.stream;
  const from = S.view.start - MAX_FRAGMENT_MS;
  const to = S.view.end;
  const liveEdge = Date.now() - 60_000;  // recent time may still be growing
  if (!covered(from, Math.min(to, liveEdge)) || to > liveEdge) {
    const result = await listFragments(stream, timeRange('PRODUCER_TIMESTAMP', from, to),
      { maxPages: 10, signal: S.abort.signal });
    if (S.stream !== stream) return;
    for (const f of result.fragments) S.fragments.set(f.number, f);
    if (result.complete) {
      markLoaded(from, Math.min(to, liveEdge));
      if (S.unknown && S.unknown[0] >= from && S.unknown[1] <= to) S.unknown = null;
    } else {
      const reached = Math.max(from, ...result.fragments.map((f) => f.start));
      markLoaded(from, reached);
      S.unknown = [reached, to];
    }
    S.sorted = [...S.fragments.values()].sort((a, b) => a.start - b.start);
    S.spans = mergeSpans(S.sorted);
    if (S.sorted.length) {
      const first = S.sorted[0].start;
      const last = Math.max(...S.sorted.map((f) => f.end));
      S.extent = S.extent ? { start: Math.min(S.extent.start, first),
        end: Math.max(S.extent.end, last) } : { start: first, end: last };
    }
    scheduleRender();
  }
  if (generation === S.generation) $('#track').dataset.ready = String(generation);
}

function mergeSpans(sorted) {
  const spans = [];
  for (const f of sorted) {
    const last = spans.at(-1);
    if (last && f.start <= last[1] + SPAN_TOLERANCE_MS) last[1] = Math.max(last[1], f.end);
    else spans.push([f.start, f.end]);
  }
  return spans;
}

/** The fragment on screen at t, or else the first one starting after t. */
function fragmentFor(t) {
  let after = null;
  for (const f of S.sorted) {
    if (f.start <= t && t < f.end) return f;
    if (f.start > t && (!after || f.start < after.start)) after = f;
  }
  return after;
}

function tileTarget() {
  return timelineWidth() < 520 ? 76 : 120;
}

/* Thumbnails: the visible range is cut into slots of `interval` ms, aligned to multiples of
 * the interval so that panning reuses what is cached. One GetImages call samples every
 * slot's middle; a slot whose middle falls in a gap but which holds some media gets a second
 * call for its first archived instant, so short recordings still show up when zoomed out. */
async function loadThumbs(generation, fragmentsLoaded) {
  const stream = S.stream;
  const { start, end } = S.view;
  const thumbs = $('#thumbs');
  const signal = S.abort.signal;
  const current = () => generation === S.generation && S.stream === stream;
  const count = Math.max(1, Math.round(timelineWidth() / tileTarget()));
  let interval = Math.max(minSamplingInterval, Math.floor((end - start) / count), 1);
  let slots;
  const makeSlots = () => {
    slots = [];
    for (let k = Math.floor(start / interval); k * interval < end; k++) {
      const from = k * interval;
      slots.push({ from, to: from + interval, center: from + Math.floor(interval / 2) });
    }
  };
  makeSlots();
  delete thumbs.dataset.ready;

  const fresh = new Map();  // this call's answers, including those too recent to cache
  const missing = slots.filter((slot) => !S.thumbCache.has(String(slot.center)));
  if (missing.length) {
    let params = {
      StreamName: stream, ImageSelectorType: 'PRODUCER_TIMESTAMP',
      StartTimestamp: slots[0].center / 1000, EndTimestamp: slots.at(-1).center / 1000,
      SamplingInterval: interval, Format: 'JPEG', WidthPixels: 160, MaxResults: 100,
    };
    let token = null;
    for (;;) {
      const { page, params: used } = await getImages(
        token ? { ...params, NextToken: token } : params, { signal, adjustInterval: true });
      if (!current()) return;
      if (used.SamplingInterval !== interval) {
        // The server's minimum is larger than we hoped: fewer, wider slots, asked again.
        interval = used.SamplingInterval;
        makeSlots();
        params = { ...used, StartTimestamp: slots[0].center / 1000,
          EndTimestamp: slots.at(-1).center / 1000 };
        token = null;
        continue;
      }
      for (const image of page.Images || []) {
        fresh.set(String(Math.round(image.TimeStamp * 1000)), cacheImage(image));
      }
      token = page.NextToken;
      if (!token) break;
    }
  }

  await fragmentsLoaded;
  if (!current()) return;
  const snaps = [];
  for (const slot of slots) {
    const key = String(slot.center);
    slot.image = { ts: slot.center, ...(fresh.get(key) || S.thumbCache.get(key)) };
    if (slot.image.src) continue;
    const span = S.spans.find(([a, b]) => a < slot.to && b > slot.from);
    if (!span) continue;
    const at = Math.max(span[0], slot.from);
    const hit = S.thumbCache.get(String(at));
    if (hit) {
      if (hit.src) slot.image = { ts: at, ...hit };
      continue;
    }
    snaps.push(getImages({
      StreamName: stream, ImageSelectorType: 'PRODUCER_TIMESTAMP', StartTimestamp: at / 1000,
      EndTimestamp: at / 1000, SamplingInterval: Math.max(minSamplingInterval, 1),
      Format: 'JPEG', WidthPixels: 160,
    }, { signal }).then(({ page }) => {
      const [image] = page.Images || [];
      if (image) {
        const entry = cacheImage(image);
        if (entry.src) slot.image = { ts: Math.round(image.TimeStamp * 1000), ...entry };
      }
    }));
  }
  await Promise.all(snaps);
  if (!current()) return;
  if (S.thumbCache.size > 3000) S.thumbCache.clear();
  const width = Math.min(160, (interval / (end - start)) * timelineWidth());
  thumbs.replaceChildren(...slots.map(({ center, image }) => {
    const ok = Boolean(image.src);
    const tile = el('div', {
      class: `tile ${ok ? 'image' : 'blank'}`,
      'data-ts': image.ts, 'data-center': center, 'data-w': width,
      'data-state': ok ? 'image' : 'blank',
      title: `${fmtDateTime(image.ts, 'ms')}${image.error ? ` · ${image.error}` : ''}`,
    });
    if (ok) {
      tile.append(el('img', { src: image.src, alt: fmtDateTime(image.ts, 'ms'),
        draggable: false }));
    }
    return tile;
  }));
  thumbs.dataset.interval = interval;
  thumbs.dataset.ready = String(generation);
  scheduleRender();
}

function cacheImage(image) {
  const ts = Math.round(image.TimeStamp * 1000);
  const entry = image.ImageContent
    ? { src: `data:image/jpeg;base64,${image.ImageContent}`, error: null }
    : { src: null, error: image.Error || 'NO_MEDIA' };
  // Recent time may still be filling in: only remember its images, not its absence.
  if (entry.src || ts < Date.now() - 120_000) S.thumbCache.set(String(ts), entry);
  return entry;
}

/* -- timeline interaction: drag to pan, wheel/pinch/buttons to zoom, click to play -- */

function setupTimeline() {
  const timeline = $('#timeline');
  const pointers = new Map();
  let drag = null;
  let pinch = null;
  const localX = (event) => event.clientX - timeline.getBoundingClientRect().left;

  timeline.addEventListener('pointerdown', (event) => {
    if (event.button !== 0 && event.pointerType === 'mouse') return;
    timeline.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, localX(event));
    if (pointers.size === 1) {
      drag = { x0: localX(event), view: { ...S.view }, moved: false,
        tile: event.target.closest('.tile') };
    } else if (pointers.size === 2) {
      drag = null;
      const [a, b] = [...pointers.values()];
      pinch = { distance: Math.max(10, Math.abs(a - b)), anchor: timeAt((a + b) / 2),
        view: { ...S.view } };
    }
  });

  timeline.addEventListener('pointermove', (event) => {
    const x = localX(event);
    showHover(x);
    if (!pointers.has(event.pointerId)) return;
    pointers.set(event.pointerId, x);
    if (pinch && pointers.size >= 2) {
      const [a, b] = [...pointers.values()];
      const factor = pinch.distance / Math.max(10, Math.abs(a - b));
      const range = (pinch.view.end - pinch.view.start) * factor;
      const ratio = (a + b) / 2 / timelineWidth();
      setView(pinch.anchor - ratio * range, pinch.anchor - ratio * range + range);
    } else if (drag) {
      const dx = x - drag.x0;
      if (Math.abs(dx) > 5) drag.moved = true;
      if (drag.moved) {
        timeline.classList.add('dragging');
        const shift = (-dx / timelineWidth()) * (drag.view.end - drag.view.start);
        setView(drag.view.start + shift, drag.view.end + shift);
      }
    }
  });

  const release = (event) => {
    if (!pointers.has(event.pointerId)) return;
    pointers.delete(event.pointerId);
    timeline.classList.remove('dragging');
    if (drag && !drag.moved && event.type === 'pointerup') {
      const t = drag.tile ? Number(drag.tile.dataset.ts) : timeAt(localX(event));
      play('LIVE_REPLAY', t);
    }
    drag = null;
    if (pointers.size < 2) pinch = null;
  };
  timeline.addEventListener('pointerup', release);
  timeline.addEventListener('pointercancel', release);
  timeline.addEventListener('pointerleave', () => { $('#hover').hidden = true; });

  timeline.addEventListener('wheel', (event) => {
    event.preventDefault();
    const range = S.view.end - S.view.start;
    if (Math.abs(event.deltaX) > Math.abs(event.deltaY)) {
      pan((event.deltaX / timelineWidth()) * range);
    } else {
      const delta = event.deltaMode === 1 ? event.deltaY * 30 : event.deltaY;
      zoomAt(Math.exp(delta * 0.002), timeAt(localX(event)));
    }
  }, { passive: false });

  timeline.addEventListener('keydown', (event) => {
    const range = S.view.end - S.view.start;
    const actions = {
      ArrowLeft: () => pan(-range * 0.1), ArrowRight: () => pan(range * 0.1),
      '+': () => zoomAt(0.5), '=': () => zoomAt(0.5), '-': () => zoomAt(2),
      Enter: () => play('LIVE_REPLAY', (S.view.start + S.view.end) / 2),
    };
    if (actions[event.key]) {
      event.preventDefault();
      actions[event.key]();
    }
  });

  $('#zoom-in').addEventListener('click', () => zoomAt(0.5));
  $('#zoom-out').addEventListener('click', () => zoomAt(2));
  $('#zoom-fit').addEventListener('click', fitView);
  $('#play-live').addEventListener('click', () => play('LIVE'));
  $('#close-player').addEventListener('click', stopPlayer);
  let lastWidth = 0;
  new ResizeObserver(() => {
    const width = timelineWidth();
    if (Math.abs(width - lastWidth) < 1) return;
    lastWidth = width;
    scheduleRender();
    if (S.stream && !$('#stream-view').hidden) scheduleLoad();
  }).observe(timeline);
}

function showHover(x) {
  const hover = $('#hover');
  if (!S.stream) return;
  hover.hidden = false;
  hover.style.left = `${x}px`;
  hover.textContent = fmtClock(timeAt(x), S.view.end - S.view.start < 10_000 ? 'ms' : 's');
}

/* -- the player (HLS through hls.js, or native HLS on Safari/iOS) -- */

function stopPlayer() {
  S.hls?.destroy();
  S.hls = null;
  S.playBase = null;
  const video = $('#video');
  video.pause();
  video.removeAttribute('src');
  video.load();
  $('#player').hidden = true;
  $('#playhead').hidden = true;
  delete $('#player').dataset.mode;
}

/** The session URL, on this page's origin: the viewer only talks to its own server. */
function sameOrigin(url) {
  const parsed = new URL(url, location.href);
  return `${location.origin}${parsed.pathname}${parsed.search}`;
}

async function play(mode, at) {
  const stream = S.stream;
  showError(null);
  const params = { StreamName: stream, PlaybackMode: mode, ContainerFormat: 'FRAGMENTED_MP4',
    DiscontinuityMode: 'ALWAYS', DisplayFragmentTimestamp: 'ALWAYS', Expires: 3600 };
  let offset = 0;
  let base = null;
  // Producer time everywhere, so the playhead (EXT-X-PROGRAM-DATE-TIME) matches the timeline.
  params.HLSFragmentSelector = { FragmentSelectorType: 'PRODUCER_TIMESTAMP' };
  if (mode === 'LIVE_REPLAY') {
    // Sessions start at a fragment boundary: start at the fragment on screen, then seek.
    const fragment = fragmentFor(at);
    if (!fragment) {
      $('#stream-status').textContent = `No archived media at or after ${fmtDateTime(at)}.`;
      return;
    }
    params.HLSFragmentSelector = { FragmentSelectorType: 'PRODUCER_TIMESTAMP',
      TimestampRange: { StartTimestamp: fragment.start / 1000 } };
    offset = Math.max(0, (at - fragment.start) / 1000);
    base = fragment.start;
  }
  stopPlayer();
  const player = $('#player');
  const video = $('#video');
  player.hidden = false;
  player.dataset.mode = mode;
  const badge = $('#player-mode');
  badge.textContent = mode === 'LIVE' ? 'LIVE' : 'REPLAY';
  badge.classList.toggle('live', mode === 'LIVE');
  $('#player-time').textContent = 'Starting…';
  let url;
  try {
    ({ HLSStreamingSessionURL: url } = await api('/getHLSStreamingSessionURL', params,
      { signal: S.abort.signal }));
  } catch (error) {
    if (S.stream === stream) stopPlayer();
    showError(error);
    return;
  }
  if (S.stream !== stream) return;
  S.playBase = base;
  url = sameOrigin(url);
  player.dataset.url = url;
  video.muted = true;  // lets it start without another tap on phones
  if (window.Hls && window.Hls.isSupported()) {
    const hls = new window.Hls({ startPosition: offset, backBufferLength: 90 });
    S.hls = hls;
    let recoveries = 0;
    hls.on(window.Hls.Events.MANIFEST_PARSED, () => { video.play().catch(() => {}); });
    hls.on(window.Hls.Events.ERROR, (_, data) => {
      if (!data.fatal || S.hls !== hls) return;
      if (recoveries++ < 3 && data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
      } else if (recoveries < 4 && data.type === window.Hls.ErrorTypes.NETWORK_ERROR) {
        hls.startLoad();
      } else {
        const status = data.response?.code ? ` (HTTP ${data.response.code})` : '';
        showError(new ApiError('PlaybackError', `${data.details}${status}`));
        hls.destroy();
        if (S.hls === hls) S.hls = null;
      }
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = url;
    video.addEventListener('loadedmetadata', () => {
      if (offset) video.currentTime = offset;
      video.play().catch(() => {});
    }, { once: true });
  } else {
    showError(new ApiError('PlaybackError', 'This browser cannot play HLS.'));
  }
}

/** The producer time on screen in the player, when known. */
function playingTime() {
  const video = $('#video');
  if (S.hls) {
    const date = S.hls.playingDate;
    if (date) return date.getTime();
  } else if (typeof video.getStartDate === 'function') {
    const start = video.getStartDate().getTime();
    if (Number.isFinite(start)) return start + video.currentTime * 1000;
  }
  return S.playBase !== null && video.currentTime ? S.playBase + video.currentTime * 1000 : null;
}

function renderPlayhead() {
  const t = $('#player').hidden ? null : playingTime();
  const playhead = $('#playhead');
  if (t === null) {
    playhead.hidden = true;
    return;
  }
  $('#player-time').textContent = fmtDateTime(t, 'ms');
  playhead.hidden = t < S.view.start || t > S.view.end;
  playhead.style.left = `${xOf(t)}px`;
}

/* ------------------------------------------------------------------------------------ */
/* Dialogs: credentials, save images, save clip */

function askForCredentials(error) {
  const dialog = $('#credentials-dialog');
  if (dialog.open) return;
  const reason = $('#credentials-reason');
  reason.textContent = (loadCredentials()
    ? `The server refused these keys (${error.code}: ${error.message.replace(/\.$/, '')}).`
    : 'This server requires AWS Signature Version 4.') +
    ' The keys stay in this tab (sessionStorage).';
  const saved = loadCredentials();
  const form = $('#credentials-form');
  if (saved) {
    form.accessKeyId.value = saved.accessKeyId;
    form.region.value = saved.region || 'us-east-1';
  }
  dialog.showModal();
}

function setupCredentials() {
  const dialog = $('#credentials-dialog');
  const form = $('#credentials-form');
  $('#credentials-button').addEventListener('click', () => {
    const saved = loadCredentials();
    $('#credentials-reason').textContent = 'Keys for servers started with --access-key-id. ' +
      'They stay in this tab (sessionStorage).';
    if (saved) {
      form.accessKeyId.value = saved.accessKeyId;
      form.region.value = saved.region || 'us-east-1';
    }
    dialog.showModal();
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(CREDENTIALS_KEY, JSON.stringify({
      accessKeyId: form.accessKeyId.value.trim(),
      secretAccessKey: form.secretAccessKey.value,
      region: form.region.value.trim() || 'us-east-1',
    }));
    form.secretAccessKey.value = '';
    dialog.close();
    summaries.clear();
    route();
  });
  $('#credentials-cancel').addEventListener('click', () => dialog.close());
  $('#credentials-forget').addEventListener('click', () => {
    sessionStorage.removeItem(CREDENTIALS_KEY);
    form.reset();
    dialog.close();
  });
}

/** The dialog's default range: what is visible, within the archive. */
function defaultRange() {
  let { start, end } = S.view;
  if (S.extent) {
    start = Math.max(start, S.extent.start);
    end = Math.min(end, S.extent.end);
    if (end <= start) ({ start, end } = S.extent);
  }
  return { start: Math.round(start), end: Math.round(end) };
}

const MAX_ZIP_IMAGES = 5000;
let imagesJob = null;

function setupImagesDialog() {
  const dialog = $('#images-dialog');
  const form = $('#images-form');
  const estimate = () => {
    const start = fromLocalInput(form.start.value);
    const end = fromLocalInput(form.end.value);
    const interval = Math.round(Number(form.interval.value) * 1000);
    const text = $('#images-estimate');
    if (!(end >= start) || !(interval >= 1)) {
      text.textContent = 'Choose a range that ends after it starts, and an interval.';
      return 0;
    }
    const count = Math.floor((end - start) / interval) + 1;
    text.textContent = `Times are local (${zoneName(start)}). ` +
      `${count} sample time${count === 1 ? '' : 's'} ` +
      `(${fmtDuration(end - start)} every ${fmtDuration(interval)}); times with no media are skipped.` +
      (interval < minSamplingInterval ? ` The server's minimum interval is ${minSamplingInterval} ms.` : '') +
      (count > MAX_ZIP_IMAGES ? ` At most ${MAX_ZIP_IMAGES} per zip: widen the interval.` : '');
    return count;
  };
  form.addEventListener('input', estimate);
  form.format.addEventListener('change', () => {
    form.quality.disabled = form.format.value !== 'JPEG';
  });
  $('#save-images').addEventListener('click', () => {
    const { start, end } = defaultRange();
    form.start.value = toLocalInput(start);
    form.end.value = toLocalInput(end);
    const interval = Math.max(minSamplingInterval, niceInterval((end - start) / 50));
    form.interval.value = String(interval / 1000);
    $('#images-status').textContent = '';
    $('#images-progress').hidden = true;
    $('#images-cancel').textContent = 'Cancel';
    delete dialog.dataset.saved;
    estimate();
    dialog.showModal();
  });
  $('#images-cancel').addEventListener('click', () => {
    imagesJob?.abort();
    dialog.close();
  });
  dialog.addEventListener('close', () => imagesJob?.abort());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const count = estimate();
    if (!count || count > MAX_ZIP_IMAGES) return;
    imagesJob = new AbortController();
    const go = $('#images-go');
    go.disabled = true;
    try {
      await saveImages(form, count, imagesJob.signal);
    } catch (error) {
      if (error.name !== 'AbortError') {
        $('#images-status').textContent = `${error.code || 'Error'}: ${error.message}`;
      }
    } finally {
      go.disabled = false;
      imagesJob = null;
    }
  });
}

function niceInterval(ms) {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 3e5, 6e5,
    18e5, 36e5];
  return steps.find((s) => s >= ms) || steps.at(-1);
}

async function saveImages(form, count, signal) {
  const stream = S.stream;
  const start = fromLocalInput(form.start.value);
  const end = fromLocalInput(form.end.value);
  const format = form.format.value;
  const params = {
    StreamName: stream, ImageSelectorType: 'PRODUCER_TIMESTAMP',
    StartTimestamp: start / 1000, EndTimestamp: end / 1000,
    SamplingInterval: Math.round(Number(form.interval.value) * 1000), Format: format,
    MaxResults: 100,
  };
  if (form.width.value) params.WidthPixels = Number(form.width.value);
  if (form.height.value) params.HeightPixels = Number(form.height.value);
  if (format === 'JPEG' && form.quality.value) {
    params.FormatConfig = { JPEGQuality: String(Number(form.quality.value)) };
  }
  const progress = $('#images-progress');
  const status = $('#images-status');
  progress.hidden = false;
  progress.max = count;
  progress.value = 0;
  const files = [];
  let seen = 0;
  let skipped = 0;
  let token = null;
  const extension = format === 'PNG' ? 'png' : 'jpg';
  do {
    const { page } = await getImages(token ? { ...params, NextToken: token } : params, { signal });
    for (const image of page.Images || []) {
      seen++;
      const ts = Math.round(image.TimeStamp * 1000);
      if (!image.ImageContent) { skipped++; continue; }
      files.push({ name: `${stream}_${fileStamp(ts)}.${extension}`,
        data: base64ToBytes(image.ImageContent), time: ts });
    }
    progress.value = seen;
    status.textContent = `${seen} / ${count} sample times, ${files.length} images`;
    token = page.NextToken;
  } while (token);
  if (!files.length) {
    status.textContent = `No images: all ${seen} sample times have no media.`;
    return;
  }
  download(makeZip(files), `${stream}_${fileStamp(start)}_${fileStamp(end)}.zip`);
  status.textContent = `Saved ${files.length} image${files.length === 1 ? '' : 's'}` +
    (skipped ? ` (${skipped} sample time${skipped === 1 ? '' : 's'} without media skipped)` : '') + '.';
  $('#images-dialog').dataset.saved = String(files.length);
  $('#images-cancel').textContent = 'Close';
}

let clipJob = null;

function setupClipDialog() {
  const dialog = $('#clip-dialog');
  const form = $('#clip-form');
  $('#save-clip').addEventListener('click', () => {
    const { start, end } = defaultRange();
    form.start.value = toLocalInput(start);
    form.end.value = toLocalInput(end);
    $('#clip-status').textContent = '';
    $('#clip-hint').textContent = `Times are local (${zoneName(start)}). An MP4 of the ` +
      'archived fragments that start in this range (GetClip).';
    $('#clip-cancel').textContent = 'Cancel';
    dialog.showModal();
  });
  $('#clip-cancel').addEventListener('click', () => {
    clipJob?.abort();
    dialog.close();
  });
  dialog.addEventListener('close', () => clipJob?.abort());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const start = fromLocalInput(form.start.value);
    const end = fromLocalInput(form.end.value);
    const status = $('#clip-status');
    if (!(end > start)) {
      status.textContent = 'Choose a range that ends after it starts.';
      return;
    }
    clipJob = new AbortController();
    const go = $('#clip-go');
    go.disabled = true;
    status.textContent = 'Building the clip…';
    try {
      const response = await api('/getClip', {
        StreamName: S.stream,
        ClipFragmentSelector: timeRange('PRODUCER_TIMESTAMP', start, end),
      }, { signal: clipJob.signal, raw: true });
      const blob = await response.blob();
      download(new Blob([blob], { type: 'video/mp4' }),
        `${S.stream}_${fileStamp(start)}_${fileStamp(end)}.mp4`);
      status.textContent = `Saved ${fmtBytes(blob.size)}.`;
      $('#clip-cancel').textContent = 'Close';
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = `${error.code || 'Error'}: ${error.message}`;
    } finally {
      go.disabled = false;
      clipJob = null;
    }
  });
}

/* ------------------------------------------------------------------------------------ */
/* Routing */

function route() {
  showError(null);
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, queryString] = hash.split('?');
  const query = new URLSearchParams(queryString || '');
  $('#list-view').hidden = true;
  $('#stream-view').hidden = true;
  delete $('#list-view').dataset.ready;
  delete $('#stream-view').dataset.ready;
  const match = /^\/stream\/(.+)$/.exec(path);
  if (match) {
    showStream(decodeURIComponent(match[1]), query);
  } else {
    if (S.stream) resetStream(null);
    showList();
  }
}

function main() {
  setupCredentials();
  setupTimeline();
  setupImagesDialog();
  setupClipDialog();
  $('#stream-filter').addEventListener('input', filterList);
  $('#refresh-list').addEventListener('click', () => { summaries.clear(); showList(); });
  const video = $('#video');
  for (const name of ['timeupdate', 'seeked', 'playing']) video.addEventListener(name, renderPlayhead);
  window.addEventListener('hashchange', route);
  // A view that reaches the present refreshes itself while new fragments arrive.
  setInterval(() => {
    if (S.stream && !$('#stream-view').hidden && !document.hidden &&
        S.view.end > Date.now() - 60_000) scheduleLoad();
  }, 5000);
  route();
}

main();
