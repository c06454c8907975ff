// The dashboard: sign-in, hash routing (#/certificates, ...), and a poll
// every POLL_MS of the page on screen, so changes show without a reload.
import { call, clearToken, role, setToken, token, ApiError } from './api.js';
import * as overview from './pages/overview.js';
import * as certificates from './pages/certificates.js';
import * as certificate from './pages/certificate.js';
import * as agents from './pages/agents.js';
import * as listeners from './pages/listeners.js';
import * as ticketKeys from './pages/ticketkeys.js';
import * as audit from './pages/audit.js';

const POLL_MS = 2000;
const PAGES = {
  overview,
  certificates,
  agents,
  listeners,
  'ticket-keys': ticketKeys,
  audit,
};

const $ = (id) => document.getElementById(id);
const state = { role: null, refresh: null, timer: null, generation: 0 };

function showSignIn(message = '') {
  stopPolling();
  $('main').hidden = true;
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('token').focus();
}

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
  state.generation++;
}

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').className = isError ? 'status error' : 'status';
}

// One poll of the page on screen, then the next POLL_MS after it ends (so
// polls never overlap). A poll of a page left behind is dropped.
async function poll(generation) {
  if (generation !== state.generation) return;
  try {
    await state.refresh();
    if (generation !== state.generation) return;
    status(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (generation !== state.generation) return;
    if (e instanceof ApiError && e.code === 'unauthenticated') {
      clearToken();
      showSignIn(`signed out: ${e.message}`);
      return;
    }
    status(`${e.code || 'error'}: ${e.message}`, true);
  }
  state.timer = setTimeout(() => poll(generation), POLL_MS);
}

function route() {
  if (!state.role) return;
  // "#/certificates/web": a certificate's own page, under Certificates.
  const [name, id] = (location.hash.replace(/^#\/?/, '') || 'overview').split('?')[0].split('/');
  const mod = name === 'certificates' && id ? certificate : PAGES[name] || overview;
  stopPolling();
  for (const a of $('nav').querySelectorAll('a')) a.classList.toggle('active', a.getAttribute('href') === `#/${name}`);
  const root = $('page');
  root.replaceChildren();
  root.dataset.page = id ? `${name}/${id}` : name;
  const generation = state.generation;
  const ctx = {
    role: state.role,
    id: id ? decodeURIComponent(id) : '',
    // Polls again now (after an action or a page move).
    refreshSoon: () => {
      if (generation !== state.generation) return;
      stopPolling();
      poll(state.generation);
    },
  };
  state.refresh = mod.mount(root, ctx);
  poll(state.generation);
}

async function signIn() {
  try {
    // A cheap read checks the token; then what it may do.
    await call('AgentService', 'GetRollout', {});
    state.role = await role();
  } catch (e) {
    clearToken();
    state.role = null;
    showSignIn(`sign-in refused (${e.code || 'error'}): ${e.message}`);
    return;
  }
  $('sign-in').hidden = true;
  $('main').hidden = false;
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('who').textContent = state.role.canWrite ? `signed in: ${state.role.name} (can write)` : `signed in: ${state.role.name} (read only)`;
  document.body.dataset.role = state.role.canWrite ? 'writer' : 'viewer';
  route();
}

$('sign-in').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const t = $('token').value.trim();
  $('token').value = '';
  if (!t) return;
  setToken(t);
  signIn();
});

$('sign-out').addEventListener('click', () => {
  clearToken();
  state.role = null;
  delete document.body.dataset.role;
  $('page').replaceChildren();
  showSignIn();
});

window.addEventListener('hashchange', route);

if (token()) signIn();
else showSignIn();
