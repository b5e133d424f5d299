/* Drawing the timeline for the visible range: the time axis, the archived spans, the
 * thumbnails' positions and the playhead. At most once a frame. */

import { $, el } from './dom.js';
import { fmtClock, fmtDate, fmtDateTime, fmtDuration } from './format.js';
import { renderPlayhead } from './player.js';
import { S, streamShown, timelineWidth, xOf } from './state.js';

const TICK_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4,
  3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5];

let renderQueued = false;
export function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function render() {
  if (!streamShown()) return;
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
