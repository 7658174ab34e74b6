// Pages whose features arrive in later releases: the navigation is in place so people learn where
// things will be, and the page says plainly that the feature is not in this version.
import { t } from '../i18n.js';
import { el, clear } from '../dom.js';

export function pending(titleKey) {
  return async (main) => {
    clear(main);
    main.append(
      el('h1', { 'data-i18n': titleKey }, t(titleKey)),
      el('section', { class: 'card' },
        el('p', {}, el('span', { class: 'badge', 'data-i18n': 'pending.title' }, t('pending.title'))),
        el('p', { class: 'muted', 'data-i18n': 'pending.body' }, t('pending.body'))),
    );
  };
}

export async function notFound(main) {
  clear(main);
  main.append(
    el('h1', { 'data-i18n': 'notfound.title' }, t('notfound.title')),
    el('p', { 'data-i18n': 'notfound.body' }, t('notfound.body')),
  );
}
