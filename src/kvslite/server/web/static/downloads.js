/* The download dialogs: save images (GetImages, packed into a zip here) and save clip
 * (GetClip, an MP4), both over the visible range by default. */

import { api, getImages, minSamplingInterval, timeRange } from './api.js';
import { $, download, errorText } from './dom.js';
import { fileStamp, fmtBytes, fmtDuration, fromLocalInput, toLocalInput, zoneName }
  from './format.js';
import { defaultRange, S } from './state.js';
import { makeZip } from './zip.js';

const MAX_ZIP_IMAGES = 5000;
let imagesJob = null;  // the AbortController of the download under way
let clipJob = null;

const failure = (error) => (error.code ? errorText(error) : `Error: ${error.message}`);

function setupImagesDialog() {
  const dialog = $('#images-dialog');
  const form = $('#images-form');
  const estimate = () => {
    const start = fromLocalInput(form.start.value);
    const end = fromLocalInput(form.end.value);
    const interval = Math.round(Number(form.interval.value) * 1000);
    const text = $('#images-estimate');
    if (!(end >= start) || !(interval >= 1)) {
      text.textContent = 'Choose a range that ends after it starts, and an interval.';
      return 0;
    }
    const count = Math.floor((end - start) / interval) + 1;
    text.textContent = `Times are local (${zoneName(start)}). ` +
      `${count} sample time${count === 1 ? '' : 's'} ` +
      `(${fmtDuration(end - start)} every ${fmtDuration(interval)}); times with no media are skipped.` +
      (interval < minSamplingInterval ? ` The server's minimum interval is ${minSamplingInterval} ms.` : '') +
      (count > MAX_ZIP_IMAGES ? ` At most ${MAX_ZIP_IMAGES} per zip: widen the interval.` : '');
    return count;
  };
  form.addEventListener('input', estimate);
  form.format.addEventListener('change', () => {
    form.quality.disabled = form.format.value !== 'JPEG';
  });
  $('#save-images').addEventListener('click', () => {
    const { start, end } = defaultRange();
    form.start.value = toLocalInput(start);
    form.end.value = toLocalInput(end);
    const interval = Math.max(minSamplingInterval, niceInterval((end - start) / 50));
    form.interval.value = String(interval / 1000);
    $('#images-status').textContent = '';
    $('#images-progress').hidden = true;
    $('#images-cancel').textContent = 'Cancel';
    delete dialog.dataset.saved;
    estimate();
    dialog.showModal();
  });
  $('#images-cancel').addEventListener('click', () => {
    imagesJob?.abort();
    dialog.close();
  });
  dialog.addEventListener('close', () => imagesJob?.abort());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const count = estimate();
    if (!count || count > MAX_ZIP_IMAGES) return;
    imagesJob = new AbortController();
    const go = $('#images-go');
    go.disabled = true;
    try {
      await saveImages(form, count, imagesJob.signal);
    } catch (error) {
      if (error.name !== 'AbortError') {
        $('#images-status').textContent = failure(error);
      }
    } finally {
      go.disabled = false;
      imagesJob = null;
    }
  });
}

/** The first round interval of at least `ms`. */
function niceInterval(ms) {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 3e5, 6e5,
    18e5, 36e5];
  return steps.find((s) => s >= ms) || steps.at(-1);
}

async function saveImages(form, count, signal) {
  const stream = S.stream;
  const start = fromLocalInput(form.start.value);
  const end = fromLocalInput(form.end.value);
  const format = form.format.value;
  const params = {
    StreamName: stream, ImageSelectorType: 'PRODUCER_TIMESTAMP',
    StartTimestamp: start / 1000, EndTimestamp: end / 1000,
    SamplingInterval: Math.round(Number(form.interval.value) * 1000), Format: format,
    MaxResults: 100,
  };
  if (form.width.value) params.WidthPixels = Number(form.width.value);
  if (form.height.value) params.HeightPixels = Number(form.height.value);
  if (format === 'JPEG' && form.quality.value) {
    params.FormatConfig = { JPEGQuality: String(Number(form.quality.value)) };
  }
  const progress = $('#images-progress');
  const status = $('#images-status');
  progress.hidden = false;
  progress.max = count;
  progress.value = 0;
  const files = [];
  let seen = 0;
  let skipped = 0;
  let token = null;
  const extension = format === 'PNG' ? 'png' : 'jpg';
  do {
    const page = await getImages(token ? { ...params, NextToken: token } : params, { signal });
    for (const image of page.Images || []) {
      seen++;
      const ts = Math.round(image.TimeStamp * 1000);
      if (!image.ImageContent) { skipped++; continue; }
      files.push({ name: `${stream}_${fileStamp(ts)}.${extension}`,
        data: base64ToBytes(image.ImageContent), time: ts });
    }
    progress.value = seen;
    status.textContent = `${seen} / ${count} sample times, ${files.length} images`;
    token = page.NextToken;
  } while (token);
  if (!files.length) {
    status.textContent = `No images: all ${seen} sample times have no media.`;
    return;
  }
  download(makeZip(files), `${stream}_${fileStamp(start)}_${fileStamp(end)}.zip`);
  status.textContent = `Saved ${files.length} image${files.length === 1 ? '' : 's'}` +
    (skipped ? ` (${skipped} sample time${skipped === 1 ? '' : 's'} without media skipped)` : '') + '.';
  $('#images-dialog').dataset.saved = String(files.length);
  $('#images-cancel').textContent = 'Close';
}

function setupClipDialog() {
  const dialog = $('#clip-dialog');
  const form = $('#clip-form');
  $('#save-clip').addEventListener('click', () => {
    const { start, end } = defaultRange();
    form.start.value = toLocalInput(start);
    form.end.value = toLocalInput(end);
    $('#clip-status').textContent = '';
    $('#clip-hint').textContent = `Times are local (${zoneName(start)}). An MP4 of the ` +
      'archived fragments that start in this range (GetClip).';
    $('#clip-cancel').textContent = 'Cancel';
    dialog.showModal();
  });
  $('#clip-cancel').addEventListener('click', () => {
    clipJob?.abort();
    dialog.close();
  });
  dialog.addEventListener('close', () => clipJob?.abort());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const start = fromLocalInput(form.start.value);
    const end = fromLocalInput(form.end.value);
    const status = $('#clip-status');
    if (!(end > start)) {
      status.textContent = 'Choose a range that ends after it starts.';
      return;
    }
    clipJob = new AbortController();
    const go = $('#clip-go');
    go.disabled = true;
    status.textContent = 'Building the clip…';
    try {
      const response = await api('/getClip', {
        StreamName: S.stream,
        ClipFragmentSelector: timeRange('PRODUCER_TIMESTAMP', start, end),
      }, { signal: clipJob.signal, raw: true });
      const blob = await response.blob();
      download(new Blob([blob], { type: 'video/mp4' }),
        `${S.stream}_${fileStamp(start)}_${fileStamp(end)}.mp4`);
      status.textContent = `Saved ${fmtBytes(blob.size)}.`;
      $('#clip-cancel').textContent = 'Close';
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = failure(error);
    } finally {
      go.disabled = false;
      clipJob = null;
    }
  });
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function setupDownloads() {
  setupImagesDialog();
  setupClipDialog();
}
