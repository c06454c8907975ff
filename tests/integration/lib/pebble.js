'use strict';
// pebble (Let's Encrypt's test CA) and pebble-challtestsrv (its DNS
// server, answering 127.0.0.1 for every name), Debian's packages, on free
// loopback ports, with real validation: pebble resolves the names through
// challtestsrv and connects to 127.0.0.1 on its httpPort for HTTP-01 and
// on its tlsPort for TLS-ALPN-01.
//
//   const pb = await Pebble.start();
//   pb.directory        // "https://127.0.0.1:PORT/dir"
//   pb.httpPort         // where the ACME client answers HTTP-01
//   pb.tlsPort          // where it answers TLS-ALPN-01
//   pb.trustFile        // the CA file that verifies pebble's own HTTPS (LEGO_CA_CERTIFICATES)
//   pb.root             // PEM of the root pebble issues under
//   pb.challtestsrv     // "http://127.0.0.1:PORT", challtestsrv's management API
//                       // (POST /set-txt, /clear-txt: the TXT records pebble's dns-01 sees)
//   pb.issuer({ ...overrides }) // an ACME Issuer body for it (contact, terms agreed)
//   pb.stop()
//
// Options: Pebble.start({ nonceReject: 50 }) makes pebble reject that
// percentage of valid nonces (PEBBLE_WFE_NONCEREJECT, answered with
// badNonce); Pebble.start({ eabKeys: { kid: 'base64url MAC key' } })
// requires an External Account Binding with one of these keys;
// Pebble.start({ tlsPort, httpPort }) validates on these ports (an agent
// listener's) instead of free ones; Pebble.start({ validitySeconds })
// issues certificates valid that long.

const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { pki } = require('./pki');
const { freePorts } = require('./agent');
const { tool } = require('./tools');
const procs = require('./procs');
const { waitFor } = require('./wait');

// A long-running process whose output is kept, gone with the test process.
function daemon(bin, args, env = {}) {
  const [cmd, argv] = procs.command(tool(bin), args);
  const d = { log: '', proc: spawn(cmd, argv, { env: { ...process.env, ...env } }) };
  d.proc.stdout.on('data', (b) => { d.log += b; });
  d.proc.stderr.on('data', (b) => { d.log += b; });
  d.proc.on('exit', () => procs.untrack(d));
  procs.track(d);
  return d;
}

function getText(port, urlPath, ca) {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port, path: urlPath, ca }, (res) => {
      let body = '';
      res.on('data', (b) => { body += b; });
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${urlPath}: HTTP ${res.statusCode}`))));
    }).on('error', reject);
  });
}

class Pebble {
  // The body of CreateIssuer for an ACME issuer of this pebble: its
  // directory, the CA that verifies its HTTPS, a contact, the terms
  // agreed; extra fields override or add.
  issuer(extra = {}) {
    return {
      type: 'ACME',
      acmeDirectoryUrl: this.directory,
      acmeCaPem: fs.readFileSync(this.trustFile, 'utf8'),
      acmeContact: ['mailto:admin@tlsplane.test'],
      acmeTermsAgreed: true,
      ...extra,
    };
  }

  static async start({ nonceReject = 0, eabKeys = null, tlsPort: wantTls = 0, httpPort: wantHttp = 0, validitySeconds = 0 } = {}) {
    const p = pki();
    p.leaf('pebble', { cn: '127.0.0.1', sans: ['IP:127.0.0.1'] });
    const dir = procs.tempDir('tlsplane-pebble-');
    const pb = new Pebble();
    pb.trustFile = path.join(dir, 'pebble-trust.pem');
    fs.writeFileSync(pb.trustFile, p.read('pebble.crt') + p.read('ca.crt'));
    const [acme, mgmt, freeHttp, freeTls, dns, dnsMgmt] = await freePorts(6);
    const http = wantHttp || freeHttp;
    const tlsPort = wantTls || freeTls;
    pb.directory = `https://127.0.0.1:${acme}/dir`;
    pb.httpPort = http;
    pb.tlsPort = tlsPort;
    pb.managementPort = mgmt;
    pb.challtestsrv = `http://127.0.0.1:${dnsMgmt}`;
    const config = path.join(dir, 'pebble.json');
    fs.writeFileSync(config, JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${acme}`, managementListenAddress: `127.0.0.1:${mgmt}`,
        certificate: p.file('pebble.crt'), privateKey: p.file('pebble.key'),
        httpPort: http, tlsPort, ocspResponderURL: '', externalAccountBindingRequired: !!eabKeys,
        ...(eabKeys ? { externalAccountMACKeys: eabKeys } : {}),
        ...(validitySeconds ? { certificateValidityPeriod: validitySeconds } : {}),
      },
    }));
    pb.daemons = [
      daemon('pebble-challtestsrv', ['-dns01', `127.0.0.1:${dns}`, '-http01', '', '-https01', '', '-tlsalpn01', '',
        '-management', `127.0.0.1:${dnsMgmt}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', '']),
      daemon('pebble', ['-config', config, '-dnsserver', `127.0.0.1:${dns}`], { PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: String(nonceReject) }),
    ];
    const [dnsSrv, pebble] = pb.daemons;
    await waitFor('challtestsrv answers DNS', () => /Starting challenge servers/.test(dnsSrv.log));
    await waitFor('pebble listens', () => /Listening on:/.test(pebble.log), { timeoutMs: 30000 });
    pb.root = await getText(mgmt, '/roots/0', fs.readFileSync(pb.trustFile));
    return pb;
  }

  stop() {
    for (const d of this.daemons) d.proc.kill('SIGKILL');
  }
}

module.exports = { Pebble };
