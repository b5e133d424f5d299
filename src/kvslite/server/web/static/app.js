/* kvslite web viewer: the entry module, which wires the views together and routes.
 *
 * Plain ES modules, no build step. The viewer uses only the public KVS API of the origin it
 * was loaded from, signed with SigV4 when the user gave keys, exactly like any other client
 * (see api.js). Views:
 *   #/                                  the list of streams (streams.js)
 *   #/stream/<name>?start=<ms>&end=<ms> one stream: timeline, thumbnails, player, downloads,
 *                                       details (stream.js, timeline.js, player.js,
 *                                       downloads.js, details.js)
 *   #/channel/<name>                    one signaling channel, live over WebRTC (live.js);
 *                                       the list of channels sits below the streams
 *                                       (channels.js)
 */

import { setupChannels, showChannels } from './channels.js';
import { setupCredentials } from './credentials.js';
import { $, showError } from './dom.js';
import { setupDownloads } from './downloads.js';
import { setupLive, showChannel, stopLive } from './live.js';
import { scheduleLoad } from './loader.js';
import { setupPlayer } from './player.js';
import { S, streamShown } from './state.js';
import { resetStream, showStream } from './stream.js';
import { setupList, showList } from './streams.js';
import { clearSummaries } from './summaries.js';
import { setupTimeline } from './timeline.js';

function route() {
  showError(null);
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, queryString] = hash.split('?');
  const query = new URLSearchParams(queryString || '');
  $('#list-view').hidden = true;
  $('#stream-view').hidden = true;
  $('#channel-view').hidden = true;
  delete $('#list-view').dataset.ready;
  delete $('#stream-view').dataset.ready;
  delete $('#channel-view').dataset.ready;
  const match = /^\/stream\/(.+)$/.exec(path);
  const channel = /^\/channel\/(.+)$/.exec(path);
  if (!channel) stopLive();
  if (match) {
    showStream(decodeURIComponent(match[1]), query);
  } else if (channel) {
    if (S.stream) resetStream(null);
    showChannel(decodeURIComponent(channel[1]));
  } else {
    if (S.stream) resetStream(null);
    showList();
    showChannels();
  }
}

function main() {
  // New keys: whatever the old ones could not see is asked for again.
  setupCredentials(() => { clearSummaries(); route(); });
  setupTimeline();
  setupPlayer();
  setupDownloads();
  setupList();
  setupChannels();
  setupLive();
  window.addEventListener('hashchange', route);
  // A view that reaches the present refreshes itself while new fragments arrive.
  setInterval(() => {
    if (streamShown() && !document.hidden && S.view.end > Date.now() - 60_000) scheduleLoad();
  }, 5000);
  route();
}

main();
