// The lifetime of one rendered view, for any page that starts something beyond its DOM (timers, a
// live stream, window listeners, charts): all of it is released when the router leaves the view.
import { onLeave } from './router.js';

// `alive` lets a render that was still waiting on the network notice it is no longer wanted.
export function startView() {
  const cleanups = [];
  const view = {
    alive: true,
    add(fn) {
      cleanups.push(fn);
    },
    every(ms, fn) {
      const id = setInterval(fn, ms);
      view.add(() => clearInterval(id));
    },
    listen(target, type, fn) {
      target.addEventListener(type, fn);
      view.add(() => target.removeEventListener(type, fn));
    },
  };
  onLeave(() => {
    view.alive = false;
    for (const fn of cleanups.splice(0)) {
      try { fn(); } catch (_) { /* keep releasing the rest */ }
    }
  });
  return view;
}
