// The accounts page for admin and county_it: list, add, reset a password, disable, and rename one of
// two accounts that claim the same username. Quarantined records (fields beyond what their writers
// could grant) are listed with the reason, never usable. People see names: the area is chosen by its
// name (a code the directory lacks can still be typed), the department from the configured ones and
// only for the role that has one.
import { getJson, postJson } from '../api.js';
import { t } from '../i18n.js';
import { el, clear, errorBox, markRequired } from '../dom.js';
import { currentUser } from '../session.js';
import { loadCatalog, departmentName } from '../incidents-common.js';
import { loadAreas, areaNode } from '../names.js';
import { areaPicker } from '../area-picker.js';

const ROLES = ['grid_worker', 'township_staff', 'dept_handler', 'county_it', 'admin'];

function field(id, labelKey, input) {
  input.id = id;
  return [el('label', { for: id, 'data-i18n': labelKey }, t(labelKey)), input];
}

function addForm(onDone, dir, catalog) {
  const me = currentUser();
  const role = el('select', { name: 'role' }, ...ROLES.filter((r) => r !== 'admin' || me.role === 'admin')
    .map((r) => el('option', { value: r }, t(`role.${r}`))));
  const inputs = {
    username: el('input', { name: 'username', required: true, autocapitalize: 'none', pattern: '[a-z0-9][a-z0-9._-]{1,31}' }),
    display_name: el('input', { name: 'display_name' }),
    phone: el('input', { name: 'phone', inputmode: 'tel' }),
    password: el('input', { name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
  };
  const area = areaPicker({ id: 'user-area', labelKey: 'users.area_pick', otherLabelKey: 'users.area', dir, scope: me.area, value: me.area, extra: [me.area] });
  // A department only for the role that works in one; the configured list when the catalog came,
  // else the id typed as before.
  const departments = catalog?.departments || [];
  const department = departments.length
    ? el('select', { name: 'department', id: 'user-department' }, el('option', { value: '' }, t('incident.choose_department')),
      ...departments.map((d) => el('option', { value: d.id }, d.name)))
    : el('input', { name: 'department', id: 'user-department' });
  const departmentLabel = el('label', { for: 'user-department' }, el('span', { 'data-i18n': 'users.department' }, t('users.department')),
    el('span', { class: 'required-mark', 'aria-hidden': 'true' }, ' *'));
  const syncRole = () => {
    const needs = role.value === 'dept_handler';
    department.required = needs;
    department.hidden = !needs;
    departmentLabel.hidden = !needs;
  };
  role.addEventListener('change', syncRole);
  syncRole();
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const submit = el('button', { type: 'submit', 'data-i18n': 'users.add' }, t('users.add'));
  const form = el('form', { class: 'card form', id: 'user-add-form' },
    el('h2', { 'data-i18n': 'users.add_title' }, t('users.add_title')),
    ...field('user-username', 'users.username', inputs.username),
    ...field('user-display-name', 'users.display_name', inputs.display_name),
    ...field('user-role', 'users.role', role),
    ...area.nodes,
    departmentLabel, department,
    ...field('user-phone', 'users.phone', inputs.phone),
    ...field('user-password', 'users.password', inputs.password),
    error, submit);
  markRequired(form);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    const body = { username: inputs.username.value.trim(), role: role.value, area: area.value(), password: inputs.password.value };
    for (const key of ['display_name', 'phone']) {
      if (inputs[key].value.trim()) body[key] = inputs[key].value.trim();
    }
    if (role.value === 'dept_handler' && department.value.trim()) body.department = department.value.trim();
    try {
      await postJson('/api/v1/users', body);
      form.reset();
      area.setValue(me.area);
      syncRole();
      onDone();
    } catch (e) {
      error.hidden = false;
      error.textContent = e.message;
      const byField = { ...inputs, area: area.control(), department, role };
      byField[e.field]?.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function stateOf(user) {
  if (user.quarantine) return el('span', { class: 'badge bad', title: user.quarantine }, t('users.quarantine'));
  if (user.disabled) return t('users.disabled');
  if (!user.signs_in) return el('span', { class: 'badge bad', title: t('users.clash_help') }, t('users.not_signing_in'));
  return user.local ? t('users.local') : t('users.active');
}

function row(user, onDone, dir) {
  const clash = user.clash ? el('span', { class: 'badge bad', title: t('users.clash_help') }, t('users.clash')) : null;
  const actions = el('td', { class: 'actions' });
  if (user.signs_in && user.username !== currentUser().username) {
    const reset = el('button', { type: 'button', class: 'secondary small', 'data-i18n': 'users.reset' }, t('users.reset'));
    reset.addEventListener('click', async () => {
      const password = prompt(`${t('users.new_password')} ${user.username}`);
      if (!password) return;
      try { await postJson(`/api/v1/users/${encodeURIComponent(user.username)}/password`, { password }); alert(t('users.done')); } catch (e) { alert(e.message); }
    });
    const disable = el('button', { type: 'button', class: 'secondary small danger', 'data-i18n': 'users.disable' }, t('users.disable'));
    disable.addEventListener('click', async () => {
      if (!confirm(`${t('users.confirm_disable')} ${user.username}?`)) return;
      try { await postJson(`/api/v1/users/${encodeURIComponent(user.username)}/disable`); onDone(); } catch (e) { alert(e.message); }
    });
    actions.append(reset, ' ', disable);
  }
  if (!user.local && !user.quarantine && user.id) {
    const rename = el('button', { type: 'button', class: 'secondary small', 'data-i18n': 'users.rename' }, t('users.rename'));
    rename.addEventListener('click', async () => {
      const name = prompt(`${t('users.new_username')} ${user.username}`);
      if (!name) return;
      try {
        await postJson(`/api/v1/users/${encodeURIComponent(user.username)}/rename`, { new_username: name.trim(), id: user.id });
        onDone();
      } catch (e) { alert(e.message); }
    });
    actions.append(' ', rename);
  }
  return el('tr', { 'data-username': user.username, 'data-id': user.id || 'local' },
    el('td', {}, user.display_name || user.username), el('td', {}, user.username, ' ', clash), el('td', {}, t(`role.${user.role}`)),
    el('td', { class: 'users-area' }, areaNode(dir, user.area, user.area_name, { code: true })),
    el('td', {}, user.department ? departmentName(user.department, user.department_name) : '—'), el('td', {}, stateOf(user)), actions);
}

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'page.users' }, t('page.users')));
  const list = el('section', { class: 'card' });
  const [dir, catalog] = await Promise.all([loadAreas(), loadCatalog().catch(() => null)]);
  const reload = async () => {
    clear(list);
    try {
      const { users } = await getJson('/api/v1/users');
      const head = ['users.display_name', 'users.username', 'users.role', 'users.area_name', 'users.department', 'users.state', 'users.actions']
        .map((k) => el('th', { 'data-i18n': k }, t(k)));
      const table = el('table', { class: 'table', id: 'users-table' }, el('thead', {}, el('tr', {}, ...head)),
        el('tbody', {}, ...users.map((u) => row(u, reload, dir))));
      list.append(el('div', { class: 'scroll' }, table));
    } catch (e) {
      list.append(errorBox(e.message, reload));
    }
  };
  main.append(list, addForm(reload, dir, catalog));
  await reload();
}
