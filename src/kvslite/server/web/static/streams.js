/* The list of streams (#/): name, codec and retention from ListStreams; newest fragment and
 * size filled in per row as their summaries arrive. */

import { api } from './api.js';
import { $, el, errorText, isDenied, showDenied, showError } from './dom.js';
import { fmtAgo, fmtBytes, fmtDateTime, fmtRetention } from './format.js';
import { clearSummaries, streamSummary } from './summaries.js';

let listGeneration = 0;  // answers for an older showList are dropped

export async function showList() {
  const generation = ++listGeneration;
  $('#list-view').hidden = false;
  $('#crumbs').textContent = '';
  document.title = 'kvslite';
  const tbody = $('#streams tbody');
  const streams = [];
  let token = null;
  try {
    do {
      const page = await api('/listStreams', token ? { NextToken: token, MaxResults: 10000 }
        : { MaxResults: 10000 });
      streams.push(...(page.StreamInfoList || []));
      token = page.NextToken;
    } while (token);
  } catch (error) {
    if (generation !== listGeneration) return;
    if (!isDenied(error)) {
      showError(error);
      return;
    }
    // The keys are good but may not list streams: say so where the list would be.
    tbody.replaceChildren();
    $('#streams').hidden = true;
    $('#no-streams').hidden = true;
    showDenied($('#streams-denied'), error);
    $('#list-view').dataset.ready = 'true';
    return;
  }
  if (generation !== listGeneration) return;
  showDenied($('#streams-denied'), null);
  streams.sort((a, b) => a.StreamName.localeCompare(b.StreamName));
  tbody.replaceChildren();
  $('#no-streams').hidden = streams.length > 0;
  $('#streams').hidden = streams.length === 0;
  for (const info of streams) {
    const href = `#/stream/${encodeURIComponent(info.StreamName)}`;
    const row = el('tr', { 'data-stream': info.StreamName, tabIndex: -1 },
      el('td', { class: 'name', 'data-label': 'Name' },
        el('a', { href, text: info.StreamName })),
      el('td', { class: 'codec', 'data-label': 'Codec', text: info.MediaType || '—' }),
      el('td', { class: 'retention', 'data-label': 'Retention',
        text: fmtRetention(info.DataRetentionInHours) }),
      el('td', { class: 'last pending', 'data-label': 'Last fragment', text: '…' }),
      el('td', { class: 'size pending', 'data-label': 'Size', text: '…' }));
    row.addEventListener('click', (event) => {
      if (event.target.closest('a')) return;
      location.hash = href;
    });
    tbody.append(row);
    fillSummary(row, info.StreamName, generation);
  }
  filterList();
  $('#list-view').dataset.ready = 'true';
}

async function fillSummary(row, name, generation) {
  const last = $('.last', row);
  const size = $('.size', row);
  try {
    const summary = await streamSummary(name, { maxAgeMs: 5_000 });
    if (generation !== listGeneration) return;
    if (summary.noRetention) {
      last.textContent = 'not kept';
      size.textContent = '—';
    } else if (!summary.count) {
      last.textContent = 'never';
      size.textContent = '0 B';
    } else {
      const newest = summary.last;
      last.textContent = Number.isFinite(newest) ? `${fmtDateTime(newest)} (${fmtAgo(newest)})`
        : '> 1 day ago';
      last.title = Number.isFinite(newest) ? new Date(newest).toISOString() : '';
      last.dataset.ms = Number.isFinite(newest) ? newest : '';
      size.textContent = (summary.complete ? '' : '≥ ') + fmtBytes(summary.bytes);
      size.title = `${summary.count}${summary.complete ? '' : '+'} fragments`;
      size.dataset.bytes = summary.bytes;
    }
  } catch (error) {
    // A stream the user may list but not read: its cells say so.
    last.textContent = size.textContent = isDenied(error) ? 'not allowed' : '—';
    last.title = size.title = errorText(error);
    if (isDenied(error)) last.dataset.state = size.dataset.state = 'denied';
  }
  last.classList.remove('pending');
  size.classList.remove('pending');
}

function filterList() {
  const needle = $('#stream-filter').value.trim().toLowerCase();
  for (const row of document.querySelectorAll('#streams tbody tr')) {
    row.hidden = needle && !row.dataset.stream.toLowerCase().includes(needle);
  }
}

export function setupList() {
  $('#stream-filter').addEventListener('input', filterList);
  $('#refresh-list').addEventListener('click', () => { clearSummaries(); showList(); });
}
