// Warning events (/api/v1/warnings/events) for every page: the banner changes the moment a warning
// covering the user does, and an open warnings page reloads. One EventSource while the page is
// visible (a locked phone keeps no connection open); after an HTTP error (signed out, session
// expired) the browser stops retrying, so we try again later.
const RETRY_MS = 60e3;

// `signedIn` says whether there is anyone to follow for: a signed-out page opens no stream.
export function followWarnings(onChange, signedIn) {
  let source = null;
  let retry = null;
  const connect = () => {
    if (source || document.hidden || !signedIn()) return;
    source = new EventSource('/api/v1/warnings/events');
    // The browser reconnects by itself after a drop; events missed meanwhile mean "look again".
    let opened = false;
    source.addEventListener('open', () => {
      if (opened) onChange(null);
      opened = true;
    });
    source.addEventListener('warning', (e) => {
      let event = null;
      try { event = JSON.parse(e.data); } catch (_) { /* a garbled event still means "look again" */ }
      onChange(event);
    });
    // Events were dropped for this client: look again rather than trust a gap.
    source.addEventListener('lagged', () => onChange(null));
    source.addEventListener('error', () => {
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        clearTimeout(retry);
        retry = setTimeout(() => { retry = null; connect(); }, RETRY_MS);
      }
    });
  };
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) {
      if (source) source.close();
      source = null;
      return;
    }
    onChange(null);
    connect();
  });
  connect();
  return {
    // After sign-in or sign-out: follow for the new user, or stop.
    reconnect: () => {
      if (source) source.close();
      source = null;
      clearTimeout(retry);
      retry = null;
      connect();
    },
  };
}
