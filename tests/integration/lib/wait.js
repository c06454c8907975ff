'use strict';
// Waiting for a condition, always with a deadline. Tests wait for what
// they need (a log line, a metric, a refusal), never for a fixed time:
// a loaded machine makes a fixed sleep too short, and an idle one makes it
// a waste.
//
//   const v = await waitFor('the token is refused', async () => (await call()).code === 16);
//
// fn may be async; waitFor resolves with its first truthy result. A throw
// counts as "not yet" and is kept for the message, so that a deadline
// names what went wrong the last time.

const DEFAULT_TIMEOUT_MS = 15000;
const DEFAULT_INTERVAL_MS = 50;

function delay(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function describe(last) {
  if (last instanceof Error) return last.message;
  try {
    return JSON.stringify(last);
  } catch (_) {
    return String(last);
  }
}

// Polls fn every intervalMs until it returns something truthy; rejects
// once timeoutMs have passed, naming `what` and the last result.
async function waitFor(what, fn, { timeoutMs = DEFAULT_TIMEOUT_MS, intervalMs = DEFAULT_INTERVAL_MS } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms (last: ${describe(last)})`);
    await delay(intervalMs);
  }
}

// A deadline for an event: fn runs once ms have passed and the event has
// still not come. The check waits for one more turn of the event loop's
// I/O phase after the timer, so that an event already delivered (a line
// a process printed while this process was busy: building keys with
// openssl runs synchronously, and a timer that falls due during that
// runs before the pipe is read) is seen first. Returns cancel().
function deadline(ms, fn) {
  let immediate = null;
  const timer = setTimeout(() => {
    immediate = setImmediate(fn);
  }, ms);
  return () => {
    clearTimeout(timer);
    if (immediate) clearImmediate(immediate);
  };
}

module.exports = { waitFor, deadline };
