// Whether the node can be reached now, for the header's offline mark. The browser's own online flag
// is not enough on village Wi-Fi, where the phone is "online" to an access point that cannot reach
// the node, so failed requests and answers served from the phone's copy count too.
let reachable = true;
const listeners = new Set();

function emit() {
  for (const fn of listeners) {
    try { fn(isOffline()); } catch (_) { /* one listener must not stop the others */ }
  }
}

export function isOffline() {
  return navigator.onLine === false || !reachable;
}

// Called by every request: true when the node answered, false when it did not.
export function noteReachable(ok) {
  if (ok === reachable) return;
  reachable = ok;
  emit();
}

export function onNetChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

// Back online: hopeful until the next request says otherwise.
window.addEventListener('online', () => {
  reachable = true;
  emit();
});
window.addEventListener('offline', emit);
