// The outbox page (/outbox): what this person made on the phone that is on its way, in the order it
// will be sent (the first one holds the rest back, so that is the order that explains a wait), each
// photo's progress, refusals with the node's reason, and retry and discard. Sent items stay for a
// week, newest first, each linked to its incident.
import { t } from '../i18n.js';
import { el, clear } from '../dom.js';
import * as outbox from '../outbox.js';
import { startView } from '../view.js';
import { navigate } from '../router.js';
import { formatTime } from '../format.js';
import { kindText, stateText, waitingText, photoText, sizeText } from '../outbox-text.js';

function steps(item) {
  const list = el('ul', { class: 'outbox-steps' });
  if (item.kind === 'report') {
    list.append(el('li', { class: 'outbox-step', 'data-done': item.mainDone ? 'true' : 'false' },
      `${t('outbox.step.incident')}${t('outbox.colon')}${item.mainDone ? t('outbox.step.created') : t('outbox.step.pending')}`));
  }
  item.photos.forEach((photo, index) => {
    list.append(el('li', { class: 'outbox-photo', 'data-index': index, 'data-attached': photo.attached ? 'true' : 'false' },
      `${t('outbox.photo')} ${index + 1} (${sizeText(photo.size)})${t('outbox.colon')}`,
      el('span', { class: 'outbox-photo-state' }, photoText(photo))));
  });
  return list.children.length ? list : null;
}

function signature(item, confirming) {
  return JSON.stringify([item.state, item.error, item.mainDone, item.attempts, item.nextAttemptMs, item.incidentId,
    item.photos.map((p) => [p.attached, Boolean(p.uploadUrl)]), confirming]);
}

export async function render(main) {
  clear(main);
  const view = startView();
  const sendNow = el('button', { type: 'button', class: 'secondary', id: 'outbox-send-now', 'data-i18n': 'outbox.send_now' }, t('outbox.send_now'));
  sendNow.addEventListener('click', () => outbox.flush({ force: true }));
  const pending = el('ol', { class: 'outbox-list', id: 'outbox-list', 'aria-live': 'polite' });
  const sent = el('ul', { class: 'outbox-list sent', id: 'outbox-sent' });
  const sentHead = el('h2', { id: 'outbox-sent-title', 'data-i18n': 'outbox.sent_title' }, t('outbox.sent_title'));
  const empty = el('p', { class: 'muted', id: 'outbox-empty', hidden: true, 'data-i18n': 'outbox.empty' }, t('outbox.empty'));
  const others = el('p', { class: 'muted small', id: 'outbox-others', hidden: true });
  const notice = el('p', { class: 'error', id: 'outbox-notice', role: 'alert', hidden: true });
  main.append(
    el('div', { class: 'page-head' }, el('h1', { 'data-i18n': 'outbox.title' }, t('outbox.title')), sendNow),
    el('p', { class: 'muted small', 'data-i18n': 'outbox.help' }, t('outbox.help')),
    notice, empty, pending, others, sentHead, sent);

  const confirming = new Set();
  const rows = new Map();

  function actions(item) {
    const box = el('div', { class: 'row outbox-actions' });
    if (item.state === 'sent') {
      if (item.incidentId) box.append(el('a', { href: `/incidents/${encodeURIComponent(item.incidentId)}`, 'data-link': true, class: 'outbox-link' }, t('outbox.open_incident')));
      return box;
    }
    if (confirming.has(item.id)) {
      const yes = el('button', { type: 'button', class: 'danger-fill small outbox-discard-confirm' }, t('outbox.discard_confirm'));
      const no = el('button', { type: 'button', class: 'secondary small outbox-discard-cancel' }, t('outbox.discard_cancel'));
      yes.addEventListener('click', async () => {
        confirming.delete(item.id);
        await outbox.discard(item.id);
      });
      no.addEventListener('click', () => {
        confirming.delete(item.id);
        draw();
      });
      box.append(el('span', { class: 'outbox-discard-question' }, t('outbox.discard_question')), yes, no);
      return box;
    }
    if (item.state === 'auth') {
      box.append(el('a', { href: `/login?next=${encodeURIComponent('/outbox')}`, 'data-link': true, class: 'button outbox-sign-in' }, t('outbox.sign_in')));
    } else if (item.state !== 'sending') {
      const retry = el('button', { type: 'button', class: 'secondary small outbox-retry', 'aria-label': `${t('outbox.retry')} ${item.label}` }, t('outbox.retry'));
      retry.addEventListener('click', () => outbox.retry(item.id));
      box.append(retry);
    }
    if (item.state === 'refused' && item.kind === 'report' && !item.mainDone) {
      const edit = el('button', { type: 'button', class: 'secondary small outbox-edit' }, t('outbox.edit'));
      edit.addEventListener('click', async () => {
        if (await outbox.editReport(item.id)) navigate('/incidents/new');
        else {
          notice.hidden = false;
          notice.textContent = t('outbox.edit_blocked');
        }
      });
      box.append(edit);
    }
    const discard = el('button', { type: 'button', class: 'secondary small danger outbox-discard', 'aria-label': `${t('outbox.discard')} ${item.label}` }, t('outbox.discard'));
    discard.addEventListener('click', () => {
      confirming.add(item.id);
      draw();
    });
    box.append(discard);
    return box;
  }

  function row(item) {
    const showProgress = item.state !== 'sent' && item.photos.length > 0;
    const when = [`${t('outbox.queued')} ${formatTime(item.createdMs)}`];
    if (item.sentMs) when.push(`${t('outbox.sent_at')} ${formatTime(item.sentMs)}`);
    const waiting = item.state === 'waiting' ? waitingText(item) : '';
    return el('li', { class: 'outbox-item card', 'data-id': item.id, 'data-state': item.state, 'data-kind': item.kind },
      el('div', { class: 'outbox-head' },
        el('strong', { class: 'outbox-label' }, item.label || kindText(item.kind)),
        el('span', { class: 'badge outbox-kind' }, kindText(item.kind))),
      el('p', { class: `outbox-state state-${item.state}`, role: 'status' }, stateText(item)),
      waiting ? el('p', { class: 'muted small outbox-wait' }, waiting) : null,
      showProgress ? el('progress', { class: 'outbox-progress', max: 1, value: item.progress, 'aria-label': t('outbox.progress') }) : null,
      steps(item),
      el('p', { class: 'muted small outbox-time' }, when.join(' · ')),
      actions(item));
  }

  // Progress moves several times a second: update the numbers in place, rebuild a row only when its
  // state changes, so a button under a finger does not vanish while it is pressed.
  function update(li, item) {
    li.querySelector('.outbox-state').textContent = stateText(item);
    const bar = li.querySelector('.outbox-progress');
    if (bar) bar.value = item.progress;
    for (const p of li.querySelectorAll('.outbox-photo')) {
      const photo = item.photos[Number(p.dataset.index)];
      if (photo) p.querySelector('.outbox-photo-state').textContent = photoText(photo);
    }
  }

  let drawing = false;
  let redraw = false;
  async function draw() {
    if (drawing) {
      redraw = true;
      return;
    }
    drawing = true;
    try {
      do {
        redraw = false;
        const items = await outbox.list();
        if (!view.alive) return;
        const open = items.filter((i) => i.state !== 'sent');
        const done = items.filter((i) => i.state === 'sent').sort((a, b) => (b.sentMs || 0) - (a.sentMs || 0));
        const seen = new Set();
        for (const [list, group] of [[pending, open], [sent, done]]) {
          const children = group.map((item) => {
            seen.add(item.id);
            const sig = signature(item, confirming.has(item.id));
            const known = rows.get(item.id);
            if (known && known.sig === sig && known.li.parentNode === list) {
              update(known.li, item);
              return known.li;
            }
            const li = row(item);
            rows.set(item.id, { li, sig });
            return li;
          });
          // Reordering only when needed keeps focus where it is.
          const same = children.length === list.children.length && children.every((c, i) => list.children[i] === c);
          if (!same) list.replaceChildren(...children);
        }
        for (const id of [...rows.keys()]) if (!seen.has(id)) rows.delete(id);
        empty.hidden = open.length > 0;
        sentHead.hidden = done.length === 0;
        const n = outbox.othersCount();
        others.hidden = n === 0;
        others.textContent = t('outbox.others').replace('{n}', n);
      } while (redraw && view.alive);
    } finally {
      drawing = false;
    }
  }

  view.add(outbox.onChange(() => { draw(); }));
  // Waiting times and "next try at" move on by themselves.
  view.every(15000, () => draw());
  await draw();
}
