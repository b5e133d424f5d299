/* Times, durations and sizes as the viewer shows them. Times are local, except file names. */

const p2 = (n) => String(n).padStart(2, '0');
const p3 = (n) => String(n).padStart(3, '0');

export function fmtDate(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}`;
}

/** precision: 'm' (hh:mm), 's' (hh:mm:ss) or 'ms' (hh:mm:ss.mmm) */
export function fmtClock(ms, precision = 's') {
  const d = new Date(ms);
  let text = `${p2(d.getHours())}:${p2(d.getMinutes())}`;
  if (precision !== 'm') text += `:${p2(d.getSeconds())}`;
  if (precision === 'ms') text += `.${p3(d.getMilliseconds())}`;
  return text;
}

export const fmtDateTime = (ms, precision = 's') => `${fmtDate(ms)} ${fmtClock(ms, precision)}`;

export function fmtDuration(ms) {
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${+s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}

export function fmtAgo(ms) {
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtBytes(bytes) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
  return `${unit ? value.toFixed(value < 10 ? 1 : 0) : value} ${units[unit]}`;
}

export function fmtRetention(hours) {
  if (!hours) return 'none';
  if (hours % 24 === 0) return `${hours / 24} d`;
  return `${hours} h`;
}

/** A compact UTC stamp for file names: 20240131T235959.123Z */
export const fileStamp = (ms) => new Date(ms).toISOString().replace(/[-:]/g, '');

/* datetime-local fields: parsed and filled by hand, to keep the milliseconds. */

export function toLocalInput(ms) {
  return `${fmtDate(ms)}T${fmtClock(ms, 'ms')}`;
}

export function fromLocalInput(value) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,3}))?)?$/.exec(value || '');
  if (!m) return NaN;
  return new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0),
    +(m[7] || '0').padEnd(3, '0')).getTime();
}

/** "UTC+02:00": the zone of the datetime-local fields. */
export function zoneName(ms = Date.now()) {
  const offset = -new Date(ms).getTimezoneOffset();
  const sign = offset < 0 ? '-' : '+';
  return `UTC${sign}${p2(Math.floor(Math.abs(offset) / 60))}:${p2(Math.abs(offset) % 60)}`;
}
