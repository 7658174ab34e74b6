// Choosing an area by its name: a list of the named areas inside the person's own (from names.js), the
// chosen one's code on a small line under it, and "其他（输入代码）" for a code the directory does not
// name, which opens a field to type it. With no named area to offer (none configured, or the phone
// never had the directory) it is the plain code field it replaces.
//
// Returns the nodes to put into a one-column form (labels right above their controls), and
// value()/setValue(code)/control() for the page; `change` events bubble from the controls as usual.
import { t } from './i18n.js';
import { el } from './dom.js';
import { areasWithin } from './incidents-logic.js';

const OTHER = '__other';
const CODE_PATTERN = '[0-9]{6}([0-9]{3}){0,2}';

function labelFor(id, key, required) {
  return el('label', { for: id },
    el('span', { 'data-i18n': key }, t(key)),
    required ? el('span', { class: 'required-mark', 'aria-hidden': 'true' }, ' *') : null);
}

// `extra`: codes to offer even without a name (the person's own area when the node has not named it).
export function areaPicker({ id, labelKey, otherLabelKey = 'area.code', dir, scope = '', value = '', required = true, extra = [] }) {
  const named = areasWithin(dir ? dir.areas : [], scope);
  const known = new Set(named.map((a) => a.code));
  const choices = [...named];
  for (const code of extra) {
    if (code && !known.has(code)) {
      choices.push({ code, name: code });
      known.add(code);
    }
  }
  choices.sort((a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));

  const typed = el('input', {
    id: named.length ? `${id}-other` : id, name: 'area', inputmode: 'numeric', pattern: CODE_PATTERN,
    title: t('incident.area_format'), maxlength: 12, autocomplete: 'off', required,
  });
  if (!named.length) {
    typed.value = value || '';
    return {
      nodes: [labelFor(id, otherLabelKey, required), typed],
      value: () => typed.value.trim(),
      setValue: (code) => { typed.value = code || ''; },
      control: () => typed,
      select: null,
    };
  }

  const codeLine = el('p', { class: 'muted small area-code-line', id: `${id}-code` });
  const select = el('select', { id, name: 'area_choice', required, 'aria-describedby': `${id}-code` },
    el('option', { value: '' }, t('area.choose')),
    ...choices.map((a) => el('option', { value: a.code, title: a.code }, a.name === a.code ? a.code : a.name)),
    el('option', { value: OTHER }, t('area.other')));
  const otherLabel = labelFor(typed.id, otherLabelKey, required);
  const sync = () => {
    const other = select.value === OTHER;
    otherLabel.hidden = !other;
    typed.hidden = !other;
    typed.required = other && required;
    codeLine.hidden = other || !select.value;
    codeLine.textContent = select.value && !other ? t('area.code_is', { code: select.value }) : '';
  };
  const setValue = (code) => {
    if (!code) select.value = '';
    else if (known.has(code)) select.value = code;
    else {
      select.value = OTHER;
      typed.value = code;
    }
    sync();
  };
  select.addEventListener('change', () => {
    sync();
    if (select.value === OTHER) typed.focus();
  });
  setValue(value);
  return {
    nodes: [labelFor(id, labelKey, required), select, codeLine, otherLabel, typed],
    value: () => (select.value === OTHER ? typed.value.trim() : select.value),
    setValue,
    // The control that holds the code, for the page's own validity messages.
    control: () => (select.value === OTHER ? typed : select),
    select,
  };
}
