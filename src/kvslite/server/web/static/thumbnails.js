/* Thumbnails along the timeline, from GetImages. */

import { getImages, minSamplingInterval } from './api.js';
import { $, el, errorText } from './dom.js';
import { fmtDateTime } from './format.js';
import { scheduleRender } from './render.js';
import { S, timelineWidth } from './state.js';

const TILE_PX = 160;  // the width asked for; tiles are drawn at most this wide
const toMs = (seconds) => Math.round(seconds * 1000);

function tileTarget() {
  return timelineWidth() < 520 ? 76 : 120;
}

/* Thumbnails: the visible range is cut into slots of `interval` ms, aligned to multiples of
 * the interval so that panning reuses what is cached. One GetImages call samples every
 * slot's middle; a slot whose middle falls in a gap but which holds some media gets a second
 * call for its first archived instant, so short recordings still show up when zoomed out.
 * `fragmentsLoaded` settles once the spans are known (the gap check needs them). */
export async function loadThumbs(generation, fragmentsLoaded) {
  const stream = S.stream;
  const { start, end } = S.view;
  const thumbs = $('#thumbs');
  const signal = S.abort.signal;
  const current = () => generation === S.generation && S.stream === stream;
  const count = Math.max(1, Math.round(timelineWidth() / tileTarget()));
  const interval = Math.max(minSamplingInterval, Math.floor((end - start) / count), 1);
  const slots = [];
  for (let k = Math.floor(start / interval); k * interval < end; k++) {
    const from = k * interval;
    slots.push({ from, to: from + interval, center: from + Math.floor(interval / 2) });
  }
  delete thumbs.dataset.ready;
  delete thumbs.dataset.state;

  const fresh = new Map();  // this call's answers, including those too recent to cache
  const missing = slots.filter((slot) => !S.thumbCache.has(String(slot.center)));
  if (missing.length) {
    const params = {
      StreamName: stream, ImageSelectorType: 'PRODUCER_TIMESTAMP',
      StartTimestamp: slots[0].center / 1000, EndTimestamp: slots.at(-1).center / 1000,
      SamplingInterval: interval, Format: 'JPEG', WidthPixels: TILE_PX, MaxResults: 100,
    };
    let token = null;
    do {
      const page = await getImages(token ? { ...params, NextToken: token } : params, { signal });
      if (!current()) return;
      for (const image of page.Images || []) {
        fresh.set(String(toMs(image.TimeStamp)), cacheImage(image));
      }
      token = page.NextToken;
    } while (token);
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
      EndTimestamp: at / 1000, SamplingInterval: minSamplingInterval,
      Format: 'JPEG', WidthPixels: TILE_PX,
    }, { signal }).then((page) => {
      const [image] = page.Images || [];
      if (image) {
        const entry = cacheImage(image);
        if (entry.src) slot.image = { ts: toMs(image.TimeStamp), ...entry };
      }
    }));
  }
  await Promise.all(snaps);
  if (!current()) return;
  if (S.thumbCache.size > 3000) S.thumbCache.clear();
  const width = Math.min(TILE_PX, (interval / (end - start)) * timelineWidth());
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
  const ts = toMs(image.TimeStamp);
  const entry = image.ImageContent
    ? { src: `data:image/jpeg;base64,${image.ImageContent}`, error: null }
    : { src: null, error: image.Error || 'NO_MEDIA' };
  // Recent time may still be filling in: only remember its images, not its absence.
  if (entry.src || ts < Date.now() - 120_000) S.thumbCache.set(String(ts), entry);
  return entry;
}

/** GetImages refused by policy: the row of thumbnails says so instead. */
export function showThumbsDenied(generation, error) {
  if (generation !== S.generation) return;
  const thumbs = $('#thumbs');
  thumbs.replaceChildren(el('p', { class: 'denied', text: errorText(error) }));
  thumbs.dataset.state = 'denied';
  thumbs.dataset.ready = String(generation);
}
