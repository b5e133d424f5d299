/* Loading what the visible range needs: its fragments (ListFragments, remembered per time
 * interval so panning back costs nothing) and its thumbnails. */

import { listFragments, timeRange } from './api.js';
import { $, isDenied, showDenied, showError } from './dom.js';
import { MAX_FRAGMENT_SPAN_MS } from './limits.js';
import { scheduleRender } from './render.js';
import { S, streamShown } from './state.js';
import { loadThumbs, showThumbsDenied } from './thumbnails.js';

const SPAN_TOLERANCE_MS = 250;        // closer fragments are drawn as one span

let loadTimer = null;
/** Loads the view once it has stayed put for 200 ms, and records it in the URL. */
export function scheduleLoad() {
  clearTimeout(loadTimer);
  const timeline = $('#timeline');
  timeline.dataset.busy = 'true';  // until this view's fragments and thumbnails are in
  loadTimer = setTimeout(() => {
    loadTimer = null;
    if (!streamShown()) {
      delete timeline.dataset.busy;
      return;
    }
    const generation = ++S.generation;
    // A refusal by policy is said where the data would be; the rest of the page goes on.
    const fragments = loadFragments(generation).catch((error) => {
      if (isDenied(error)) showDenied($('#stream-status'), error);
      else showError(error);
    });
    const thumbs = loadThumbs(generation, fragments).catch((error) => {
      if (isDenied(error)) showThumbsDenied(generation, error);
      else showError(error);
    });
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
  const from = S.view.start - MAX_FRAGMENT_SPAN_MS;  // a fragment covering the start began here at most
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
