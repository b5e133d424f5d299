/* One stream's page (#/stream/<name>?start=<ms>&end=<ms>): opening it, and forgetting the
 * previous stream's state when it changes. */

import { api } from './api.js';
import { clearDetails, loadEventConfigs, showStreamInfo } from './details.js';
import { $, el, isDenied, showDenied, showError } from './dom.js';
import { stopPlayer } from './player.js';
import { S } from './state.js';
import { streamSummary } from './summaries.js';
import { fitView, setView } from './timeline.js';

export function resetStream(name) {
  S.abort?.abort();
  stopPlayer();
  Object.assign(S, {
    stream: name, extent: null, fragments: new Map(), sorted: [], spans: [], loaded: [],
    unknown: null, thumbCache: new Map(), generation: S.generation + 1,
    abort: new AbortController(),
  });
  $('#thumbs').replaceChildren();
  $('#track').replaceChildren();
  $('#axis').replaceChildren();
  $('#stream-status').textContent = '';
  delete $('#stream-status').dataset.state;
  clearDetails();
  delete $('#thumbs').dataset.ready;
  delete $('#track').dataset.ready;
  delete $('#timeline').dataset.busy;
}

/** query: the hash's parameters; start and end (ms) restore a view, else it fits the archive. */
export async function showStream(name, query) {
  const view = $('#stream-view');
  view.hidden = false;
  document.title = `${name} · kvslite`;
  $('#crumbs').replaceChildren(el('a', { href: '#/', text: 'Streams' }), ' / ', name);
  if (S.stream !== name) resetStream(name);
  const signal = S.abort.signal;
  loadEventConfigs(name, signal);  // meanwhile, each shown when it arrives; never an error
  try {
    // DescribeStream: a stream that does not exist is an error, not an empty timeline.
    // Both asked at once; DescribeStream's refusal, if any, is the one reported.
    const described = api('/describeStream', { StreamName: name }, { signal });
    const summarized = streamSummary(name);
    summarized.catch(() => {});  // reported below, once DescribeStream has answered
    const description = await described;
    const summary = await summarized;
    if (S.stream !== name) return;
    showStreamInfo(description.StreamInfo);
    if (summary.noRetention) {
      $('#stream-status').textContent = 'This stream keeps no data (retention 0): nothing to show.';
    }
    if (summary.count && Number.isFinite(summary.first) && Number.isFinite(summary.last)) {
      S.extent = { start: summary.first, end: summary.last };
    }
  } catch (error) {
    if (S.stream !== name) return;
    if (isDenied(error)) showDenied($('#stream-status'), error);  // in the timeline's stead
    else showError(error);
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

