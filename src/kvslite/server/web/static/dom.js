/* Small DOM helpers shared by every view. */

export const $ = (selector, root = document) => root.querySelector(selector);

/** A new element: `class`, `text` and `data-*` are set as such, anything else as a property. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** Whether the server refused the request by policy: the keys are good, the user may not. */
export const isDenied = (error) => error?.code === 'AccessDeniedException';

/** An error in words. A refusal by policy reads "Not allowed: <action> on <resource>", from
 * AWS's message ("User: <arn> is not authorized to perform: <action> on resource: <arn>"). */
export function errorText(error) {
  if (isDenied(error)) {
    const named = /perform: (\S+) on resource: (\S+)/.exec(error.message || '');
    return named ? `Not allowed: ${named[1]} on ${named[2]}` : `Not allowed: ${error.message}`;
  }
  return error.code ? `${error.code}: ${error.message}` : String(error.message || error);
}

/** Shows an error in the page's alert line; null clears it. Aborts are not errors. */
export function showError(error) {
  const box = $('#error');
  if (!error) { box.hidden = true; box.textContent = ''; return; }
  if (error.name === 'AbortError') return;
  box.textContent = errorText(error);
  box.hidden = false;
}

/** A refusal by policy shown in `box`, in place of the data it stands for; null hides it. */
export function showDenied(box, error) {
  box.hidden = !error;
  box.textContent = error ? errorText(error) : '';
  if (error) box.dataset.state = 'denied';
  else delete box.dataset.state;
}

/** Saves a blob as a file, through a temporary link. */
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
