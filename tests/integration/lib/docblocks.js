'use strict';
// Running a document's ```sh blocks as a user would: each block read from
// the file when the test runs, substituted where it cannot run as written
// (every substitution must match, so a changed document fails loudly), and
// run with bash -e -o pipefail, its output split by command (a DEBUG
// trap) so a test can check what each command printed.
//
//   const blocks = shBlocks(file);                  // [{ text, first, line }]
//   const text = substitute(block, [{ from, to, why }], 'docs/x.md');
//   const r = await bash(text, { cwd, env });       // { code, stdout, stderr, sections }
//   outputOf(r.sections, /grpcurl .*GetCertificate/); jsonOf(r.sections, re);
//
// A page run in order against a test server (rotation.md, acme.md):
//   const env = { ...process.env, PATH: `${toolsDir(dir, { 'tlsplane-server': bin })}:...` };
//   const page = pageRunner({ doc: 'docs/x.md', cwd, env, address: srv.address });
//   page.setPrelude(firstBlock);                    // S and g(), for every later block
//   const r = await page.run(block, subs);          // exit 0 asserted

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { tool } = require('./tools');

function shBlocks(file) {
  const text = fs.readFileSync(file, 'utf8');
  const blocks = [];
  const re = /^```sh\n([\s\S]*?)^```[ \t]*$/gm;
  let m;
  while ((m = re.exec(text))) {
    blocks.push({ text: m[1], first: m[1].split('\n')[0], line: text.slice(0, m.index).split('\n').length });
  }
  return blocks;
}

// Applies a block's substitutions, each of which must match.
function substitute(block, subs, doc = 'README.md') {
  let text = block.text;
  for (const { from, to, why } of subs) {
    const before = text;
    text = typeof from === 'string' ? text.split(from).join(to) : text.replace(from, to);
    assert.notEqual(text, before, `${doc} line ${block.line}: the substitution of ${from} (${why}) matched nothing: update the test's BLOCKS`);
  }
  return text;
}

// Output split by the command bash was about to run (a DEBUG trap): each
// section's out is what the commands after that marker printed.
const TRACE = [
  "__readme_trace() { printf '\\n@@ %s\\n' \"${BASH_COMMAND//$'\\n'/ }\"; }",
  'trap __readme_trace DEBUG',
  '',
].join('\n');

function sections(stdout) {
  const parts = stdout.split(/\n@@ (.*)\n/);
  const out = [];
  for (let i = 1; i < parts.length; i += 2) out.push({ cmd: parts[i], out: parts[i + 1] || '' });
  return out;
}

// What the commands matching re printed (the last command of a pipeline
// holds its output).
function outputOf(secs, re) {
  const hits = secs.filter((s) => re.test(s.cmd));
  assert.ok(hits.length, `no command matching ${re} ran:\n${secs.map((s) => s.cmd).join('\n')}`);
  return hits.map((s) => s.out).join('');
}

function jsonOf(secs, re) {
  const text = outputOf(secs, re).trim();
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`the output of ${re} is not one JSON object (${e.message}):\n${text}`);
  }
}

function bash(script, { cwd, env, trace = true, timeoutMs = 120000 } = {}) {
  return new Promise((resolve) => {
    const p = spawn(tool('bash'), ['-e', '-o', 'pipefail', '-c', (trace ? TRACE : '') + script], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c) => (stdout += c));
    p.stderr.on('data', (c) => (stderr += c));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, sections: sections(stdout) });
    });
  });
}

// dir, made, holding what the pages call by name: grpcurl (lib/grpcurl.js
// on this Node) and a link to each of links' files ({ name: file }).
function toolsDir(dir, links = {}) {
  fs.mkdirSync(dir, { recursive: true });
  const grpcurl = path.join(__dirname, 'grpcurl.js');
  fs.writeFileSync(path.join(dir, 'grpcurl'), `#!/bin/sh\nexec '${process.execPath}' '${grpcurl}' "$@"\n`, { mode: 0o755 });
  for (const [name, file] of Object.entries(links)) fs.symlinkSync(path.resolve(file), path.join(dir, name));
  return dir;
}

// The blocks of doc (its path as the page names it, for messages) run as
// an operator runs them one after the other: each after the prelude (the
// first block, which sets S and g), the pages' API address 127.0.0.1:7443
// replaced by address wherever it appears, in cwd with env; a block that
// fails fails the test with its output.
const PAGE_ADDRESS = '127.0.0.1:7443';
function pageRunner({ doc, cwd, env, address }) {
  const api = { from: PAGE_ADDRESS, to: address, why: 'the test server\'s port' };
  const page = {
    prelude: '',
    setPrelude(block) {
      page.prelude = substitute(block, [api], doc);
    },
    async run(block, subs = [], { timeoutMs = 120000, env: runEnv = env } = {}) {
      const text = substitute(block, block.text.includes(PAGE_ADDRESS) ? [api, ...subs] : subs, doc);
      const r = await bash(page.prelude + text, { cwd, env: runEnv, timeoutMs });
      assert.equal(r.code, 0, `${doc} line ${block.line} failed (exit ${r.code}):\n${r.stderr}\n${r.stdout}`);
      return r;
    },
  };
  return page;
}

module.exports = { shBlocks, substitute, sections, outputOf, jsonOf, bash, toolsDir, pageRunner };
