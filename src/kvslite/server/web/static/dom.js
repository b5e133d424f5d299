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

/** Shows an error in the page's alert line; null clears it. Aborts are not errors. */
export function showError(error) {
  const box = $('#error');
  if (!error) { box.hidden = true; box.textContent = ''; return; }
  if (error.name === 'AbortError') return;
  box.textContent = error.code ? `${error.code}: ${error.message}` : String(error.message || error);
  box.hidden = false;
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
