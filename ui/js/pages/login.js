// The sign-in page. After signing in it returns to the page that asked for it.
import { t } from '../i18n.js';
import { el, clear, markRequired } from '../dom.js';
import { signIn } from '../session.js';
import { navigate } from '../router.js';

export async function render(main) {
  clear(main);
  const params = new URLSearchParams(location.search);
  const next = params.get('next') && params.get('next').startsWith('/') ? params.get('next') : '/';
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const username = el('input', { id: 'login-username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const password = el('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = el('button', { type: 'submit', 'data-i18n': 'login.submit' }, t('login.submit'));
  const form = el('form', { class: 'card form', id: 'login-form' },
    el('label', { for: 'login-username', 'data-i18n': 'login.username' }, t('login.username')), username,
    el('label', { for: 'login-password', 'data-i18n': 'login.password' }, t('login.password')), password,
    error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await signIn(username.value.trim(), password.value);
      navigate(next);
    } catch (e) {
      error.hidden = false;
      // The node's code says which: wrong password, throttled, a refused origin, or offline.
      error.textContent = e.status === 401 ? t('login.wrong') : e.message || t('common.unreachable');
      password.value = '';
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.append(el('h1', { 'data-i18n': 'login.title' }, t('login.title')), markRequired(form));
  username.focus();
}
