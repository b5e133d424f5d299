/* Stream summaries for the list and the stream view: size and newest fragment, from a
 * bounded ListFragments walk, cached for a few seconds. */

import { limiter, listFragments, timeRange } from './api.js';

const SUMMARY_PAGES = 5;  // 5000 fragments; past that the size is shown as a lower bound
const summaries = new Map();  // name -> {at, promise}
const summarySlots = limiter(4);

/** {count, bytes, complete, first, last, lastServer} (ms), or {noRetention: true}. */
export function streamSummary(name, { maxAgeMs = 30_000 } = {}) {
  const cached = summaries.get(name);
  if (cached && Date.now() - cached.at < maxAgeMs) return cached.promise;
  const promise = summarySlots(() => computeSummary(name));
  summaries.set(name, { at: Date.now(), promise });
  promise.catch(() => summaries.delete(name));
  return promise;
}

export const clearSummaries = () => summaries.clear();

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
