// One incident: its facts, photos, timeline, conflicts, comments, and only the actions this user may
// take now (the server says which). Every change made here (a workflow step, a comment, a rating,
// photos) goes through the outbox: sent at once when the node can be reached, kept on the phone and
// sent later when it cannot, and shown here as waiting until then.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { loadCatalog, departmentName, stateBadge, dueBadge } from '../incidents-common.js';
import { formatTime, relative, offlineAge } from '../format.js';
import * as outbox from '../outbox.js';
import { isOffline } from '../net.js';
import { preparePhoto } from '../photo.js';
import { stateText, errorText, kindText } from '../outbox-text.js';
import { startView } from '../view.js';

// How long a change waits for the node before the page says it will be sent later; known to be
// offline, only a moment (the send is tried at once all the same).
const SETTLE_MS = 5000;
const OFFLINE_SETTLE_MS = 300;

// Queues one change and waits briefly for it. 'sent': the page reloads; 'refused': the node's reason
// is shown where the person acted, and the item is dropped from the outbox (they saw it, and can act
// again here); otherwise it waits in the outbox and the page says so.
async function submitChange(input) {
  const item = await outbox.enqueue(input);
  const settled = await outbox.settle(item.id, isOffline() ? OFFLINE_SETTLE_MS : SETTLE_MS);
  if (settled && settled.state === 'refused') {
    await outbox.discard(settled.id);
    return { state: 'refused', message: errorText(settled.error) };
  }
  // Null: discarded meanwhile (from the outbox page); nothing was sent.
  return { state: settled ? settled.state : 'waiting' };
}

function queuedNote() {
  return el('p', { class: 'notice queued-note', role: 'status' }, t('outbox.queued_note'), ' ',
    el('a', { href: '/outbox', 'data-link': true }, t('outbox.title')));
}

function actionForm(incident, action, reload, catalog) {
  const fields = [];
  const id = (name) => `action-${action}-${name}`;
  const note = el('textarea', { name: 'note', id: id('note'), rows: 2, placeholder: t(`action_note.${action}`) });
  let department = null;
  let assist = null;
  let deadline = null;
  if (action === 'dispatch') {
    department = el('select', { name: 'department', id: id('department'), required: true },
      ...catalog.departments.map((d) => el('option', { value: d.id }, d.name)));
    assist = el('select', { name: 'assist', id: id('assist'), multiple: true, size: 4 },
      ...catalog.departments.map((d) => el('option', { value: d.id }, d.name)));
    deadline = el('input', { name: 'deadline', id: id('deadline'), type: 'datetime-local' });
    fields.push(el('label', { for: id('department') }, t('incident.lead_department')), department,
      el('label', { for: id('assist') }, t('incident.assist_departments')), assist,
      el('label', { for: id('deadline') }, t('incident.deadline')), deadline);
  }
  fields.push(el('label', { for: id('note') }, t('incident.note')), note);
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const submit = el('button', { type: 'submit', class: action === 'reject' ? 'danger' : '' }, t(`action.${action}`));
  const form = markRequired(el('form', { class: 'form action-form', 'data-action': action }, ...fields, error, submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    const body = { action };
    if (note.value.trim()) body.note = note.value.trim();
    if (department) body.department = department.value;
    if (assist) body.assist_departments = [...assist.selectedOptions].map((o) => o.value);
    if (deadline && deadline.value) body.deadline = new Date(deadline.value).getTime();
    try {
      const result = await submitChange({
        kind: 'transition',
        label: `${t(`action.${action}`)} · ${incident.title}`,
        method: 'POST',
        path: `/api/v1/incidents/${encodeURIComponent(incident.id)}/transitions`,
        body,
        incidentId: incident.id,
      });
      if (result.state === 'sent') await reload();
      else if (result.state === 'refused') {
        error.hidden = false;
        error.textContent = result.message;
        submit.disabled = false;
      } else form.replaceWith(queuedNote());
    } catch (_) {
      error.hidden = false;
      error.textContent = t('incident.queue_failed');
      submit.disabled = false;
    }
  });
  return form;
}

// This person's changes to the incident still on the phone.
function pendingCard(incidentId) {
  const items = outbox.forIncident(incidentId);
  if (!items.length) return null;
  return el('section', { class: 'card warn', id: 'incident-pending' },
    el('h2', {}, t('outbox.pending_here')),
    el('ul', { class: 'pending-list' }, ...items.map((i) => el('li', { 'data-state': i.state },
      el('strong', {}, kindText(i.kind)), ` · ${i.kind === 'comment' ? i.body.text : i.label} · `,
      el('span', { class: 'muted' }, stateText(i))))),
    el('a', { href: '/outbox', 'data-link': true }, t('outbox.title')));
}

// The pending card's subscription, replaced when the page renders again after a change.
let stopPending = () => {};

export async function render(main, { id }) {
  clear(main);
  stopPending();
  const view = startView();
  let catalog;
  let incident;
  try {
    [catalog, incident] = await Promise.all([loadCatalog(), getJson(`/api/v1/incidents/${encodeURIComponent(id)}`)]);
  } catch (e) {
    // A report still on this phone has its id already but is not on the node yet.
    await outbox.list().catch(() => []);
    const queued = outbox.forIncident(id).find((i) => i.kind === 'report');
    if (queued) {
      main.append(el('h1', {}, queued.label), el('section', { class: 'card' },
        el('p', {}, t('outbox.report_not_sent')), el('p', { class: 'muted' }, stateText(queued)),
        el('a', { href: '/outbox', 'data-link': true }, t('outbox.title'))));
      return;
    }
    main.append(errorBox(e.status === 404 ? t('notfound.body') : e.message, e.status === 404 ? null : () => render(main, { id })));
    return;
  }
  const reload = () => render(main, { id });
  const facts = el('dl', { class: 'facts' });
  const fact = (key, value) => { if (value !== null && value !== undefined && value !== '') facts.append(el('dt', {}, t(key)), el('dd', {}, value)); };
  fact('incident.category', incident.category);
  fact('incident.area', incident.area);
  fact('incident.place', incident.place);
  if (incident.location) fact('incident.location', `${incident.location.lat}, ${incident.location.lon}`);
  fact('incident.reporter', incident.reporter);
  fact('incident.created', formatTime(incident.created_ms));
  fact('incident.lead_department', incident.lead_department && departmentName(incident.lead_department));
  fact('incident.assist_departments', incident.assist_departments.map(departmentName).join('、'));
  fact('incident.assignee', incident.assignee);
  if (incident.deadline_ms) fact('incident.deadline', `${formatTime(incident.deadline_ms)} (${relative(incident.deadline_ms)})`);
  fact('incident.result', incident.result_note);
  if (incident.rating) fact('incident.rating', `${'★'.repeat(incident.rating.score)}${incident.rating.comment ? ' ' + incident.rating.comment : ''}`);

  main.append(el('h1', { id: 'incident-title' }, incident.title));
  // The phone's copy, shown when the node could not be reached: say how old it is.
  if (incident.offlineAt) main.append(el('p', { class: 'offline-note', id: 'offline-note' }, offlineAge(incident.offlineAt)));
  main.append(
    el('p', { class: 'badges' }, stateBadge(incident.state), ' ', dueBadge(incident.due_state), incident.escalated ? el('span', { class: 'badge' }, t('incident.escalated')) : null),
    el('section', { class: 'card' }, el('p', { class: 'description' }, incident.description || '—'), facts));
  const pendingSlot = el('div', { id: 'incident-pending-slot' });
  // When what waited here has gone out, offer a reload rather than reloading under the person's
  // fingers (they may be typing the next comment).
  let hadPending = false;
  const drawPending = () => {
    const card = pendingCard(incident.id);
    if (card) {
      hadPending = true;
      pendingSlot.replaceChildren(card);
    } else if (hadPending) {
      hadPending = false;
      const again = el('button', { type: 'button', class: 'secondary small', id: 'incident-reload' }, t('outbox.reload'));
      again.addEventListener('click', () => reload());
      pendingSlot.replaceChildren(el('p', { class: 'notice', role: 'status' }, t('outbox.sent_here'), ' ', again));
    }
  };
  drawPending();
  main.append(pendingSlot);
  stopPending = outbox.onChange(drawPending);
  view.add(stopPending);

  if (Object.keys(incident.field_conflicts).length > 0) {
    const box = el('section', { class: 'card warn', id: 'field-conflicts' }, el('h2', {}, t('incident.field_conflicts')));
    for (const [field, values] of Object.entries(incident.field_conflicts)) {
      box.append(el('p', {}, `${t(`incident.${field}`)}: ${values.join(' / ')}`));
    }
    main.append(box);
  }

  const photos = el('div', { class: 'photos', id: 'photos' });
  for (const a of incident.attachments) {
    const src = `/api/v1/blobs/${a.sha256}`;
    photos.append(a.content_type.startsWith('image/')
      ? el('a', { href: src, target: '_blank', rel: 'noopener' }, el('img', { src: `${src}/thumbnail`, alt: t('incident.photo'), loading: 'lazy', width: 96, height: 96 }))
      : el('a', { href: src, target: '_blank', rel: 'noopener', class: 'video' }, `▶ ${t('incident.video')}`));
  }
  const addPhoto = el('input', { type: 'file', accept: 'image/jpeg,image/png,image/webp,video/mp4', multiple: true, id: 'add-photo' });
  const uploadState = el('span', { class: 'muted small', id: 'add-photo-state', role: 'status' });
  addPhoto.addEventListener('change', async () => {
    const files = [...addPhoto.files];
    addPhoto.value = '';
    if (!files.length) return;
    try {
      const prepared = [];
      for (const [i, file] of files.entries()) {
        uploadState.textContent = `${t('incident.preparing')} ${i + 1}/${files.length}`;
        prepared.push(await preparePhoto(file));
      }
      uploadState.textContent = t('incident.uploading');
      const result = await submitChange({
        kind: 'photos',
        label: `${kindText('photos')} · ${incident.title}`,
        photos: prepared.map((p) => ({ blob: p.blob, name: p.name, type: p.type })),
        incidentId: incident.id,
      });
      if (result.state === 'sent') await reload();
      else if (result.state === 'refused') uploadState.textContent = result.message;
      else uploadState.textContent = t('outbox.queued_note');
    } catch (_) {
      uploadState.textContent = t('incident.queue_failed');
    }
  });
  main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.photos')), photos,
    el('label', { for: 'add-photo', class: 'muted small' }, t('incident.add_photo')), addPhoto, uploadState));

  if (incident.allowed_actions.length > 0) {
    const actions = el('section', { class: 'card', id: 'actions' }, el('h2', {}, t('incident.actions')));
    const tabs = el('div', { class: 'action-tabs' });
    const slot = el('div');
    for (const action of incident.allowed_actions) {
      const b = el('button', { type: 'button', class: 'secondary', 'data-action': action }, t(`action.${action}`));
      b.addEventListener('click', () => slot.replaceChildren(actionForm(incident, action, reload, catalog)));
      tabs.append(b);
    }
    actions.append(tabs, slot);
    main.append(actions);
  }

  const timeline = el('ol', { class: 'timeline', id: 'timeline' },
    el('li', {}, el('strong', {}, t('state.reported')), ` · ${incident.reporter} · ${formatTime(incident.created_ms)}`));
  for (const tr of incident.transitions) {
    const extra = [tr.data.department && departmentName(tr.data.department), tr.data.note].filter(Boolean).join(' — ');
    timeline.append(el('li', {}, el('strong', {}, t(`action.${tr.action}`)), ` · ${tr.actor} (${t(`role.${tr.role}`) || tr.role}) · ${formatTime(tr.at_ms)}`,
      extra ? el('div', { class: 'muted small' }, extra) : null));
  }
  main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.timeline')), timeline));
  if (incident.conflicts.length > 0) {
    const list = el('ul', { class: 'conflicts', id: 'conflicts' });
    for (const c of incident.conflicts) {
      list.append(el('li', {}, `${t(`action.${c.transition.action}`)} · ${c.transition.actor} · ${formatTime(c.transition.at_ms)}: ${c.reason}`));
    }
    main.append(el('section', { class: 'card warn' }, el('h2', {}, t('incident.conflicts')), el('p', { class: 'muted small' }, t('incident.conflicts_help')), list));
  }

  const comments = el('ul', { class: 'comments', id: 'comments' },
    ...incident.comments.map((c) => el('li', {}, el('strong', {}, c.author), ` · ${formatTime(c.at_ms)}`, el('p', {}, c.text))));
  const text = el('textarea', { id: 'comment-text', rows: 2, maxlength: 2000 });
  const send = el('button', { type: 'submit' }, t('incident.comment'));
  const commentForm = el('form', { class: 'form', id: 'comment-form' },
    el('label', { for: 'comment-text' }, t('incident.comment_text')), text, send);
  const commentError = el('p', { class: 'error', role: 'alert', hidden: true, id: 'comment-error' });
  commentForm.prepend(commentError);
  commentForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!text.value.trim()) return;
    send.disabled = true;
    commentError.hidden = true;
    try {
      const result = await submitChange({
        kind: 'comment',
        label: `${text.value.trim().slice(0, 40)} · ${incident.title}`,
        method: 'POST',
        path: `/api/v1/incidents/${encodeURIComponent(incident.id)}/comments`,
        body: { text: text.value },
        incidentId: incident.id,
      });
      if (result.state === 'sent') await reload();
      else if (result.state === 'refused') {
        commentError.hidden = false;
        commentError.textContent = result.message;
        send.disabled = false;
      } else {
        text.value = '';
        send.disabled = false;
      }
    } catch (_) {
      commentError.hidden = false;
      commentError.textContent = t('incident.queue_failed');
      send.disabled = false;
    }
  });
  main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.comments')), comments, commentForm));

  if (incident.state === 'closed' && !incident.rating) {
    const score = el('select', { id: 'rating-score' }, ...[5, 4, 3, 2, 1].map((n) => el('option', { value: n, 'aria-label': `${n} / 5` }, '★'.repeat(n))));
    const comment = el('input', { id: 'rating-comment', maxlength: 500 });
    const rate = el('button', { type: 'submit' }, t('incident.rate'));
    const rateForm = el('form', { class: 'form', id: 'rating-form' },
      el('label', { for: 'rating-score' }, t('incident.rating_score')), score,
      el('label', { for: 'rating-comment' }, t('incident.rating_comment')), comment, rate);
    const rateError = el('p', { class: 'error', role: 'alert', hidden: true });
    rateForm.prepend(rateError);
    rateForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      rate.disabled = true;
      rateError.hidden = true;
      try {
        const result = await submitChange({
          kind: 'rating',
          label: `${'★'.repeat(Number(score.value))} · ${incident.title}`,
          method: 'POST',
          path: `/api/v1/incidents/${encodeURIComponent(incident.id)}/rating`,
          body: { score: Number(score.value), comment: comment.value },
          incidentId: incident.id,
        });
        if (result.state === 'sent') await reload();
        else if (result.state === 'refused') {
          rateError.hidden = false;
          rateError.textContent = result.message;
          rate.disabled = false;
        } else rateForm.replaceWith(queuedNote());
      } catch (_) {
        rateError.hidden = false;
        rateError.textContent = t('incident.queue_failed');
        rate.disabled = false;
      }
    });
    main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.rating')), rateForm));
  }
}
