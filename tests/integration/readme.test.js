'use strict';
// README.md as a user runs it. Every ```sh block is read from README.md
// when the test runs and run with bash (-e -o pipefail, one bash per
// block, in README order) in a temporary working directory whose `var` is
// the data directory of a `make run` (scripts/demo run, started here as
// the Makefile starts it, on the ports README.md names) and whose `build`
// is the build tree. `grpcurl` on PATH is lib/grpcurl.js (grpcurl is not
// packaged in Debian), `tlsplane-server` and `tlsplane-agent` are the
// built binaries; jq, openssl and curl are the real ones. What each block
// shows is checked as a user would read it.
//
// A block that cannot run as written has an entry in BLOCKS saying why,
// with its substitutions spelled out; a block BLOCKS does not know (by its
// first line) fails the test, so that no block of README.md goes
// unchecked. The README's ports (7443, 8443, 8444, 8080, 9443) are used by
// no other test file; the demo's agent gets a free metrics port, since the
// standalone agent of the README takes 9443.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');

const lib = { server: require('./lib/server'), agent: require('./lib/agent') };
const { freePorts } = lib.agent;
const { tool } = require('./lib/tools');
const { waitFor } = require('./lib/wait');
const procs = require('./lib/procs');
const docs = require('./lib/docblocks');
const { shBlocks, substitute, outputOf, jsonOf } = docs;

const REPO = path.resolve(__dirname, '../..');
const README = path.join(REPO, 'README.md');
const GRPCURL_JS = path.join(__dirname, 'lib/grpcurl.js');
const README_PORTS = [7443, 8443, 8444, 8080, 9443];
const serverBinary = () => path.resolve(lib.server.serverBinary());
const agentBinary = () => path.resolve(lib.agent.agentBinary());

// ---------------------------------------------------------------------------
// The blocks.

// ---------------------------------------------------------------------------
// The environment: bin dir, working directories, the demo.

const ctx = {};

function bash(script, { cwd = ctx.work, env = ctx.env, trace = true, timeoutMs = 120000 } = {}) {
  return docs.bash(script, { cwd, env, trace, timeoutMs });
}

function run(file, args, { input, cwd = ctx.work, env = ctx.env } = {}) {
  return new Promise((resolve) => {
    const p = spawn(file, args, { cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c) => (stdout += c));
    p.stderr.on('data', (c) => (stderr += c));
    p.stdin.end(input || '');
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function call(method, json) {
  return run(serverBinary(), ['call', '--server', '127.0.0.1:7443', '--data-dir', ctx.dataDir, method, ...(json ? [json] : [])]);
}

function portFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

function httpGet(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (_) {
    return false;
  }
}

// Processes a block left running in the background (their pid files).
const background = [];
async function stopBackground(pid, what) {
  process.kill(pid, 'SIGTERM');
  await waitFor(`${what} (pid ${pid}) stopped after SIGTERM`, () => !alive(pid), { timeoutMs: 20000 });
  background.splice(background.indexOf(pid), 1);
}

function workDir(name) {
  const dir = path.join(ctx.root, name);
  fs.mkdirSync(dir);
  fs.symlinkSync(ctx.dataDir, path.join(dir, 'var'));
  fs.symlinkSync(ctx.build, path.join(dir, 'build'));
  return dir;
}

before(async () => {
  for (const t of ['bash', 'jq', 'openssl', 'curl', 'flock', 'setpriv']) tool(t);
  ctx.build = path.dirname(path.dirname(serverBinary()));
  assert.equal(path.join(ctx.build, 'agent/tlsplane-agent'), path.resolve(agentBinary()), 'the README runs the agent of the server\'s build tree');
  for (const port of README_PORTS) {
    assert.ok(await portFree(port), `127.0.0.1:${port} is in use: README.md's commands use it as written; stop what holds it`);
  }
  ctx.root = procs.tempDir('tlsplane-readme-');
  ctx.dataDir = path.join(ctx.root, 'data');
  const bin = path.join(ctx.root, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'grpcurl'), `#!/bin/sh\nexec '${process.execPath}' '${GRPCURL_JS}' "$@"\n`, { mode: 0o755 });
  fs.symlinkSync(serverBinary(), path.join(bin, 'tlsplane-server'));
  fs.symlinkSync(agentBinary(), path.join(bin, 'tlsplane-agent'));
  ctx.env = { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH}`, TLSPLANE_RETRY_MAX_MS: '2000' };
  delete ctx.env.TLSPLANE_TOKEN;
  ctx.work = workDir('work');
  const which = await bash('command -v grpcurl tlsplane-server jq', { trace: false });
  assert.deepEqual(which.stdout.trim().split('\n'), [path.join(bin, 'grpcurl'), path.join(bin, 'tlsplane-server'), tool('jq')],
    'grpcurl on the blocks\' PATH is lib/grpcurl.js, tlsplane-server the build\'s');

  // make run: `DATA_DIR=... LISTEN=... BUILD=./build exec ./scripts/demo run`.
  const [metrics] = await freePorts(1);
  const demo = { out: '', exit: null };
  const [cmd, argv] = procs.command(path.join(REPO, 'scripts/demo'), ['run']);
  demo.proc = spawn(cmd, argv, {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, DATA_DIR: ctx.dataDir, LISTEN: '127.0.0.1:7443', BUILD: ctx.build, AGENT_METRICS: `127.0.0.1:${metrics}` },
  });
  demo.exited = new Promise((resolve) => demo.proc.on('exit', (code, signal) => resolve((demo.exit = { code, signal }))));
  demo.proc.stdout.on('data', (c) => (demo.out += c));
  demo.proc.stderr.on('data', (c) => (demo.out += c));
  procs.track(demo);
  ctx.demo = demo;
  await waitFor('make run\'s demo running', () => {
    if (demo.exit) throw new Error(`scripts/demo run exited (${JSON.stringify(demo.exit)}):\n${demo.out}`);
    return demo.out.includes('tlsplane is running');
  }, { timeoutMs: 120000, intervalMs: 200 });
});

after(async () => {
  for (const pid of [...background]) {
    try {
      await stopBackground(pid, 'a process a block started');
    } catch (_) {
      process.kill(pid, 'SIGKILL');
    }
  }
  if (ctx.demo && !ctx.demo.exit) {
    const exit = await procs.terminate(ctx.demo, 30000);
    procs.untrack(ctx.demo);
    assert.deepEqual(exit, { code: 0, signal: null }, `make run's demo stops cleanly on SIGTERM:\n${ctx.demo.out}`);
  }
});

// ---------------------------------------------------------------------------
// What each block is and what it must show, by its first line.

const BLOCKS = [
  {
    first: /^make run +#/,
    name: 'the two commands',
    // Not run here: make run is what the harness itself starts (the demo,
    // as the Makefile runs it, after its build), and make test is the suite
    // this test belongs to.
    async run(block) {
      assert.deepEqual(block.text.trim().split('\n').map((l) => l.split(/\s+/).slice(0, 2).join(' ')), ['make run', 'make test']);
      const makefile = fs.readFileSync(path.join(REPO, 'Makefile'), 'utf8');
      assert.match(makefile, /^run: build\n\tDATA_DIR='\$\(DATA_DIR\)' LISTEN='\$\(LISTEN\)' BUILD=\.\/build exec \.\/scripts\/demo run$/m,
        'make run is scripts/demo run with DATA_DIR, LISTEN and BUILD, as the harness starts it');
      assert.match(ctx.demo.out, /listeners\/demo +https:\/\/localhost:8443 -> upstream http:\/\/127\.0\.0\.1:8080/);
    },
  },
  {
    first: /^S=127\.0\.0\.1:7443$/,
    name: 'the walk through the API with grpcurl',
    async run(block) {
      const r = await bash(block.text);
      assert.equal(r.code, 0, `the walkthrough failed (exit ${r.code}):\n${r.stderr}\n${r.stdout}`);
      const s = r.sections;
      const lists = outputOf(s, /^grpcurl .* \$S list$/);
      assert.equal(lists.match(/^tlsplane\.v1\.CertificateService$/gm).length, 2, `both lists (token, client certificate):\n${lists}`);
      assert.match(lists, /^grpc\.reflection\.v1\.ServerReflection$/m);
      assert.deepEqual(jsonOf(s, /Health\/Check/), { status: 'SERVING' });
      const desc = outputOf(s, /describe tlsplane\.v1\.CertificateService/);
      assert.match(desc, /^tlsplane\.v1\.CertificateService is a service:\n/);
      assert.match(desc, /^ {2}rpc UpdateCertificate \( \.tlsplane\.v1\.UpdateCertificateRequest \) returns \( \.tlsplane\.v1\.Certificate \);$/m);
      assert.match(desc, /^\/\/ CertificateService /m, 'describe shows the comments');

      const created = jsonOf(s, /CertificateService\/CreateCertificate/);
      assert.equal(created.name, 'certificates/web');
      assert.deepEqual(created.labels, { team: 'edge' });
      assert.equal(created.privateKeyPem, undefined, 'the response never shows the key');
      assert.doesNotMatch(outputOf(s, /CreateCertificate/), /PRIVATE KEY/);
      assert.equal(jsonOf(s, /CreateCipherPolicy/).name, 'cipherPolicies/strict');
      assert.equal(jsonOf(s, /CreateTlsContext/).name, 'tlsContexts/web');
      const listener = jsonOf(s, /CreateListener/);
      assert.equal(listener.name, 'listeners/public');
      assert.equal(listener.address, '127.0.0.1:8444');
      assert.equal(outputOf(s, /^curl --http1\.1/), 'hello from the upstream behind tlsplane-agent: GET /\n');
      const agent = jsonOf(s, /AgentService\/GetAgent/);
      assert.equal(agent.name, 'agents/demo');
      assert.ok(Number(agent.appliedRevision) >= Number(listener.revision), `the demo agent applied the listener's revision: ${JSON.stringify(agent)}`);
      const expiring = jsonOf(s, /ListCertificates/);
      assert.ok(expiring.certificates.some((c) => c.name === 'certificates/web'), 'a 20-day certificate expires within 30 days');
      const bound = Date.now() + 30 * 86400 * 1000;
      assert.ok(expiring.certificates.every((c) => Date.parse(c.notAfter) <= bound), 'only those expiring within 30 days');

      const updated = jsonOf(s, /CertificateService\/UpdateCertificate/);
      assert.equal(updated.name, 'certificates/web');
      assert.notEqual(updated.etag, created.etag, 'the update with the etag wrote a new version');
      assert.deepEqual(updated.labels, { team: 'edge' }, 'the mask replaced the chain only');

      const token = JSON.parse(outputOf(s, /TokenService\/CreateToken/).trim().split(/\n(?=\{)/)[0]);
      assert.equal(token.token.name, 'tokens/ci-rotation');
      assert.equal(token.token.role, 'OPERATOR');
      assert.match(token.secret, /^tlsp_ci-rotation_/);
      assert.equal(jsonOf(s, /RevokeToken/).name, 'tokens/ci-rotation');
      const joins = outputOf(s, /TokenService\/CreateToken/).trim().split(/\n(?=\{)/).map((x) => JSON.parse(x));
      assert.equal(joins.length, 2);
      assert.equal(joins[1].token.role, 'JOIN');
      assert.match(joins[1].secret, /^tlsp_join-edge-1_/);
      const edge = jsonOf(s, /AgentService\/UpdateAgent/);
      assert.equal(edge.name, 'agents/demo');
      assert.deepEqual(edge.labels, { app: 'demo', site: 'ams' });

      const audit = outputOf(s, /ListAuditEvents$/).trim().split(/\n(?=\{)/).map((x) => JSON.parse(x));
      assert.equal(audit.length, 2, 'ListAuditEvents ran twice');
      const resources = (a) => (a.auditEvents || []).map((e) => `${e.action} ${e.resource}`);
      for (const want of ['create certificates/web', 'create cipherPolicies/strict', 'create tlsContexts/web', 'create listeners/public',
        'update certificates/web', 'create tokens/ci-rotation', 'create tokens/join-edge-1']) {
        assert.ok(resources(audit[1]).some((x) => x.startsWith(want)), `the admin's events show ${want}: ${resources(audit[1]).join(', ')}`);
      }
      assert.ok(audit[1].auditEvents.every((e) => e.actor === 'token:admin'), 'filtered by actor');
      assert.ok(audit[0].auditEvents.length > 0);
    },
  },
  {
    first: /^tlsplane-server call TokenService\/CreateToken .*join-edge-1/,
    name: 'an agent enrolled with a join token',
    subs: [
      { from: 'edge-1', to: 'edge-2', why: 'the walkthrough before it made join-edge-1, a token id made once' },
      { from: /'\n/, to: "' | tee join.json\n", why: 'the secret the call prints, for the next line' },
      { from: 'tlsp_join-edge-2_...', to: '$(jq -r .secret join.json)', why: 'the placeholder for that secret' },
      { from: '/var/lib/tlsplane-agent', to: './agent-edge-2 >agent-edge-2.log 2>&1 & echo $! >agent-edge-2.pid', why: 'a cache dir of its own; the agent runs on in the background' },
    ],
    async run(block) {
      const r = await bash(substitute(block, this.subs));
      assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
      const pid = Number(fs.readFileSync(path.join(ctx.work, 'agent-edge-2.pid'), 'utf8'));
      background.push(pid);
      const log = path.join(ctx.work, 'agent-edge-2.log');
      await waitFor('edge-2 enrolled and connected', async () => {
        if (!alive(pid)) throw new Error(`the agent exited:\n${fs.readFileSync(log, 'utf8')}`);
        const g = await call('AgentService/GetAgent', '{"name": "agents/edge-2"}');
        return g.code === 0 && /"connected": true/.test(g.stdout) && g.stdout;
      }, { timeoutMs: 30000, intervalMs: 200 });
      const g = JSON.parse((await call('AgentService/GetAgent', '{"name": "agents/edge-2"}')).stdout);
      assert.deepEqual(g.labels, { site: 'par' }, 'the labels its join token gave it');
      assert.match(fs.readFileSync(log, 'utf8'), /enrolled/);
      assert.ok(fs.existsSync(path.join(ctx.work, 'agent-edge-2/agent.pem')), 'the enrolled certificate in its cache dir');
      await stopBackground(pid, 'the edge-2 agent');
    },
  },
  {
    first: /^\.\/build\/agent\/tlsplane-agent --config snapshot\.json/,
    name: 'the agent standalone',
    // snapshot.json is the user's file: here a snapshot without listeners
    // (agent/README.md has a full one).
    subs: [
      { from: /--config snapshot\.json/, to: '--config snapshot.json >standalone.log 2>&1 & echo $! >standalone.pid;', why: 'the agent runs on in the background while the next line reads its metrics' },
    ],
    async run(block) {
      fs.writeFileSync(path.join(ctx.work, 'snapshot.json'), '{"revision": "1"}\n');
      const [start, ...rest] = substitute(block, this.subs).split('\n');
      const r = await bash(start);
      assert.equal(r.code, 0, r.stderr);
      const pid = Number(fs.readFileSync(path.join(ctx.work, 'standalone.pid'), 'utf8'));
      background.push(pid);
      await waitFor('the standalone agent\'s metrics', async () => {
        if (!alive(pid)) throw new Error(`the agent exited:\n${fs.readFileSync(path.join(ctx.work, 'standalone.log'), 'utf8')}`);
        return (await httpGet('http://127.0.0.1:9443/metrics')).status === 200;
      }, { timeoutMs: 20000 });
      const m = await bash(rest.join('\n'));
      assert.equal(m.code, 0, m.stderr);
      assert.match(outputOf(m.sections, /^curl -s http:\/\/127\.0\.0\.1:9443\/metrics$/), /^tlsplane_config_revision 1$/m);
      await stopBackground(pid, 'the standalone agent');
      assert.match(fs.readFileSync(path.join(ctx.work, 'standalone.log'), 'utf8'), /stopped/);
    },
  },
  {
    first: /^curl --cacert var\/ca\.pem -H "authorization: Bearer \$\(cat var\/admin\.token\)" \\$/,
    name: 'the API as JSON over HTTPS',
    async run(block) {
      const m = /dashboard +https:\/\/127\.0\.0\.1:(\d+)\//.exec(ctx.demo.out);
      assert.ok(m, `make run printed the dashboard's address:\n${ctx.demo.out}`);
      const subs = [{ from: '127.0.0.1:7444', to: `127.0.0.1:${m[1]}`, why: 'the demo server\'s gateway takes a free port here' }];
      const r = await bash(substitute(block, subs));
      assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
      const names = jsonOf(r.sections, /ListCertificates/).certificates.map((c) => c.name);
      assert.ok(names.includes('certificates/web'), `the certificates, as JSON: ${names}`);
    },
  },
  {
    first: /^\.\/build\/server\/tlsplane-server call AgentService\/ListAgents$/,
    name: 'tlsplane-server call',
    async run(block) {
      const r = await bash(block.text);
      assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
      const agents = jsonOf(r.sections, /ListAgents$/).agents.map((a) => a.name);
      for (const a of ['agents/demo', 'agents/edge-2']) assert.ok(agents.includes(a), `${a} in ${agents}`);
      const l = jsonOf(r.sections, /GetListener/);
      assert.equal(l.name, 'listeners/demo');
      assert.equal(l.address, '127.0.0.1:8443');
    },
  },
];

function blockSpec(block) {
  return BLOCKS.find((b) => b.first.test(block.first));
}

// ---------------------------------------------------------------------------

test('every ```sh block of README.md is one readme.test.js runs', () => {
  const blocks = shBlocks(README);
  assert.ok(blocks.length >= BLOCKS.length, `README.md has ${blocks.length} sh blocks`);
  for (const b of blocks) {
    assert.ok(blockSpec(b), `README.md line ${b.line}: a \`\`\`sh block starting "${b.first}" that readme.test.js does not know: add it to BLOCKS, with what it must show`);
  }
  for (const spec of BLOCKS) {
    assert.ok(blocks.some((b) => spec.first.test(b.first)), `BLOCKS has "${spec.name}" (${spec.first}), which README.md no longer has: remove it`);
  }
});

test('no grpcurl request in the docs gives a FieldMask in its string form, which grpcurl 1.9.1 refuses', () => {
  const files = [README, path.join(REPO, 'agent/README.md'),
    ...fs.readdirSync(path.join(REPO, 'docs')).filter((f) => f.endsWith('.md')).map((f) => path.join(REPO, 'docs', f))];
  const found = [];
  for (const file of files) {
    let inSh = false;
    fs.readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
      if (/^```/.test(line)) inSh = /^```sh\b/.test(line);
      if (/tlsplane-server call/.test(line)) return; // call takes both forms
      // JSON, and in shell blocks jq's object syntax too (unquoted keys).
      const bad = inSh ? /\bupdate_?[mM]ask"?\s*:\s*\\?"/ : /"update_?[mM]ask"\s*:\s*"/;
      if (bad.test(line)) found.push(`${path.relative(REPO, file)}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.deepEqual(found, [], 'write {"paths": [...]}: grpcurl fails on the string form with "bad input: expecting start of JSON object"');
});

test('the harness fails a block: the walkthrough with a wrong token stops at its first call that needs one', async () => {
  const block = shBlocks(README).find((b) => /^S=127\.0\.0\.1:7443$/.test(b.first));
  const wrong = substitute(block, [{ from: '$(cat var/admin.token)', to: 'tlsp_admin_not-the-token', why: 'a token the server never issued' }]);
  const r = await bash(wrong, { cwd: workDir('wrong-token') });
  assert.equal(r.code, 64 + 16, `grpcurl's status for Unauthenticated ends the block:\n${r.stderr}`);
  assert.match(r.stderr, /^ERROR:\n {2}Code: Unauthenticated\n {2}Message: /m);
  assert.match(r.sections[r.sections.length - 1].cmd, /CreateCertificate/, 'nothing ran after the failed call');
  const g = await call('CipherPolicyService/GetCipherPolicy', '{"name": "cipherPolicies/strict"}');
  assert.equal(g.code, 1);
  assert.match(g.stderr, /NOT_FOUND|NotFound/);
});

for (const block of shBlocks(README)) {
  const spec = blockSpec(block);
  test(`README.md line ${block.line}: ${spec ? spec.name : block.first}`, async () => {
    assert.ok(spec, `no entry in BLOCKS for "${block.first}"`);
    await spec.run.call(spec, block);
  });
}

test('the grpcurl shim refuses "updateMask": "labels" as grpcurl 1.9.1 does; the object form and tlsplane-server call work', async () => {
  const g = (args, input) => run('grpcurl', ['-cacert', 'var/ca.pem', '-H', `authorization: Bearer ${fs.readFileSync(path.join(ctx.dataDir, 'admin.token'), 'utf8').trim()}`, ...args], { input });
  const before = await call('AuditService/ListAuditEvents', '{"pageSize": 1000}');
  const stringForm = '{"agent": {"name": "agents/demo", "labels": {"app": "demo"}}, "updateMask": "labels"}';
  const r = await g(['-d', stringForm, '127.0.0.1:7443', 'tlsplane.v1.AgentService/UpdateAgent']);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, 'Error invoking method "tlsplane.v1.AgentService/UpdateAgent": error getting request data: ' +
    "bad input: expecting start of JSON object: '{' ; instead got labels\n");
  assert.equal((await call('AuditService/ListAuditEvents', '{"pageSize": 1000}')).stdout, before.stdout, 'nothing was sent');

  const obj = await g(['-d', '@', '127.0.0.1:7443', 'tlsplane.v1.AgentService.UpdateAgent'],
    '{"agent": {"name": "agents/demo", "labels": {"app": "demo"}}, "updateMask": {"paths": ["labels"]}}');
  assert.equal(obj.code, 0, obj.stderr);
  assert.deepEqual(JSON.parse(obj.stdout).labels, { app: 'demo' });

  // tlsplane-server call takes both: the string form (protobuf's JSON
  // mapping) and the object form the README shows for grpcurl.
  for (const mask of ['"labels"', '{"paths": ["labels"]}']) {
    const c = await call('AgentService/UpdateAgent', `{"agent": {"name": "agents/demo", "labels": {"app": "demo"}}, "updateMask": ${mask}}`);
    assert.equal(c.code, 0, `updateMask ${mask}: ${c.stderr}`);
    assert.deepEqual(JSON.parse(c.stdout).labels, { app: 'demo' });
  }
  const badPath = await call('AgentService/UpdateAgent', '{"agent": {"name": "agents/demo"}, "updateMask": {"paths": ["Labels"]}}');
  assert.notEqual(badPath.code, 0);
  assert.match(badPath.stderr, /updateMask: paths\[0\]: "Labels" is not a field mask path/);

  const unknown = await g(['-d', '{"nme": "agents/demo"}', '127.0.0.1:7443', 'tlsplane.v1.AgentService/GetAgent']);
  assert.equal(unknown.code, 1);
  assert.equal(unknown.stderr, 'Error invoking method "tlsplane.v1.AgentService/GetAgent": error getting request data: ' +
    'message type tlsplane.v1.GetAgentRequest has no known field named nme\n');
  const missing = await g(['-d', '{"name": "agents/none"}', '127.0.0.1:7443', 'tlsplane.v1.AgentService/GetAgent']);
  assert.equal(missing.code, 64 + 5);
  assert.match(missing.stderr, /^ERROR:\n {2}Code: NotFound\n {2}Message: .+\n$/);
  const two = await g(['-d', '@', '127.0.0.1:7443', 'tlsplane.v1.AgentService/GetAgent'], '{"name": "agents/demo"}\n{"name": "agents/demo"}\n');
  assert.equal(two.code, 1);
  assert.match(two.stderr, /is a unary RPC, but request data contained more than 1 message/);
});
