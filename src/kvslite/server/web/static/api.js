/* The KVS API client: POST /<operation> with a JSON body on this page's origin (rest-json),
 * signed with SigV4 when the user gave keys, like any other client. Plus the few calls the
 * viewer needs helpers for: paged ListFragments and throttled, retried GetImages. */

import { askForCredentials, loadCredentials } from './credentials.js';
import { MIN_SAMPLING_INTERVAL_MS } from './limits.js';
import { signRequest } from './sigv4.js';

// Errors that new keys can cure (the dialog asks for them); AccessDeniedException is not
// one: the keys are good, their policy does not allow the action, and the view says so.
const AUTH_ERRORS = new Set(['MissingAuthenticationTokenException', 'UnrecognizedClientException',
  'InvalidSignatureException', 'IncompleteSignatureException', 'ExpiredTokenException']);

export class ApiError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
}

/** POST /<operation> (or a URL: the signaling HTTPS endpoint) with a JSON body; the parsed
 * JSON, or the Response itself with raw. */
export async function api(path, params = {}, { signal, raw = false } = {}) {
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
export function limiter(n) {
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
 * setting, which the server hands the page in limits.js. */
export const minSamplingInterval = MIN_SAMPLING_INTERVAL_MS;

/** One GetImages call, retried when the server is busy (ClientLimitExceededException). */
export async function getImages(params, { signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await imageSlots(() => api('/getImages', params, { signal }));
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      if (error.code === 'ClientLimitExceededException' && attempt < 6) {
        await sleep(150 * 2 ** attempt, signal);
        continue;
      }
      throw error;
    }
  }
}

/** Every fragment of a ListFragments query, at most `maxPages` pages of 1000. */
export async function listFragments(stream, selector, { maxPages = 10, signal } = {}) {
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

/** A FragmentSelector of `type` for [start, end], in ms. */
export const timeRange = (type, start, end) => ({
  FragmentSelectorType: type,
  TimestampRange: { StartTimestamp: start / 1000, EndTimestamp: end / 1000 },
});
