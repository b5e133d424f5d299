/* The stream on screen: what is known of its archive, the visible range, and the mapping
 * between times and timeline pixels. Shared by the timeline, the player and the dialogs. */

import { $ } from './dom.js';

export const S = {
  stream: null,
  view: { start: 0, end: 1 },
  extent: null,               // {start, end} of the archive, producer time
  fragments: new Map(),       // number -> fragment
  sorted: [],                 // fragments by start
  spans: [],                  // merged [start, end)
  loaded: [],                 // producer-time intervals whose fragments are all known
  unknown: null,              // [start, end) not loaded because a query was cut short
  thumbCache: new Map(),      // `${ts}` -> {src, error}
  generation: 0,              // bumped by each load of the view; older answers are dropped
  abort: null,                // aborts the current stream's requests when it changes
};

/** Whether the stream view is on screen (and not the list). */
export const streamShown = () => Boolean(S.stream) && !$('#stream-view').hidden;

export const timelineWidth = () => $('#timeline').clientWidth || 1;
export const xOf = (t) => ((t - S.view.start) / (S.view.end - S.view.start)) * timelineWidth();
export const timeAt = (x) => S.view.start + (x / timelineWidth()) * (S.view.end - S.view.start);

/** The fragment on screen at t, or else the first one starting after t. */
export function fragmentFor(t) {
  let after = null;
  for (const f of S.sorted) {
    if (f.start <= t && t < f.end) return f;
    if (f.start > t && (!after || f.start < after.start)) after = f;
  }
  return after;
}

/** The dialogs' default range: what is visible, within the archive. */
export function defaultRange() {
  let { start, end } = S.view;
  if (S.extent) {
    start = Math.max(start, S.extent.start);
    end = Math.min(end, S.extent.end);
    if (end <= start) ({ start, end } = S.extent);
  }
  return { start: Math.round(start), end: Math.round(end) };
}
