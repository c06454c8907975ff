'use strict';
// Two certificates whose orders share a name, ordered at once (pebble
// and a real agent answering tls-alpn-01, lib/acmeenv.js): one
// certificate's challenge for a name is out at a time. The order that
// finds the other's challenge out for the common name waits, saying so
// on its certificate ("waiting: certificates/X has a challenge out for
// NAME"), without counting a failure, and goes on once that challenge is
// back; both end valid. A fake agent that never acks (lib/fakeagent.js)
// keeps the first order's challenge out (the order waits, bounded, for
// every connected agent to apply it) until the test has seen the wait.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { AcmeEnv } = require('./lib/acmeenv');
const { FakeAgent } = require('./lib/fakeagent');
const { waitFor } = require('./lib/wait');

const COMMON = 'common.tlsplane.test';
const ONE = 'one.tlsplane.test';
const TWO = 'two.tlsplane.test';

let env;
const certs = () => env.api.CertificateService;
const get = (id) => certs().GetCertificate({ name: `certificates/${id}` });

before(async () => {
  env = await AcmeEnv.start({ hostnames: [ONE, TWO, COMMON], env: { TLSPLANE_RENEW_RETRY_MS: '1000' } });
});

after(async () => {
  if (env) await env.close();
});

test('two certificates with a common name ordered at once: the second waits for the first\'s challenge, saying so, and both end valid with no failure', async () => {
  const hold = await FakeAgent.enroll({ server: env.srv, conn: env.conn }, 'hold-1');
  let held = true;
  try {
    await Promise.all([
      certs().IssueCertificate({ certificateId: 'one', issuer: 'issuers/pebble', dnsNames: [ONE, COMMON] }),
      certs().IssueCertificate({ certificateId: 'two', issuer: 'issuers/pebble', dnsNames: [TWO, COMMON] }),
    ]);
    const seen = { one: new Set(), two: new Set() };
    const worst = { renewalFailures: 0, failures: 0 };
    const look = async () => {
      const both = { one: await get('one'), two: await get('two') };
      for (const [id, c] of Object.entries(both)) {
        if (c.acmeOrder?.lastError) seen[id].add(c.acmeOrder.lastError);
        worst.renewalFailures = Math.max(worst.renewalFailures, c.renewalFailures || 0);
        worst.failures = Math.max(worst.failures, c.acmeOrder?.failures || 0);
      }
      return both;
    };
    const waiting = await waitFor('one order waiting for the other\'s challenge', async () => {
      const both = await look();
      for (const [id, other] of [['one', 'two'], ['two', 'one']]) {
        if ((both[id].acmeOrder?.lastError || '').startsWith('waiting: ')) return { id, other, c: both[id] };
      }
      return null;
    }, { timeoutMs: 60000, intervalMs: 100 });
    assert.equal(waiting.c.acmeOrder.lastError, `waiting: certificates/${waiting.other} has a challenge out for ${COMMON}`);
    assert.equal(waiting.c.certificateChainPem, '');
    assert.ok(waiting.c.acmeOrder.nextAttemptTime, 'tried again soon');
    assert.equal(waiting.c.lastRenewalError, '', 'not recorded as a failed renewal');
    // The other's challenge is out meanwhile: its authorizations pending.
    const first = await get(waiting.other);
    assert.equal(first.certificateChainPem, '');
    assert.ok((first.acmeOrder?.authorizations || []).some((a) => a.identifier === COMMON && a.challengeType === 'tls-alpn-01'), JSON.stringify(first.acmeOrder));
    hold.close();
    held = false;
    const done = await waitFor('both orders complete', async () => {
      const both = await look();
      return both.one.certificateChainPem && both.two.certificateChainPem ? both : null;
    }, { timeoutMs: 120000, intervalMs: 250 });
    for (const [id, c] of Object.entries(done)) {
      assert.equal(c.acmeOrder.status, 'valid', id);
      assert.equal(c.acmeOrder.lastError, '', id);
      assert.equal(c.renewalFailures || 0, 0, `${id}: renewalFailures`);
      assert.equal(c.lastRenewalError, '', id);
      assert.deepEqual(c.acmeOrder.authorizations.map((a) => a.status), ['valid', 'valid'], id);
    }
    // Waiting was all that was seen: no failure, no back-off.
    assert.deepEqual(worst, { renewalFailures: 0, failures: 0 });
    assert.deepEqual([...seen[waiting.other]], [], `${waiting.other} never waited nor failed`);
    for (const e of seen[waiting.id]) assert.equal(e, `waiting: certificates/${waiting.other} has a challenge out for ${COMMON}`);
  } finally {
    if (held) hold.close();
  }
});
