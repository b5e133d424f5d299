/* The player: HLS sessions (GetHLSStreamingSessionURL) through hls.js, or native HLS on
 * Safari/iOS, and the playhead that shows on the timeline what is on screen. */

import { api, ApiError } from './api.js';
import { $, showError } from './dom.js';
import { fmtDateTime } from './format.js';
import { fragmentFor, S, xOf } from './state.js';

let hls = null;         // the hls.js instance playing, if any
let playBase = null;    // producer time of a replay's first fragment: a fallback playhead

export function stopPlayer() {
  hls?.destroy();
  hls = null;
  playBase = null;
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

/** mode: 'LIVE', or 'LIVE_REPLAY' from producer time `at` (ms). */
export async function play(mode, at) {
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
    params.HLSFragmentSelector.TimestampRange = { StartTimestamp: fragment.start / 1000 };
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
  playBase = base;
  url = sameOrigin(url);
  player.dataset.url = url;
  video.muted = true;  // lets it start without another tap on phones
  const Hls = window.Hls;  // the vendored hls.js, a classic script
  if (Hls && Hls.isSupported()) {
    const instance = new Hls({ startPosition: offset, backBufferLength: 90 });
    hls = instance;
    let recoveries = 0;
    instance.on(Hls.Events.MANIFEST_PARSED, () => { video.play().catch(() => {}); });
    instance.on(Hls.Events.ERROR, (_, data) => {
      if (!data.fatal || hls !== instance) return;
      if (recoveries++ < 3 && data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        instance.recoverMediaError();
      } else if (recoveries < 4 && data.type === Hls.ErrorTypes.NETWORK_ERROR) {
        instance.startLoad();
      } else {
        const status = data.response?.code ? ` (HTTP ${data.response.code})` : '';
        showError(new ApiError('PlaybackError', `${data.details}${status}`));
        instance.destroy();
        if (hls === instance) hls = null;
      }
    });
    instance.loadSource(url);
    instance.attachMedia(video);
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
  if (hls) {
    const date = hls.playingDate;
    if (date) return date.getTime();
  } else if (typeof video.getStartDate === 'function') {
    const start = video.getStartDate().getTime();
    if (Number.isFinite(start)) return start + video.currentTime * 1000;
  }
  return playBase !== null && video.currentTime ? playBase + video.currentTime * 1000 : null;
}

export function renderPlayhead() {
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

export function setupPlayer() {
  $('#play-live').addEventListener('click', () => play('LIVE'));
  $('#close-player').addEventListener('click', stopPlayer);
  const video = $('#video');
  for (const name of ['timeupdate', 'seeked', 'playing']) video.addEventListener(name, renderPlayhead);
}
