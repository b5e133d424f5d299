/* The list of signaling channels (#/, below the streams): name, type, status and creation
 * time from ListSignalingChannels, each name a link to the channel's live page. */

import { api } from './api.js';
import { $, el, isDenied, showDenied, showError } from './dom.js';
import { fmtDateTime } from './format.js';

let listGeneration = 0;  // answers for an older showChannels are dropped

export async function showChannels() {
  const generation = ++listGeneration;
  const table = $('#channels');
  delete table.dataset.ready;
  const channels = [];
  let token = null;
  try {
    do {
      const page = await api('/listSignalingChannels', token
        ? { NextToken: token, MaxResults: 10000 } : { MaxResults: 10000 });
      channels.push(...(page.ChannelInfoList || []));
      token = page.NextToken;
    } while (token);
  } catch (error) {
    if (generation !== listGeneration) return;
    if (!isDenied(error)) {
      showError(error);
      return;
    }
    // Not allowed to list channels: said in their place, the streams above keep working.
    table.hidden = true;
    $('#no-channels').hidden = true;
    showDenied($('#channels-denied'), error);
    table.dataset.ready = 'true';
    return;
  }
  if (generation !== listGeneration) return;
  showDenied($('#channels-denied'), null);
  channels.sort((a, b) => a.ChannelName.localeCompare(b.ChannelName));
  $('#no-channels').hidden = channels.length > 0;
  table.hidden = channels.length === 0;
  $('tbody', table).replaceChildren(...channels.map(channelRow));
  table.dataset.ready = 'true';
}

function channelRow(info) {
  const href = `#/channel/${encodeURIComponent(info.ChannelName)}`;
  const created = info.CreationTime ? fmtDateTime(info.CreationTime * 1000) : '—';
  const row = el('tr', { 'data-channel': info.ChannelName, tabIndex: -1 },
    el('td', { class: 'name', 'data-label': 'Name' }, el('a', { href, text: info.ChannelName })),
    el('td', { class: 'type', 'data-label': 'Type', text: info.ChannelType || '—' }),
    el('td', { class: 'status', 'data-label': 'Status', text: info.ChannelStatus || '—' }),
    el('td', { class: 'created', 'data-label': 'Created', text: created }));
  row.addEventListener('click', (event) => {
    if (!event.target.closest('a')) location.hash = href;
  });
  return row;
}

export function setupChannels() {
  $('#refresh-list').addEventListener('click', showChannels);
}
