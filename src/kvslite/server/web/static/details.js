/* The stream's details on its page: codec and retention (DescribeStream), and what the stream
 * does with new fragments: image generation into S3 and notifications
 * (DescribeImageGenerationConfiguration, DescribeNotificationConfiguration). */

import { api } from './api.js';
import { $, errorText, isDenied } from './dom.js';
import { fmtRetention } from './format.js';

const SELECTORS = { PRODUCER_TIMESTAMP: 'producer time', SERVER_TIMESTAMP: 'server time' };

/** state: 'pending', 'set', 'none' (not configured) or 'error'; title: more, on hover. */
function setDetail(key, text, state = 'set', title = '') {
  const dd = $(`#stream-details [data-detail=${key}] dd`);
  dd.textContent = text;
  dd.dataset.state = state;
  dd.title = title;
}

/** Hidden, every value pending: a new stream, or none. */
export function clearDetails() {
  const details = $('#stream-details');
  details.hidden = true;
  for (const item of details.children) setDetail(item.dataset.detail, '…', 'pending');
}

/** DescribeStream's StreamInfo: shows the details. */
export function showStreamInfo(info = {}) {
  setDetail('codec', info.MediaType || '—');
  setDetail('retention', fmtRetention(info.DataRetentionInHours));
  $('#stream-details').hidden = false;
}

function fmtSize(width, height) {
  if (width && height) return `${width}×${height}`;
  if (width) return `${width} px wide`;
  if (height) return `${height} px high`;
  return 'original size';
}

/** "ENABLED — JPEG every 3 s (producer time), 160×120, quality 80 → s3://bucket/prefix" */
export function fmtImageGeneration(config) {
  const selector = SELECTORS[config.ImageSelectorType] || config.ImageSelectorType;
  const parts = [`${config.Format} every ${config.SamplingInterval / 1000} s (${selector})`,
    fmtSize(config.WidthPixels, config.HeightPixels)];
  const quality = config.FormatConfig?.JPEGQuality;
  if (quality) parts.push(`quality ${quality}`);
  return `${config.Status} — ${parts.join(', ')} → ${config.DestinationConfig?.Uri}`;
}

/** "ENABLED → https://example.com/hook" */
export const fmtNotification = (config) =>
  `${config.Status} → ${config.DestinationConfig?.Uri}`;

const EVENT_CONFIGS = [
  { key: 'images', path: '/describeImageGenerationConfiguration',
    member: 'ImageGenerationConfiguration', format: fmtImageGeneration,
    title: (c) => `Region ${c.DestinationConfig?.DestinationRegion}` },
  { key: 'notifications', path: '/describeNotificationConfiguration',
    member: 'NotificationConfiguration', format: fmtNotification, title: () => '' },
];

async function loadEventConfig(name, { key, path, member, format, title }, signal) {
  try {
    const config = (await api(path, { StreamName: name }, { signal }))[member];
    if (signal.aborted) return;
    if (config) setDetail(key, format(config), 'set', title(config));
    else setDetail(key, 'not configured', 'none');
  } catch (error) {
    if (signal.aborted || error.name === 'AbortError') return;
    if (isDenied(error)) setDetail(key, 'not allowed', 'denied', errorText(error));
    else setDetail(key, 'unavailable', 'error', errorText(error));
  }
}

/** Both event configurations, each shown when it arrives; a failure shows "unavailable" and
 * nothing else. `signal` aborts them when the stream changes. */
export function loadEventConfigs(name, signal) {
  for (const config of EVENT_CONFIGS) loadEventConfig(name, config, signal);
}
