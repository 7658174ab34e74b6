// One incident: its facts, photos, timeline, conflicts, comments, and only the actions this user may
// take now (the server says which). Every change made here (a workflow step, a comment, a rating,
// photos) goes through the outbox: sent at once when the node can be reached, kept on the phone and
// sent later when it cannot, and shown here as waiting until then. People, villages and departments
// are shown by name (the node sends the names beside the ids; an id shows only when it has none), and
// a report closed as a duplicate links to its original and back.
import { getJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { loadCatalog, departmentName, stateBadge, lateBadge } from '../incidents-common.js';
import { formatTime, relative, offlineAge, overdueText, durationText } from '../format.js';
import { loadAreas, areaNode, personNode } from '../names.js';
import {
  OPEN_STATES, assistChoices, assistSelection, defaultDeadline, localInputValue, rankCandidates,
} from '../incidents-logic.js';
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

// The lead department, the departments assisting it (check boxes, never the lead itself: choosing a
// department as lead takes it out of the list and unticks it), and the deadline, filled in with the
// category's default and saying so.
function dispatchFields(incident, catalog, id) {
  const lead = el('select', { name: 'department', id: id('department'), required: true },
    el('option', { value: '' }, t('incident.choose_department')),
    ...catalog.departments.map((d) => el('option', { value: d.id }, d.name)));
  const ticked = new Set();
  const boxes = el('div', { class: 'check-grid', id: id('assist-list') });
  const drawAssist = () => {
    boxes.replaceChildren(...assistChoices(catalog.departments, lead.value).map((d) => {
      const box = el('input', { type: 'checkbox', name: 'assist', value: d.id, id: id(`assist-${d.id}`), checked: ticked.has(d.id) });
      box.addEventListener('change', () => { if (box.checked) ticked.add(d.id); else ticked.delete(d.id); });
      return el('label', { class: 'check', for: box.id }, box, el('span', {}, d.name));
    }));
  };
  lead.addEventListener('change', () => {
    ticked.delete(lead.value);
    drawAssist();
  });
  drawAssist();
  const assist = el('fieldset', { class: 'assist-choices', id: id('assist') },
    el('legend', {}, t('incident.assist_departments_pick')), boxes);

  const deadline = el('input', { name: 'deadline', id: id('deadline'), type: 'datetime-local', min: localInputValue(Date.now()) });
  const hint = el('p', { class: 'muted small deadline-hint', id: id('deadline-hint') });
  const preset = defaultDeadline(incident.category, catalog.categories, Date.now());
  if (preset) {
    deadline.value = localInputValue(preset.ms);
    deadline.setAttribute('aria-describedby', hint.id);
    hint.textContent = t('incident.deadline_default', { category: preset.category, span: durationText(preset.minutes) });
  } else {
    hint.hidden = true;
  }
  return {
    nodes: [el('label', { for: lead.id }, t('incident.lead_department')), lead, assist,
      el('label', { for: deadline.id }, t('incident.deadline')), deadline, hint],
    fill(body) {
      body.department = lead.value;
      body.assist_departments = assistSelection(catalog.departments, ticked, lead.value);
      if (deadline.value) body.deadline = new Date(deadline.value).getTime();
    },
  };
}

// One report offered as the original: its title, then state, village and when it came in.
function candidateOption(c, dir, id) {
  const radio = el('input', { type: 'radio', name: 'duplicate_of', value: c.id, id: id(`c-${c.id}`) });
  return el('label', { class: 'check candidate', for: radio.id, 'data-id': c.id }, radio,
    el('span', { class: 'candidate-text' }, el('strong', {}, c.title),
      el('span', { class: 'muted small' }, t(`state.${c.state}`), ' · ', areaNode(dir, c.area, c.area_name), ` · ${formatTime(c.created_ms)}`)));
}

// Choosing the report this one repeats: open reports of the same category in the same village come
// first, newest first; the search box looks through all reports (q=).
function duplicateFields(incident, dir, id) {
  const q = el('input', { type: 'search', id: id('q'), name: 'q', autocomplete: 'off', placeholder: t('incident.search_hint') });
  const search = el('button', { type: 'button', class: 'secondary', id: id('search') }, t('audit.search'));
  const list = el('div', { class: 'candidate-list', id: id('candidates'), 'aria-live': 'polite' }, el('p', { class: 'muted small' }, t('common.loading')));
  // Only the newest search is drawn; an older one answering late is dropped.
  let asked = 0;
  const load = async () => {
    const mine = ++asked;
    const open = `state=${OPEN_STATES.join(',')}&limit=20`;
    const text = q.value.trim();
    let rows;
    try {
      if (text) {
        const all = OPEN_STATES.concat(['resolved', 'closed']).join(',');
        rows = (await getJson(`/api/v1/incidents?q=${encodeURIComponent(text)}&state=${all}&limit=30`)).incidents;
      } else {
        const [alike, any] = await Promise.all([
          getJson(`/api/v1/incidents?${open}&category=${encodeURIComponent(incident.category)}&area=${encodeURIComponent(incident.area)}`),
          getJson(`/api/v1/incidents?${open}`)]);
        rows = [...alike.incidents, ...any.incidents];
      }
    } catch (e) {
      if (mine === asked) list.replaceChildren(el('p', { class: 'error' }, e.message));
      return;
    }
    if (mine !== asked) return;
    const ranked = rankCandidates(rows, incident);
    if (!ranked.length) {
      list.replaceChildren(el('p', { class: 'muted small' }, t('incident.no_candidates')));
      return;
    }
    const options = ranked.map((c) => candidateOption(c, dir, id));
    // A choice is required; one required radio makes the whole group so.
    options[0].querySelector('input').required = true;
    list.replaceChildren(...options);
  };
  search.addEventListener('click', load);
  q.addEventListener('keydown', (e) => {
    // Enter searches; it must not send the form with no original chosen.
    if (e.key === 'Enter') {
      e.preventDefault();
      load();
    }
  });
  load();
  return {
    nodes: [el('label', { for: q.id }, t('incident.find_original')), el('div', { class: 'search-row' }, q, search),
      el('fieldset', { class: 'candidates' }, el('legend', {}, t('incident.choose_original')), list)],
    fill(body, form) {
      const chosen = form.querySelector('input[name="duplicate_of"]:checked');
      if (chosen) body.duplicate_of = chosen.value;
    },
  };
}

function actionForm(incident, action, reload, catalog, dir) {
  const fields = [];
  const id = (name) => `action-${action}-${name}`;
  const note = el('textarea', { name: 'note', id: id('note'), rows: 2, placeholder: t(`action_note.${action}`) });
  const extra = action === 'dispatch' ? dispatchFields(incident, catalog, id)
    : action === 'duplicate' ? duplicateFields(incident, dir, id) : null;
  if (extra) fields.push(...extra.nodes);
  fields.push(el('label', { for: id('note') }, t('incident.note')), note);
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const submit = el('button', { type: 'submit', class: action === 'reject' ? 'danger' : '' }, t(`action.${action}`));
  const form = markRequired(el('form', { class: 'form action-form', 'data-action': action }, ...fields, error, submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    const body = { action };
    if (note.value.trim()) body.note = note.value.trim();
    if (extra) extra.fill(body, form);
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

// Titles of linked incidents are asked one request each; past this many an original's duplicates are
// listed by id (a report repeated that often is rare, and the page must not wait on dozens of reads).
const MAX_TITLES = 20;

function plainLink(otherId, linkId, text = otherId) {
  return el('a', { href: `/incidents/${encodeURIComponent(otherId)}`, 'data-link': true, class: 'incident-ref', id: linkId, 'data-id': otherId }, text);
}

// A link to another incident, named by its title once the node has said it (the record holds only
// the id); the id stays when the title cannot be had.
function incidentLink(otherId, linkId) {
  const a = plainLink(otherId, linkId);
  getJson(`/api/v1/incidents/${encodeURIComponent(otherId)}`)
    .then((o) => { if (o && o.title) a.textContent = o.title; })
    .catch(() => {});
  return a;
}

// Where it is: the typed place, else the village's name, with the coordinates after it as the
// secondary part (a reader knows 王宅村东头河堤, not 28.9, 119.81).
function placeNode(incident, dir) {
  const loc = incident.location;
  if (!loc) return incident.place || null;
  const coords = el('span', { class: 'muted small coords' }, ` ${loc.lat}, ${loc.lon}`);
  if (incident.place) return el('span', {}, incident.place, coords);
  return el('span', {}, areaNode(dir, incident.area, incident.area_name), coords);
}

// What a step carried, in words: the departments by name, the deadline set, the original of a
// duplicate as a link, the note. The record keeps assisting departments as one comma-separated text.
function transitionDetail(data) {
  const parts = [];
  if (data.department) parts.push(`${t('incident.lead_department')}${t('outbox.colon')}${departmentName(data.department)}`);
  const assist = Array.isArray(data.assist_departments) ? data.assist_departments
    : typeof data.assist_departments === 'string' ? data.assist_departments.split(',').filter(Boolean) : [];
  if (assist.length) parts.push(`${t('incident.assist_departments')}${t('outbox.colon')}${assist.map((d) => departmentName(d)).join('、')}`);
  const deadline = /^\d+$/.test(String(data.deadline ?? '')) ? Number(data.deadline) : Date.parse(data.deadline);
  if (data.deadline && Number.isFinite(deadline)) parts.push(`${t('incident.deadline')}${t('outbox.colon')}${formatTime(deadline)}`);
  if (data.note) parts.push(data.note);
  if (!parts.length && !data.duplicate_of) return null;
  const box = el('div', { class: 'muted small' }, parts.join(' — '));
  if (data.duplicate_of) box.append(parts.length ? ' — ' : '', t('incident.duplicate_of'), ' ', plainLink(data.duplicate_of, undefined, t('field.duplicate_of')));
  return box;
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
  let dir;
  try {
    [catalog, incident, dir] = await Promise.all([loadCatalog(), getJson(`/api/v1/incidents/${encodeURIComponent(id)}`), loadAreas()]);
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
  if (!view.alive) return;
  const reload = () => render(main, { id });
  const facts = el('dl', { class: 'facts' });
  const fact = (key, value, factId) => {
    if (value !== null && value !== undefined && value !== '') facts.append(el('dt', {}, t(key)), el('dd', { id: factId }, value));
  };
  const assistNames = (incident.assist_departments || []).map((d, n) => departmentName(d, incident.assist_department_names?.[n]));
  fact('incident.category', incident.category);
  fact('incident.area_filter', areaNode(dir, incident.area, incident.area_name, { code: true }), 'incident-area');
  fact('incident.place', placeNode(incident, dir), 'incident-place');
  fact('incident.reporter', personNode(incident.reporter_name, incident.reporter), 'incident-reporter');
  fact('incident.created', formatTime(incident.created_ms));
  fact('incident.lead_department', incident.lead_department && departmentName(incident.lead_department, incident.lead_department_name), 'incident-lead');
  fact('incident.assist_departments', assistNames.join('、'), 'incident-assist');
  fact('incident.assignee', incident.assignee && personNode(incident.assignee_name, incident.assignee));
  if (incident.deadline_ms) {
    const late = ['closed', 'rejected', 'duplicate'].includes(incident.state) ? null : overdueText(incident.deadline_ms);
    fact('incident.deadline', el('span', {}, `${formatTime(incident.deadline_ms)} (${relative(incident.deadline_ms)})`,
      late ? el('strong', { class: 'late-text' }, ` · ${late}`) : null), 'incident-deadline');
  }
  fact('incident.result', incident.result_note);
  if (incident.rating) {
    const by = incident.rating.by ? personNode(incident.rating.by_name, incident.rating.by) : null;
    fact('incident.rating', el('span', {}, `${'★'.repeat(incident.rating.score)}${incident.rating.comment ? ' ' + incident.rating.comment : ''}`,
      by ? ' · ' : null, by));
  }

  main.append(el('h1', { id: 'incident-title' }, incident.title));
  // The phone's copy, shown when the node could not be reached: say how old it is.
  if (incident.offlineAt) main.append(el('p', { class: 'offline-note', id: 'offline-note' }, offlineAge(incident.offlineAt)));
  const open = !['closed', 'rejected', 'duplicate'].includes(incident.state);
  main.append(el('p', { class: 'badges' }, stateBadge(incident.state), ' ', open ? lateBadge(incident.due_state, incident.deadline_ms) : null,
    incident.escalated ? el('span', { class: 'badge' }, t('incident.escalated')) : null));
  // Which report this one repeats, and the reports that repeat it, as links both ways.
  if (incident.duplicate_of) {
    main.append(el('p', { class: 'notice duplicate-of', id: 'duplicate-of' }, t('incident.duplicate_of'), ' ',
      incidentLink(incident.duplicate_of, 'duplicate-of-link')));
  }
  const duplicates = incident.duplicates || [];
  if (duplicates.length) {
    main.append(el('section', { class: 'card', id: 'duplicates' },
      el('h2', {}, t('incident.duplicates', { n: duplicates.length })),
      el('ul', { class: 'duplicate-list' }, ...duplicates.map((d, n) => el('li', {}, n < MAX_TITLES ? incidentLink(d) : plainLink(d))))));
  }
  main.append(el('section', { class: 'card' }, el('p', { class: 'description' }, incident.description || '—'), facts));
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
      b.addEventListener('click', () => slot.replaceChildren(actionForm(incident, action, reload, catalog, dir)));
      tabs.append(b);
    }
    actions.append(tabs, slot);
    main.append(actions);
  }

  const timeline = el('ol', { class: 'timeline', id: 'timeline' },
    el('li', {}, el('strong', {}, t('state.reported')), ' · ', personNode(incident.reporter_name, incident.reporter), ` · ${formatTime(incident.created_ms)}`));
  for (const tr of incident.transitions) {
    timeline.append(el('li', { 'data-action': tr.action }, el('strong', {}, t(`action.${tr.action}`)), ' · ', personNode(tr.actor_name, tr.actor),
      ` (${t(`role.${tr.role}`) || tr.role}) · ${formatTime(tr.at_ms)}`, transitionDetail(tr.data || {})));
  }
  main.append(el('section', { class: 'card' }, el('h2', {}, t('incident.timeline')), timeline));
  if (incident.conflicts.length > 0) {
    const list = el('ul', { class: 'conflicts', id: 'conflicts' });
    for (const c of incident.conflicts) {
      list.append(el('li', {}, `${t(`action.${c.transition.action}`)} · `, personNode(c.transition.actor_name, c.transition.actor),
        ` · ${formatTime(c.transition.at_ms)}: ${c.reason}`));
    }
    main.append(el('section', { class: 'card warn' }, el('h2', {}, t('incident.conflicts')), el('p', { class: 'muted small' }, t('incident.conflicts_help')), list));
  }

  const comments = el('ul', { class: 'comments', id: 'comments' },
    ...incident.comments.map((c) => el('li', {}, el('strong', {}, personNode(c.author_name, c.author)), ` · ${formatTime(c.at_ms)}`, el('p', {}, c.text))));
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
