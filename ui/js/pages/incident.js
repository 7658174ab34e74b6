// One incident: its facts, photos, timeline, conflicts, comments, and only the actions this user may
// take now (the server says which).
import { getJson, postJson, upload } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { loadCatalog, departmentName, stateBadge, dueBadge } from '../incidents-common.js';
import { formatTime, relative } from '../format.js';

function actionForm(incident, action, reload, catalog) {
  const fields = [];
  const note = el('textarea', { name: 'note', rows: 2, placeholder: t(`action_note.${action}`) });
  let department = null;
  let assist = null;
  let deadline = null;
  if (action === 'dispatch') {
    department = el('select', { name: 'department', required: true },
      ...catalog.departments.map((d) => el('option', { value: d.id }, d.name)));
    assist = el('select', { name: 'assist', multiple: true, size: 4 },
      ...catalog.departments.map((d) => el('option', { value: d.id }, d.name)));
    deadline = el('input', { name: 'deadline', type: 'datetime-local' });
    fields.push(el('label', {}, t('incident.lead_department')), department,
      el('label', {}, t('incident.assist_departments')), assist,
      el('label', {}, t('incident.deadline')), deadline);
  }
  fields.push(el('label', {}, t('incident.note')), note);
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const submit = el('button', { type: 'submit', class: action === 'reject' ? 'danger' : '' }, t(`action.${action}`));
  const form = el('form', { class: 'form action-form', 'data-action': action }, ...fields, error, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    const body = { action };
    if (note.value.trim()) body.note = note.value.trim();
    if (department) body.department = department.value;
    if (assist) body.assist_departments = [...assist.selectedOptions].map((o) => o.value);
    if (deadline && deadline.value) body.deadline = new Date(deadline.value).getTime();
    try {
      await postJson(`/api/v1/incidents/${incident.id}/transitions`, body);
      await reload();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
      submit.disabled = false;
    }
  });
  return form;
}

export async function render(main, { id }) {
  clear(main);
  let catalog;
  let incident;
  try {
    [catalog, incident] = await Promise.all([loadCatalog(), getJson(`/api/v1/incidents/${encodeURIComponent(id)}`)]);
  } catch (e) {
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

  main.append(
    el('h1', { id: 'incident-title' }, incident.title),
    el('p', { class: 'badges' }, stateBadge(incident.state), ' ', dueBadge(incident.due_state), incident.escalated ? el('span', { class: 'badge' }, t('incident.escalated')) : null),
    el('section', { class: 'card' }, el('p', { class: 'description' }, incident.description || '—'), facts));

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
  const addPhoto = el('input', { type: 'file', accept: 'image/jpeg,image/png,image/webp,video/mp4', capture: 'environment', id: 'add-photo' });
  const uploadState = el('span', { class: 'muted small' });
  addPhoto.addEventListener('change', async () => {
    const file = addPhoto.files[0];
    if (!file) return;
    try {
      await upload(`/api/v1/incidents/${incident.id}/attachments`, file, (p) => { uploadState.textContent = `${Math.round(p * 100)}%`; });
      await reload();
    } catch (e) {
      uploadState.textContent = e.message;
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
  const commentForm = el('form', { class: 'form', id: 'comment-form' }, text, send);
  commentForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!text.value.trim()) return;
    send.disabled = true;
    try { await postJson(`/api/v1/incidents/${incident.id}/comments`, { text: text.value }); await reload(); } catch (err) { alert(err.message); send.disabled = false; }
  });
  main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.comments')), comments, commentForm));

  if (incident.state === 'closed' && !incident.rating) {
    const score = el('select', { id: 'rating-score' }, ...[5, 4, 3, 2, 1].map((n) => el('option', { value: n }, '★'.repeat(n))));
    const comment = el('input', { id: 'rating-comment', maxlength: 500 });
    const rate = el('button', { type: 'submit' }, t('incident.rate'));
    const rateForm = el('form', { class: 'form', id: 'rating-form' }, score, comment, rate);
    rateForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      try { await postJson(`/api/v1/incidents/${incident.id}/rating`, { score: Number(score.value), comment: comment.value }); await reload(); } catch (err) { alert(err.message); }
    });
    main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.rating')), rateForm));
  }
}
