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

const assert = require('node:assert/strict');
const fs = require('node:fs');
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

module.exports = { shBlocks, substitute, sections, outputOf, jsonOf, bash };
