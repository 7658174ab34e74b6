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

// A label and its control kept together, so a row of filters can wrap without a label ending up over
// another field's control.
export function field(label, control) {
  return el('div', { class: 'field' }, label, control);
}

// Filters and the like folded behind a summary on a phone (where they would push the list below the
// fold) and open on a wider screen. `summaryKey` names the summary's text.
export function foldable(content, { id, summaryKey = 'common.filters', hidden = false } = {}) {
  const open = typeof window.matchMedia === 'function' && window.matchMedia('(min-width: 900px)').matches;
  return el('details', { class: 'card filters-box', id, open, hidden },
    el('summary', { 'data-i18n': summaryKey }, t(summaryKey)), content);
}

// Says up front what a form requires: a red * (hidden from screen readers, which hear "required"
// from the attribute) on the label of every required field, and one line at the top of the form
// explaining the mark. Safe to call again after fields are added.
export function markRequired(form) {
  const required = [...form.querySelectorAll('[required]')].filter((c) => c.type !== 'checkbox' && c.type !== 'radio');
  for (const control of required) {
    // By `for` or around it; searched in the form, which may not be in the page yet.
    const labels = new Set(control.id ? form.querySelectorAll(`label[for="${CSS.escape(control.id)}"]`) : []);
    if (control.closest('label')) labels.add(control.closest('label'));
    for (const label of labels) {
      if (!label.querySelector('.required-mark')) label.append(el('span', { class: 'required-mark', 'aria-hidden': 'true' }, ' *'));
    }
  }
  if (required.length && !form.querySelector('.required-note')) {
    const note = el('p', { class: 'muted small required-note', 'data-i18n': 'form.required_note' }, t('form.required_note'));
    const first = form.firstElementChild;
    if (first && (/^H[1-6]$/.test(first.tagName) || first.classList.contains('form-head'))) first.after(note);
    else form.prepend(note);
  }
  return form;
}
