// The broadcast pages (应急广播), built for a stressful moment: what is on air now first, with the
// one stop button on its page; a form that starts from an issued warning, shows each zone's
// loudspeakers' health in words, and makes a live broadcast look and confirm differently from a
// test (the person types the number of zones); one broadcast with its receipts per zone and output
// refreshed every 2 s while it can still play.
import { getJson, postJson, upload, ApiError } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { can } from '../session.js';
import { formatTime } from '../format.js';
import { navigate } from '../router.js';
import { loadAreas, areaLabel } from '../names.js';

// The area directory, loaded as a page opens (it never fails; without it areas show as codes).
let areaDir = null;
import { startView } from '../view.js';
import {
  LEVELS, MODES, HISTORY, MAX_TEXT, MAX_REPEAT, MAX_RECORDING_MS, isActive, isLive, spokenText, charCount,
  reachable, groupZones, healthCounts, healthText, confirmMatches, orderProblem, orderBody, warningPrefill,
  pickRecorderType, recordingName, acceptableAudio, clock, splitList, sortReceipts, correctionText, startAtFrom,
  parseSchedule, platformOrigin,
} from '../broadcast-logic.js';

const LIST_REFRESH_MS = 5000;
const DETAIL_REFRESH_MS = 2000;
const HEALTH_REFRESH_MS = 15000;

// "{n}" and friends filled into a text.
const fill = (key, vars) => t(key).replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ''));
const levelName = (level) => (level ? t(`blevel.${level}`) : '—');
const stateName = (state) => t(`bstate.${state}`);
const errorText = (error) => (error instanceof ApiError ? error.message : t('common.unreachable'));

// Zone names by id, from /api/v1/pa/zones; a zone of another node (an area code) keeps its id.
const zoneNames = new Map();
const zoneName = (id) => zoneNames.get(id) || id;
const zoneList = (ids) => (ids || []).map(zoneName).join('、') || '—';

async function loadZones() {
  const data = await getJson('/api/v1/pa/zones');
  for (const z of data.zones) zoneNames.set(z.id, z.name || z.id);
  return data.zones;
}

// The mode in a word and as a badge: test and exercise say so in both languages' letters too.
function modeBadge(mode) {
  return el('span', { class: `badge mode-badge mode-${mode}`, 'data-mode': mode }, t(`bmode_badge.${mode}`));
}

// A card's look: live ones in their level's colour, test and exercise in the quiet dashed style.
function lookClass(mode, level) {
  if (!mode) return 'look-none';
  return isLive(mode) ? `look-live level-${level || 'none'}` : `look-drill mode-${mode}`;
}

function card(b) {
  return el('li', { class: `broadcast-card ${lookClass(b.mode, b.level)}`, 'data-id': b.id, 'data-state': b.state },
    el('a', { href: `/broadcasts/${b.id}`, 'data-link': true },
      el('span', { class: 'broadcast-card-head' },
        el('strong', { class: 'broadcast-level' }, `${levelName(b.level)} · ${stateName(b.state)}`),
        modeBadge(b.mode),
        b.corrects ? el('span', { class: 'badge' }, t('broadcasts.is_correction')) : null),
      el('span', { class: 'broadcast-text' }, b.text || t('broadcasts.voice_message')),
      el('span', { class: 'muted small' }, `${t('broadcasts.zones')}：${zoneList(b.zones)}`),
      el('span', { class: 'muted small' }, `${formatTime(b.start_ms)}${b.requester ? ` · ${b.requester}` : ''}`)));
}

// ---------------------------------------------------------------------------------------------
// The list page: on air now, the form, then the history.

export async function renderList(main) {
  clear(main);
  areaDir = await loadAreas();
  const view = startView();
  const activeBox = el('section', { id: 'broadcasts-active-box', 'aria-labelledby': 'broadcasts-active-title' },
    el('h2', { id: 'broadcasts-active-title' }, t('broadcasts.active')),
    el('p', { class: 'loading' }, t('common.loading')));
  const historyBox = el('section', { id: 'broadcasts-history-box', 'aria-labelledby': 'broadcasts-history-title' });
  main.append(el('h1', { 'data-i18n': 'page.broadcast' }, t('page.broadcast')), activeBox);
  const zones = loadZones();
  if (can('POST', '/api/v1/broadcasts')) {
    const formBox = el('section', { id: 'broadcast-form-box' });
    main.append(formBox);
    buildForm(formBox, view, zones);
  }
  main.append(historyBox);
  // Zone names make the cards readable, but what is on air must not wait long for them.
  await Promise.race([zones.catch(() => null), new Promise((resolve) => { setTimeout(resolve, 1500); })]);
  if (!view.alive) return;
  const lists = { signature: null, failed: false };
  const refresh = () => fillLists(activeBox, historyBox, view, lists);
  await refresh();
  view.every(LIST_REFRESH_MS, () => { if (!document.hidden) refresh(); });
  view.listen(document, 'visibilitychange', () => { if (!document.hidden) refresh(); });
}

async function fillLists(activeBox, historyBox, view, lists) {
  let active;
  let history;
  try {
    [active, history] = await Promise.all([
      getJson('/api/v1/broadcasts?state=requested,approved,playing&limit=100', { timeoutMs: 8000 }),
      getJson(`/api/v1/broadcasts?state=${HISTORY.join(',')}&limit=30`, { timeoutMs: 8000 }),
    ]);
  } catch (error) {
    if (!view.alive) return;
    // A first failure says so with a retry; a failed refresh keeps what is shown and says it is old.
    if (lists.signature === null) {
      activeBox.replaceChildren(errorBox(errorText(error), () => fillLists(activeBox, historyBox, view, lists)));
    } else if (!lists.failed) {
      activeBox.append(el('p', { class: 'error small stale-note' }, t('broadcasts.refresh_failed')));
    }
    lists.failed = true;
    return;
  }
  if (!view.alive) return;
  const signature = JSON.stringify([active.broadcasts, history.broadcasts]);
  if (signature === lists.signature && !lists.failed) return;
  lists.signature = signature;
  lists.failed = false;
  const split = splitList([...active.broadcasts, ...history.broadcasts]);
  activeBox.replaceChildren(
    el('h2', { id: 'broadcasts-active-title' }, t('broadcasts.active')),
    split.active.length
      ? el('ul', { class: 'broadcast-list', id: 'broadcasts-active' }, ...split.active.map(card))
      : el('p', { class: 'muted', id: 'broadcasts-none' }, t('broadcasts.none_active')));
  historyBox.replaceChildren(
    el('h2', { id: 'broadcasts-history-title' }, t('broadcasts.history')),
    split.history.length
      ? el('ul', { class: 'broadcast-list past', id: 'broadcasts-history' }, ...split.history.map(card))
      : el('p', { class: 'muted' }, t('broadcasts.none_history')));
}

// ---------------------------------------------------------------------------------------------
// The order form.

async function buildForm(box, view, zonesPromise) {
  box.replaceChildren(el('p', { class: 'loading' }, t('common.loading')));
  let zones;
  try {
    zones = await zonesPromise;
  } catch (error) {
    if (view.alive) box.replaceChildren(errorBox(errorText(error), () => buildForm(box, view, loadZones())));
    return;
  }
  // Starting from a warning is optional: without the warnings the form still works.
  const warnings = await getJson('/api/v1/warnings?state=issued').then((d) => d.warnings, () => []);
  if (!view.alive) return;
  box.replaceChildren(orderForm(zones, warnings, view));
}

function orderForm(zones, warnings, view) {
  const label = (id, key) => el('label', { for: id }, t(key));
  let mode = 'live';
  let prefilled = '';
  // The audio message to send instead of text: { file, url, from: 'recording' | 'file' }.
  let audio = null;
  let busy = false;

  const form = el('form', { class: 'card form broadcast-form', id: 'broadcast-form', novalidate: true, 'aria-labelledby': 'b-form-title' });
  const lookBadge = el('span', { id: 'b-mode-badge' });

  // Mode: three clearly separate choices, live first.
  const modeInputs = new Map();
  const modeLabels = new Map();
  for (const m of MODES) {
    const input = el('input', { type: 'radio', name: 'mode', value: m, id: `b-mode-${m}`, checked: m === mode });
    modeInputs.set(m, input);
    modeLabels.set(m, el('label', { class: `mode-choice mode-${m}`, for: `b-mode-${m}` }, input,
      el('span', { class: 'mode-choice-text' }, el('strong', {}, t(`bmode.${m}`)), el('span', { class: 'small' }, t(`bmode_help.${m}`)))));
  }
  const modeSet = el('fieldset', { class: 'mode-choices', id: 'b-mode' }, el('legend', {}, t('broadcasts.mode')), ...modeLabels.values());

  // Start from an issued warning.
  const warningSelect = el('select', { id: 'b-warning', name: 'warning' },
    el('option', { value: '' }, t('broadcasts.no_warning')),
    ...warnings.map((w) => el('option', { value: w.id }, `${w.level ? `${t(`level.${w.level}`)} · ` : ''}${w.headline}`)));
  const warningNote = el('p', { class: 'muted small', id: 'b-warning-note' }, warnings.length ? '' : t('broadcasts.no_issued_warning'));

  // Zones by village, each with its outputs' health in words.
  const zoneItems = [];
  const zoneGroups = [];
  const zoneSet = el('fieldset', { class: 'zone-groups', id: 'b-zones' }, el('legend', {}, t('broadcasts.zones')));
  const zoneCount = el('p', { class: 'small', id: 'b-zone-count', 'aria-live': 'polite' });
  groupZones(zones).forEach((group, g) => {
    const all = el('input', { type: 'checkbox', id: `b-all-${g}`, class: 'zone-all', 'aria-label': fill('broadcasts.select_all', { area: group.area ? areaLabel(areaDir, group.area) : '—' }) });
    const items = group.zones.map((zone) => {
      const i = zoneItems.length;
      const input = el('input', { type: 'checkbox', name: 'zone', value: zone.id, id: `b-zone-${i}`, 'aria-describedby': `b-zone-health-${i}` });
      const health = el('span', { class: 'zone-health small', id: `b-zone-health-${i}` });
      const item = { zone, input, health, group: g };
      zoneItems.push(item);
      return el('label', { class: 'check zone', for: `b-zone-${i}` }, input, el('span', { class: 'zone-name' }, zone.name || zone.id), health);
    });
    zoneGroups.push({ all, items: zoneItems.filter((z) => z.group === g) });
    all.addEventListener('change', () => {
      for (const item of zoneItems) if (item.group === g) item.input.checked = all.checked;
      update();
    });
    zoneSet.append(el('fieldset', { class: 'zone-group' },
      el('legend', {}, fill('broadcasts.village', { area: group.area ? areaLabel(areaDir, group.area) : '—' })),
      el('label', { class: 'check select-all', for: `b-all-${g}` }, all, el('span', {}, t('broadcasts.select_all_short'))),
      ...items));
  });
  if (!zones.length) zoneSet.append(el('p', { class: 'error', id: 'b-no-zones' }, t('broadcasts.no_zones')));
  zoneSet.append(zoneCount);

  const level = el('select', { id: 'b-level', name: 'level' }, ...LEVELS.map((l) => el('option', { value: l }, levelName(l))));

  const text = el('textarea', { id: 'b-text', name: 'text', rows: 4, maxlength: MAX_TEXT, 'aria-describedby': 'b-text-count b-text-note' });
  const textCount = el('p', { class: 'muted small counter', id: 'b-text-count' });
  const textNote = el('p', { class: 'small notice', id: 'b-text-note', hidden: true }, t('broadcasts.audio_replaces_text'));

  const voice = voicePart(view, (next) => { audio = next; update(); });

  const repeat = el('input', { id: 'b-repeat', name: 'repeat', type: 'number', min: 1, max: MAX_REPEAT, step: 1, value: 2, inputmode: 'numeric', required: true });
  const start = el('input', { id: 'b-start', name: 'start_at', type: 'datetime-local' });
  // Routine programmes may play every day at set times (Beijing) until they expire.
  const schedule = el('input', { id: 'b-schedule', name: 'schedule', type: 'text', inputmode: 'numeric', autocomplete: 'off', placeholder: '07:30, 18:00', 'aria-describedby': 'b-schedule-note' });
  const scheduleNote = el('p', { class: 'muted small', id: 'b-schedule-note' }, t('broadcasts.schedule_note'));
  const scheduleBox = el('div', { id: 'b-schedule-box', hidden: true }, label('b-schedule', 'broadcasts.schedule'), schedule, scheduleNote);

  const speech = 'speechSynthesis' in window && typeof window.SpeechSynthesisUtterance === 'function';
  const preview = el('button', { type: 'button', class: 'secondary', id: 'b-preview', hidden: !speech }, t('broadcasts.preview'));
  const previewNote = el('p', { class: 'muted small', id: 'b-preview-note', 'aria-live': 'polite' });

  const summary = el('p', { class: 'order-summary', id: 'b-summary', 'aria-live': 'polite' });
  const error = el('p', { class: 'error', role: 'alert', id: 'b-error' });
  const progress = el('p', { class: 'muted small', id: 'b-progress' });
  const submit = el('button', { type: 'submit', id: 'b-submit', class: 'order-submit' });

  form.append(
    el('div', { class: 'form-head' }, el('h2', { id: 'b-form-title' }, t('broadcasts.new')), lookBadge),
    modeSet,
    label('b-warning', 'broadcasts.from_warning'), warningSelect, warningNote,
    zoneSet,
    label('b-level', 'broadcasts.level'), level,
    label('b-text', 'broadcasts.text'), text, textCount, textNote,
    voice.part,
    label('b-repeat', 'broadcasts.repeat'), repeat,
    label('b-start', 'broadcasts.start_at'), start,
    scheduleBox,
    el('div', { class: 'row' }, preview), previewNote,
    summary, error, progress, submit);
  markRequired(form);

  const chosen = () => zoneItems.filter((z) => z.input.checked).map((z) => z.zone);

  function paintHealth() {
    for (const item of zoneItems) {
      const outputs = reachable(item.zone, mode);
      if (!outputs.length) {
        item.health.textContent = t(isLive(mode) ? 'broadcasts.no_outputs' : 'broadcasts.no_test_outputs');
        item.health.dataset.health = 'none';
        continue;
      }
      const counts = healthCounts(outputs);
      const words = healthText(counts, (s) => t(`bhealth.${s}`));
      item.health.textContent = isLive(mode) ? words : `${t('broadcasts.test_outputs')} ${words}`;
      item.health.dataset.health = counts.ok === counts.total ? 'ok' : 'bad';
    }
  }

  function update() {
    form.className = `card form broadcast-form ${lookClass(mode, level.value)}`;
    lookBadge.replaceChildren(modeBadge(mode));
    for (const [m, l] of modeLabels) l.classList.toggle('selected', m === mode);
    for (const group of zoneGroups) {
      const on = group.items.filter((z) => z.input.checked).length;
      group.all.checked = on > 0 && on === group.items.length;
      group.all.indeterminate = on > 0 && on < group.items.length;
    }
    const n = chosen().length;
    zoneCount.textContent = fill('broadcasts.zones_chosen', { n });
    textCount.textContent = `${charCount(text.value)}/${MAX_TEXT}`;
    text.disabled = Boolean(audio);
    textNote.hidden = !audio;
    scheduleBox.hidden = level.value !== 'routine';
    submit.textContent = t(`broadcasts.submit.${mode}`);
    summary.textContent = fill(`broadcasts.summary.${mode}`, {
      n, level: levelName(level.value), repeat: repeat.value || '—',
    });
    paintHealth();
  }

  for (const input of modeInputs.values()) {
    input.addEventListener('change', () => { if (input.checked) { mode = input.value; update(); } });
  }
  for (const item of zoneItems) item.input.addEventListener('change', update);
  level.addEventListener('change', update);
  repeat.addEventListener('input', update);
  text.addEventListener('input', update);

  warningSelect.addEventListener('change', () => {
    const w = warnings.find((x) => x.id === warningSelect.value);
    warningNote.textContent = '';
    if (!w) return;
    const p = warningPrefill(w);
    // A text the person wrote is kept; an empty one, or the last warning's, is replaced.
    if (!text.value.trim() || text.value === prefilled) {
      text.value = p.text;
      prefilled = p.text;
    } else {
      warningNote.textContent = t('broadcasts.text_kept');
    }
    if (p.level) level.value = p.level;
    if (p.mode) {
      mode = p.mode;
      modeInputs.get(mode).checked = true;
    }
    update();
  });

  // Hearing it before anyone else does: the browser's own voice, with the test words around it.
  let speaking = false;
  const stopSpeech = () => {
    if (speech && speaking) window.speechSynthesis.cancel();
    speaking = false;
    preview.textContent = t('broadcasts.preview');
  };
  view.add(stopSpeech);
  preview.addEventListener('click', () => {
    if (speaking) { stopSpeech(); return; }
    previewNote.textContent = '';
    const words = text.value.trim();
    if (!words) { previewNote.textContent = t('broadcasts.preview_empty'); return; }
    const utterance = new window.SpeechSynthesisUtterance(spokenText(mode, words));
    utterance.lang = 'zh-CN';
    const voiceZh = window.speechSynthesis.getVoices().find((v) => /^zh([-_]CN)?/i.test(v.lang));
    if (voiceZh) utterance.voice = voiceZh;
    utterance.rate = 0.9;
    utterance.onend = () => stopSpeech();
    utterance.onerror = () => { stopSpeech(); previewNote.textContent = t('broadcasts.preview_failed'); };
    window.speechSynthesis.cancel();
    window.speechSynthesis.speak(utterance);
    speaking = true;
    preview.textContent = t('broadcasts.preview_stop');
  });

  const focusField = (field) => {
    const target = {
      zones: zoneItems[0]?.input, text: text.disabled ? voice.focusTarget() : text, text_long: text, level,
      repeat, mode: modeInputs.get(mode), warning: warningSelect, start_at: start, file: voice.focusTarget(),
    }[field];
    if (target) target.focus();
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (busy) return;
    error.textContent = '';
    const zonesChosen = chosen();
    const repeatValue = Number(repeat.value);
    const problem = orderProblem({ text: text.value, zones: zonesChosen, hasAudio: Boolean(audio), repeat: repeatValue });
    if (problem) {
      error.textContent = t(`broadcasts.problem.${problem}`);
      focusField(problem);
      return;
    }
    const startAt = startAtFrom(start.value);
    if (startAt === undefined) {
      error.textContent = t('broadcasts.problem.start_at');
      focusField('start_at');
      return;
    }
    if (level.value === 'routine' && parseSchedule(schedule.value).bad.length) {
      error.textContent = t('broadcasts.problem.schedule');
      schedule.focus();
      return;
    }
    const ok = await confirmOrder(form, { mode, level: level.value, zones: zonesChosen });
    if (!ok) { submit.focus(); return; }
    busy = true;
    submit.disabled = true;
    stopSpeech();
    let created = null;
    try {
      created = await postJson('/api/v1/broadcasts', orderBody({
        text: text.value, zones: zonesChosen.map((z) => z.id), mode, level: level.value, repeat: repeatValue,
        warning: warningSelect.value, startAt, hasAudio: Boolean(audio), schedule: parseSchedule(schedule.value).times,
      }));
      if (audio) {
        progress.textContent = t('broadcasts.uploading');
        await upload(`/api/v1/broadcasts/${created.id}/audio`, audio.file, (p) => {
          progress.textContent = `${t('broadcasts.uploading')} ${Math.round(p * 100)}%`;
        });
      }
      navigate(`/broadcasts/${created.id}`);
    } catch (err) {
      if (created) {
        // The order exists but its audio did not arrive: withdraw it, so nothing waits half made,
        // and keep the form (and the recording) for another try.
        let withdrawn = false;
        try {
          await postJson(`/api/v1/broadcasts/${created.id}/transitions`, { action: 'cancel', note: t('broadcasts.audio_failed_note') });
          withdrawn = true;
        } catch (_) { /* the link below leads to it */ }
        error.replaceChildren(`${t('broadcasts.audio_failed')} ${errorText(err)} `,
          withdrawn ? t('broadcasts.audio_withdrawn') : '',
          ' ', el('a', { href: `/broadcasts/${created.id}`, 'data-link': true }, t('broadcasts.open_it')));
        focusField('file');
      } else {
        error.textContent = errorText(err);
        focusField(err instanceof ApiError ? err.field : null);
      }
    } finally {
      busy = false;
      submit.disabled = false;
      progress.textContent = '';
    }
  });

  // Health changes while the form is open (a speaker goes offline): refresh the words only.
  view.every(HEALTH_REFRESH_MS, async () => {
    if (document.hidden) return;
    try {
      const fresh = await loadZones();
      if (!view.alive) return;
      for (const item of zoneItems) {
        const z = fresh.find((f) => f.id === item.zone.id);
        if (z) item.zone = z;
      }
      paintHealth();
    } catch (_) { /* keep the last words; the order itself reports what it reaches */ }
  });

  update();
  return form;
}

// The voice message: record in the browser where it may (a secure context with a microphone and
// a recorder that makes WebM or Ogg), or choose a file; either replaces the text.
function voicePart(view, onChange) {
  const status = el('span', { class: 'small', id: 'b-record-status', 'aria-live': 'polite' });
  const record = el('button', { type: 'button', class: 'secondary', id: 'b-record' }, t('broadcasts.record'));
  const player = el('audio', { controls: true, id: 'b-audio', hidden: true, 'aria-label': t('broadcasts.playback') });
  const remove = el('button', { type: 'button', class: 'secondary', id: 'b-audio-remove', hidden: true }, t('broadcasts.audio_remove'));
  const file = el('input', { type: 'file', id: 'b-audio-file', accept: 'audio/wav,audio/x-wav,audio/mpeg,audio/ogg,audio/webm,.wav,.mp3,.ogg,.opus,.webm' });
  const unavailable = el('p', { class: 'small notice', id: 'b-record-unavailable', hidden: true });
  const fileError = el('p', { class: 'error small', role: 'alert' });

  let current = null;
  let recorder = null;
  let stream = null;
  let ticker = null;
  let limit = null;

  const set = (next) => {
    if (current && current.url) URL.revokeObjectURL(current.url);
    current = next;
    player.hidden = !current;
    remove.hidden = !current;
    if (current) player.src = current.url;
    else player.removeAttribute('src');
    onChange(current);
  };

  const stopTracks = () => {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    clearInterval(ticker);
    clearTimeout(limit);
  };

  const type = typeof window.MediaRecorder === 'function'
    ? pickRecorderType((m) => window.MediaRecorder.isTypeSupported(m)) : null;
  const canRecord = window.isSecureContext && Boolean(navigator.mediaDevices?.getUserMedia) && Boolean(type);
  if (!canRecord) {
    record.hidden = true;
    unavailable.hidden = false;
    unavailable.textContent = !window.isSecureContext ? t('broadcasts.record_needs_https')
      : t('broadcasts.record_unsupported');
  }

  const stopRecording = () => {
    if (recorder && recorder.state !== 'inactive') recorder.stop();
  };

  record.addEventListener('click', async () => {
    if (recorder && recorder.state === 'recording') { stopRecording(); return; }
    fileError.textContent = '';
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (e) {
      status.textContent = `${t('broadcasts.mic_denied')} ${e.message || ''}`;
      return;
    }
    if (!view.alive) { stopTracks(); return; }
    const chunks = [];
    recorder = new window.MediaRecorder(stream, { mimeType: type });
    recorder.addEventListener('dataavailable', (e) => { if (e.data && e.data.size) chunks.push(e.data); });
    recorder.addEventListener('stop', () => {
      stopTracks();
      record.textContent = t('broadcasts.record_again');
      record.classList.remove('recording');
      record.setAttribute('aria-pressed', 'false');
      if (!view.alive) return;
      const mime = (recorder.mimeType || type).split(';')[0];
      const blob = new Blob(chunks, { type: mime });
      if (!blob.size) { status.textContent = t('broadcasts.record_empty'); return; }
      file.value = '';
      const recorded = new File([blob], recordingName(mime), { type: mime });
      set({ file: recorded, url: URL.createObjectURL(blob), from: 'recording' });
      status.textContent = fill('broadcasts.recorded', { time: clock(Date.now() - began) });
    });
    const began = Date.now();
    recorder.start(1000);
    record.textContent = t('broadcasts.record_stop');
    record.classList.add('recording');
    record.setAttribute('aria-pressed', 'true');
    status.textContent = `${t('broadcasts.recording')} 0:00`;
    ticker = setInterval(() => { status.textContent = `${t('broadcasts.recording')} ${clock(Date.now() - began)}`; }, 1000);
    limit = setTimeout(stopRecording, MAX_RECORDING_MS);
  });

  file.addEventListener('change', () => {
    fileError.textContent = '';
    const chosen = file.files && file.files[0];
    if (!chosen) return;
    if (!acceptableAudio(chosen)) {
      fileError.textContent = t('broadcasts.audio_type');
      file.value = '';
      return;
    }
    status.textContent = chosen.name;
    set({ file: chosen, url: URL.createObjectURL(chosen), from: 'file' });
  });

  remove.addEventListener('click', () => {
    file.value = '';
    status.textContent = '';
    record.textContent = t('broadcasts.record');
    set(null);
    (record.hidden ? file : record).focus();
  });

  // Leaving the page stops the microphone and frees the recording.
  const release = () => {
    stopRecording();
    stopTracks();
    if (current && current.url) URL.revokeObjectURL(current.url);
  };
  view.add(release);

  const part = el('fieldset', { class: 'voice', id: 'b-voice' },
    el('legend', {}, t('broadcasts.voice')),
    el('p', { class: 'muted small' }, t('broadcasts.voice_help')),
    el('div', { class: 'row' }, record, status),
    unavailable,
    player,
    el('label', { for: 'b-audio-file' }, t('broadcasts.audio_file')), file,
    fileError,
    el('div', { class: 'row' }, remove));
  return { part, focusTarget: () => (record.hidden ? file : record) };
}

// ---------------------------------------------------------------------------------------------
// Dialogs: in the page, a <dialog> where the browser has one, never window.prompt.

function openDialog(host, { id, title, content, confirmText, danger = false, field = null, check = null }) {
  return new Promise((resolve) => {
    const returnTo = document.activeElement;
    const ok = el('button', { type: 'submit', id: `${id}-ok`, class: danger ? 'danger-fill' : '' }, confirmText);
    const cancel = el('button', { type: 'button', class: 'secondary', id: `${id}-cancel` }, t('broadcasts.dialog_cancel'));
    const form = el('form', { class: 'dialog-form' },
      el('h2', { id: `${id}-title` }, title), ...content, el('div', { class: 'row dialog-actions' }, cancel, ok));
    const dialog = el('dialog', { id, class: 'confirm-dialog', 'aria-labelledby': `${id}-title`, 'aria-modal': 'true' }, form);
    let done = false;
    const finish = (answer) => {
      if (done) return;
      done = true;
      if (dialog.open && typeof dialog.close === 'function') dialog.close();
      dialog.remove();
      if (returnTo && returnTo.isConnected && typeof returnTo.focus === 'function') returnTo.focus();
      resolve(answer);
    };
    const recheck = () => { if (check) ok.disabled = !check(); };
    if (field) field.addEventListener('input', recheck);
    recheck();
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (check && !check()) return;
      finish(true);
    });
    cancel.addEventListener('click', () => finish(false));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); finish(false); });
    host.append(dialog);
    if (typeof dialog.showModal === 'function') dialog.showModal();
    else dialog.setAttribute('open', '');
    (field || cancel).focus();
  });
}

// A live broadcast is confirmed by typing the number of zones; a test or exercise by a plain yes.
function confirmOrder(form, { mode, level, zones }) {
  const n = zones.length;
  const where = el('p', { class: 'small' }, `${t('broadcasts.zones')}：${zones.map((z) => z.name || z.id).join('、')}`);
  const host = form.parentNode || document.body;
  if (isLive(mode)) {
    const count = el('input', { id: 'b-confirm-count', type: 'text', inputmode: 'numeric', autocomplete: 'off', maxlength: 3, required: true, 'aria-describedby': 'b-confirm-where' });
    where.id = 'b-confirm-where';
    return openDialog(host, {
      id: 'b-confirm',
      title: t('broadcasts.confirm_live_title'),
      content: [
        el('p', { class: `confirm-level look-live level-${level}` }, `${levelName(level)} · ${t('bmode.live')}`),
        where,
        el('label', { for: 'b-confirm-count', class: 'confirm-question' }, fill('broadcasts.confirm_live', { n })),
        count,
      ],
      confirmText: t('broadcasts.confirm_live_ok'),
      danger: true,
      field: count,
      check: () => confirmMatches(count.value, n),
    });
  }
  return openDialog(host, {
    id: 'b-confirm',
    title: t(`broadcasts.confirm_${mode}_title`),
    content: [el('p', { class: 'confirm-question' }, fill(`broadcasts.confirm_${mode}`, { n })), where],
    confirmText: t('broadcasts.confirm_drill_ok'),
  });
}

// ---------------------------------------------------------------------------------------------
// One broadcast.

export async function renderDetail(main, { id }) {
  clear(main);
  areaDir = await loadAreas();
  const view = startView();
  const retry = () => navigate(location.pathname, { push: false });
  let b;
  try {
    [b] = await Promise.all([
      getJson(`/api/v1/broadcasts/${encodeURIComponent(id)}`),
      loadZones().catch(() => null),
    ]);
  } catch (error) {
    if (!view.alive) return;
    main.append(el('p', { class: 'back' }, el('a', { href: '/broadcasts', 'data-link': true }, `← ${t('page.broadcast')}`)),
      errorBox(error.status === 404 ? t('notfound.body') : errorText(error), error.status === 404 ? null : retry));
    return;
  }
  if (!view.alive) return;

  const title = el('h1', { id: 'broadcast-title' });
  const stateLine = el('p', { id: 'broadcast-state', class: 'state-big', role: 'status' });
  const meta = el('p', { class: 'broadcast-meta', id: 'broadcast-meta' });
  const actions = el('section', { class: 'card broadcast-actions', id: 'broadcast-actions', 'aria-label': t('broadcasts.actions'), hidden: true });
  const message = el('p', { class: 'error', role: 'alert', id: 'broadcast-message' });
  const body = el('div', { class: 'broadcast-body' });
  const facts = el('dl', { class: 'facts', id: 'broadcast-facts' });
  // What it is and where it stands, then the stop button, then the rest: on a phone the stop
  // button is on the first screen however long the text.
  const top = el('section', { class: 'card broadcast-detail', id: 'broadcast-detail' }, title, stateLine, meta);
  const content = el('section', { class: 'card broadcast-content', id: 'broadcast-content' }, body, facts);
  const receiptsBox = el('section', { class: 'card', id: 'broadcast-receipts-box', 'aria-labelledby': 'broadcast-receipts-title' });
  const timelineBox = el('section', { class: 'card', id: 'broadcast-timeline' });
  const conflictsBox = el('section', { class: 'card', id: 'broadcast-conflicts', hidden: true });
  const liveNote = el('p', { class: 'muted small', id: 'broadcast-live-note' });
  main.append(
    el('p', { class: 'back' }, el('a', { href: '/broadcasts', 'data-link': true }, `← ${t('page.broadcast')}`)),
    top, actions, message, content, receiptsBox, timelineBox, conflictsBox, liveNote);

  // Parts are rebuilt only when what they show changed, so a 2 s refresh never takes the focus
  // off a button or restarts the audio player.
  const shown = new Map();
  const changed = (key, value) => {
    const signature = JSON.stringify(value);
    if (shown.get(key) === signature) return false;
    shown.set(key, signature);
    return true;
  };

  const act = async (bodyJson, button) => {
    message.textContent = '';
    if (button) button.disabled = true;
    try {
      const next = await postJson(`/api/v1/broadcasts/${b.id}/transitions`, bodyJson);
      if (bodyJson.action === 'correct' && next.correction) {
        navigate(`/broadcasts/${next.correction}`);
        return;
      }
      if (view.alive) paint(next);
    } catch (error) {
      if (view.alive) message.textContent = errorText(error);
    } finally {
      if (button) button.disabled = false;
    }
  };

  function paint(next) {
    b = next;
    const live = isLive(b.mode);
    top.className = `card broadcast-detail ${lookClass(b.mode, b.level)}`;
    if (changed('title', [b.level, b.mode])) {
      title.textContent = b.mode ? `${levelName(b.level)} · ${t(`bmode.${b.mode}`)}` : t('page.broadcast');
      meta.replaceChildren(...[b.mode ? modeBadge(b.mode) : null,
        b.corrects ? el('span', { class: 'badge' }, t('broadcasts.is_correction')) : null].filter(Boolean));
    }
    if (changed('state', b.state)) {
      stateLine.dataset.state = b.state;
      stateLine.replaceChildren(el('span', { class: `state-badge bstate-${b.state}` }, stateName(b.state)));
    }
    if (changed('body', [b.text, b.spoken_text, b.audio, b.void, b.mode])) paintBody(live);
    if (changed('facts', [b.zones, b.repeat, b.start_at, b.expires_at, b.requester, platformOrigin(b), b.approver, b.needs_second, b.started_ms, b.ended_ms, b.warning, b.corrects, b.correction, b.rule, b.area, b.state])) paintFacts();
    if (changed('actions', [b.allowed_actions, b.state, b.needs_second, Boolean(b.text || b.audio)])) paintActions();
    if (changed('receipts', [b.receipts, b.receipt_log, b.zones, b.state])) paintReceipts();
    if (changed('timeline', b.transitions)) paintTimeline();
    if (changed('conflicts', b.conflicts)) paintConflicts();
    liveNote.textContent = isActive(b.state) ? fill('broadcasts.refreshing', { time: formatTime(Date.now(), { seconds: true, date: false }) }) : '';
  }

  function paintBody(live) {
    const parts = [];
    if (b.void) parts.push(el('p', { class: 'error' }, `${t('broadcasts.void')} ${b.void}`));
    if (b.text) parts.push(el('p', { class: 'broadcast-full-text', id: 'broadcast-text' }, b.text));
    if (!live && b.text && b.spoken_text && b.spoken_text !== b.text) {
      parts.push(el('p', { class: 'muted small' }, `${t('broadcasts.spoken')}：${b.spoken_text}`));
    }
    if (b.audio) {
      parts.push(el('p', {}, `${t('broadcasts.voice_message')} · ${clock(b.audio.duration_ms)}`));
      // The node hands audio to broadcasters only (the same people who may order).
      if (can('POST', '/api/v1/broadcasts')) {
        parts.push(el('audio', { controls: true, preload: 'none', src: `/api/v1/pa/audio/${b.audio.sha256}`, 'aria-label': t('broadcasts.playback') }));
      }
    } else if (!b.text) {
      parts.push(el('p', { class: 'notice' }, t('broadcasts.waiting_audio')));
    }
    body.replaceChildren(...parts);
  }

  function paintFacts() {
    const rows = [];
    const fact = (key, value) => { if (value !== null && value !== undefined && value !== '') rows.push(el('dt', {}, t(key)), el('dd', {}, value)); };
    const link = (href, text) => el('a', { href, 'data-link': true }, text);
    fact('broadcasts.zones', zoneList(b.zones));
    fact('broadcasts.repeat_fact', b.repeat ? fill('broadcasts.times', { n: b.repeat }) : null);
    fact('broadcasts.start', b.start_at ? formatTime(Date.parse(b.start_at)) : null);
    fact('broadcasts.expires', b.expires_at ? formatTime(Date.parse(b.expires_at)) : null);
    // An order of the emergency-broadcast platform says so, with its ids, instead of "system".
    const origin = platformOrigin(b);
    if (origin) {
      fact('broadcasts.origin', t('broadcasts.from_platform'));
      fact('broadcasts.ebm_id', origin.ebmId);
      fact('broadcasts.ebd_src', origin.src);
    } else {
      fact('broadcasts.requester', b.requester);
    }
    fact('broadcasts.approver', b.approver || (b.needs_second ? t('broadcasts.approver_pending') : t('broadcasts.approver_none')));
    fact('broadcasts.started', b.started_ms ? formatTime(b.started_ms, { seconds: true }) : null);
    fact('broadcasts.ended', b.ended_ms ? formatTime(b.ended_ms, { seconds: true }) : null);
    if (b.warning) fact('broadcasts.warning', link(`/warnings/${b.warning}`, t('broadcasts.open_warning')));
    fact('broadcasts.rule', b.rule);
    if (b.corrects) fact('broadcasts.corrects', link(`/broadcasts/${b.corrects}`, t('broadcasts.open_corrected')));
    if (b.correction) fact('broadcasts.correction', link(`/broadcasts/${b.correction}`, t('broadcasts.open_correction')));
    fact('broadcasts.area', areaLabel(areaDir, b.area));
    facts.replaceChildren(...rows);
  }

  function paintActions() {
    const parts = [];
    const allowed = b.allowed_actions || [];
    // One stop button, first and largest: stopping must never be hunted for.
    if (allowed.includes('cancel')) {
      const stop = el('button', { type: 'button', class: 'stop-button', id: 'broadcast-stop' }, t('broadcasts.stop'));
      stop.addEventListener('click', () => act({ action: 'cancel' }, stop));
      parts.push(stop);
    }
    if (b.state === 'requested') {
      parts.push(el('p', { class: 'notice', id: 'broadcast-approve-help' },
        t(allowed.includes('approve') ? 'broadcasts.approve_help' : 'broadcasts.waiting_second')));
    }
    if (allowed.includes('approve')) {
      const approve = el('button', { type: 'button', id: 'broadcast-approve', 'aria-describedby': 'broadcast-approve-help' }, t('broadcasts.approve'));
      approve.addEventListener('click', () => act({ action: 'approve' }, approve));
      parts.push(approve);
    }
    if (!b.text && !b.audio && isActive(b.state) && can('POST', '/api/v1/broadcasts/{id}/audio')) parts.push(audioUpload());
    if (allowed.includes('correct')) {
      const correct = el('button', { type: 'button', class: 'secondary', id: 'broadcast-correct' }, t('broadcasts.correct'));
      correct.addEventListener('click', async () => {
        const note = el('textarea', { id: 'b-correct-note', rows: 3, maxlength: 500 });
        const preview = el('p', { class: 'correction-preview', id: 'b-correct-preview' });
        // The note goes into the record (and the audit log); what plays is the fixed correction.
        preview.textContent = correctionText(b.text);
        const ok = await openDialog(main, {
          id: 'b-correct',
          title: t('broadcasts.correct'),
          content: [
            el('p', {}, t('broadcasts.correct_help')),
            el('label', { for: 'b-correct-note' }, t('broadcasts.correct_note')), note,
            el('p', { class: 'muted small' }, t('broadcasts.correct_preview')), preview,
          ],
          confirmText: t('broadcasts.correct_ok'),
          field: note,
        });
        if (ok) act({ action: 'correct', note: note.value.trim() }, correct);
      });
      parts.push(correct);
    }
    actions.replaceChildren(...parts);
    actions.hidden = parts.length === 0;
  }

  // An order whose audio never arrived can be given it here.
  function audioUpload() {
    const input = el('input', { type: 'file', id: 'b-detail-audio', accept: 'audio/wav,audio/x-wav,audio/mpeg,audio/ogg,audio/webm,.wav,.mp3,.ogg,.opus,.webm' });
    const send = el('button', { type: 'button', class: 'secondary' }, t('broadcasts.audio_upload'));
    const progress = el('span', { class: 'muted small' });
    send.addEventListener('click', async () => {
      const chosen = input.files && input.files[0];
      message.textContent = '';
      if (!chosen || !acceptableAudio(chosen)) { message.textContent = t('broadcasts.audio_type'); input.focus(); return; }
      send.disabled = true;
      try {
        const next = await upload(`/api/v1/broadcasts/${b.id}/audio`, chosen, (p) => { progress.textContent = `${Math.round(p * 100)}%`; });
        if (view.alive) paint(next);
      } catch (error) {
        message.textContent = errorText(error);
      } finally {
        send.disabled = false;
      }
    });
    return el('div', { class: 'form' }, el('label', { for: 'b-detail-audio' }, t('broadcasts.audio_file')), input, el('div', { class: 'row' }, send, progress));
  }

  function paintReceipts() {
    const rows = sortReceipts(b.receipts).map((r) => el('tr', { 'data-zone': r.zone, 'data-output': r.output, 'data-state': r.state },
      el('td', {}, zoneName(r.zone)),
      el('td', {}, r.output),
      el('td', {}, el('span', { class: `badge rstate-${r.state}` }, t(`breceipt.${r.state}`))),
      el('td', { class: 'wrap' }, r.detail || ''),
      // A broadcast lasts minutes: the clock alone keeps the table narrow on a phone.
      el('td', {}, formatTime(r.at_ms, { seconds: true, date: false }))));
    // A zone with no report yet still has its row: silence is something to see, not to miss.
    const reported = new Set((b.receipts || []).map((r) => r.zone));
    for (const zone of b.zones || []) {
      if (reported.has(zone)) continue;
      rows.push(el('tr', { 'data-zone': zone, 'data-state': 'none' },
        el('td', {}, zoneName(zone)), el('td', {}, '—'),
        el('td', {}, el('span', { class: 'badge rstate-none' }, t(isActive(b.state) ? 'broadcasts.receipt_waiting' : 'broadcasts.receipt_none'))),
        el('td', {}, ''), el('td', {}, '')));
    }
    const head = ['broadcasts.col_zone', 'broadcasts.col_output', 'broadcasts.col_state', 'broadcasts.col_detail', 'broadcasts.col_time'];
    const log = b.receipt_log || [];
    const logOpen = Boolean(receiptsBox.querySelector('#broadcast-receipt-log')?.open);
    receiptsBox.replaceChildren(...[
      el('h2', { id: 'broadcast-receipts-title' }, t('broadcasts.receipts')),
      el('div', { class: 'scroll' }, el('table', { class: 'table', id: 'broadcast-receipts' },
        el('thead', {}, el('tr', {}, ...head.map((k) => el('th', { scope: 'col' }, t(k))))),
        el('tbody', {}, ...rows))),
      log.length ? el('details', { id: 'broadcast-receipt-log', open: logOpen },
        el('summary', {}, fill('broadcasts.receipt_log', { n: log.length })),
        el('ol', { class: 'timeline small' }, ...log.map((r) => el('li', {},
          `${formatTime(r.at_ms, { seconds: true })} · ${zoneName(r.zone)} · ${r.output} · ${t(`breceipt.${r.state}`)}${r.detail ? ` · ${r.detail}` : ''}`)))) : null,
    ].filter(Boolean));
  }

  function paintTimeline() {
    const fromPlatform = Boolean(platformOrigin(b));
    const who = (tr) => {
      if (tr.actor !== 'system') return tr.actor;
      // The platform's request and its cancel carry the EBMID that asked for them.
      const platformAction = tr.action === 'request' ? fromPlatform : Boolean(tr.data?.ebd_ebm_id);
      return platformAction ? t('broadcasts.from_platform') : t('broadcasts.by_node');
    };
    timelineBox.replaceChildren(el('h2', {}, t('broadcasts.timeline')),
      el('ol', { class: 'timeline' }, ...(b.transitions || []).map((tr) => {
        const data = tr.data || {};
        return el('li', {},
          el('strong', {}, t(`baction.${tr.action}`)),
          ` · ${who(tr)} · ${formatTime(tr.at_ms, { seconds: true })}`,
          data.note ? ` · ${data.note}` : '',
          data.reason ? ` · ${data.reason}` : '',
          data.correction ? el('span', {}, ' · ', el('a', { href: `/broadcasts/${data.correction}`, 'data-link': true }, t('broadcasts.open_correction'))) : null);
      })));
  }

  function paintConflicts() {
    const list = b.conflicts || [];
    conflictsBox.hidden = list.length === 0;
    conflictsBox.replaceChildren(...(list.length ? [
      el('h2', {}, t('broadcasts.conflicts')),
      el('p', { class: 'muted small' }, t('broadcasts.conflicts_help')),
      el('ul', { class: 'conflicts' }, ...list.map((c) => el('li', {},
        `${t(`baction.${c.transition.action}`)} · ${c.transition.actor} · ${formatTime(c.transition.at_ms, { seconds: true })}: ${c.reason}`))),
    ] : []));
  }

  paint(b);

  // Receipts come in while it can still play: every 2 s until it is over, not while hidden. A stop's
  // receipts arrive just after the state says so: outputs still reported as playing keep the page
  // looking, and a few more looks follow the end.
  let loading = false;
  let looksAfterEnd = 0;
  const outputsBusy = (x) => (x.receipts || []).some((r) => r.state === 'commanded' || r.state === 'started');
  view.every(DETAIL_REFRESH_MS, async () => {
    if (loading || document.hidden) return;
    if (!isActive(b.state) && !outputsBusy(b)) {
      if (looksAfterEnd >= 3) return;
      looksAfterEnd += 1;
    }
    loading = true;
    try {
      const next = await getJson(`/api/v1/broadcasts/${encodeURIComponent(b.id)}`, { timeoutMs: 8000 });
      if (view.alive) paint(next);
    } catch (_) {
      if (view.alive) liveNote.textContent = t('broadcasts.refresh_failed');
    } finally {
      loading = false;
    }
  });
}
