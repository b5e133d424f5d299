/* The timeline's view: which range is visible, and how the user moves it. Drag to pan,
 * wheel/pinch/keys/buttons to zoom, click (or tap a thumbnail) to play from there. */

import { $ } from './dom.js';
import { fmtClock } from './format.js';
import { scheduleLoad } from './loader.js';
import { play } from './player.js';
import { scheduleRender } from './render.js';
import { S, streamShown, timeAt, timelineWidth } from './state.js';

const MIN_RANGE_MS = 200;
const MAX_RANGE_MS = 90 * 86_400_000;
const clampRange = (ms) => Math.min(MAX_RANGE_MS, Math.max(MIN_RANGE_MS, ms));

/** Shows the whole archive, or its last hour when it is long. */
export function fitView() {
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

export function setView(start, end) {
  const range = clampRange(end - start);
  const middle = (start + end) / 2;
  start = Math.round(middle - range / 2);
  end = start + Math.round(range);
  S.view = { start, end };
  scheduleRender();
  scheduleLoad();
}

function zoomAt(factor, anchor = (S.view.start + S.view.end) / 2) {
  const { start, end } = S.view;
  const range = clampRange((end - start) * factor);
  const ratio = (anchor - start) / (end - start);
  setView(anchor - ratio * range, anchor - ratio * range + range);
}

function pan(deltaMs) {
  setView(S.view.start + deltaMs, S.view.end + deltaMs);
}

function showHover(x) {
  const hover = $('#hover');
  if (!S.stream) return;
  hover.hidden = false;
  hover.style.left = `${x}px`;
  hover.textContent = fmtClock(timeAt(x), S.view.end - S.view.start < 10_000 ? 'ms' : 's');
}

export function setupTimeline() {
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
  let lastWidth = 0;
  new ResizeObserver(() => {
    const width = timelineWidth();
    if (Math.abs(width - lastWidth) < 1) return;
    lastWidth = width;
    scheduleRender();
    if (streamShown()) scheduleLoad();
  }).observe(timeline);
}
