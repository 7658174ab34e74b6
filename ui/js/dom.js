// Tiny DOM helpers. Text is always set as text, never as HTML, so nothing from the server or a user
// can inject markup.
import { t } from './i18n.js';

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function errorBox(message, retry) {
  const box = el('section', { class: 'card', role: 'alert' }, el('p', { class: 'error' }, message));
  if (retry) {
    const button = el('button', { type: 'button', class: 'secondary', 'data-i18n': 'common.retry' }, t('common.retry'));
    button.addEventListener('click', retry);
    box.append(button);
  }
  return box;
}
