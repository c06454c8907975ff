'use strict';
// Real keys, certificates, CRLs, DH parameters and OCSP responses made with
// the `openssl` CLI (OpenSSL 3.0 or later) in a temporary directory.
//
// Everything is generated once per process (each *.test.js file runs in its
// own process) by pki(); the directory is removed when the process exits.
// Facts the tests compare the server's derived fields against (subject,
// serial, fingerprint, dates) are read back from `openssl x509`, not
// computed here, so a test compares the server with OpenSSL's own view.

const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { tool } = require('./tools');

const PASSPHRASE = 'correct horse battery staple';

function openssl(dir, args, input) {
  const bin = tool('openssl');
  try {
    return execFileSync(bin, args, {
      cwd: dir,
      input,
      stdio: ['pipe', 'pipe', 'pipe'],
      maxBuffer: 16 * 1024 * 1024,
    });
  } catch (e) {
    const stderr = e.stderr ? e.stderr.toString() : '';
    throw new Error(`openssl ${args.join(' ')} failed: ${stderr || e.message}`);
  }
}

// "20200101000000Z" for openssl ca -startdate/-enddate.
function asn1Time(date) {
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return (
    p(date.getUTCFullYear(), 4) + p(date.getUTCMonth() + 1) + p(date.getUTCDate()) +
    p(date.getUTCHours()) + p(date.getUTCMinutes()) + p(date.getUTCSeconds()) + 'Z'
  );
}

const DAY = 24 * 3600 * 1000;

const CA_CONF = `
[ ca ]
default_ca = tp_ca

[ tp_ca ]
dir = .
database = $dir/index.txt
serial = $dir/serial
crlnumber = $dir/crlnumber
new_certs_dir = $dir/newcerts
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = copy
x509_extensions = leaf_ext
email_in_dn = no
preserve = yes

[ policy_any ]
organizationName = optional
commonName = supplied

[ leaf_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

# A server leaf as a public CA issues it: with a CRL distribution point
# (scanners such as testssl.sh rate a certificate without one HIGH).
[ served_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://127.0.0.1:9/ca.crl

[ inter_ext ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ ocsp_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
`;

class Pki {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tlsplane-pki-'));
    this.passphrase = PASSPHRASE;
    this._build();
  }

  run(args, input) {
    return openssl(this.dir, args, input);
  }

  file(name) {
    return path.join(this.dir, name);
  }

  read(name) {
    return fs.readFileSync(this.file(name), 'utf8');
  }

  readBuf(name) {
    return fs.readFileSync(this.file(name));
  }

  // A new private key. type: 'rsa' (2048), 'ec' (P-256), 'ed25519'.
  genkey(name, type) {
    const args = ['genpkey', '-out', `${name}.key`];
    if (type === 'rsa') args.push('-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048');
    else if (type === 'ec') args.push('-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256');
    else if (type === 'ed25519') args.push('-algorithm', 'ED25519');
    else throw new Error(`unknown key type ${type}`);
    this.run(args);
  }

  // A leaf signed by the CA (or `issuer` 'inter') through `openssl ca`, with
  // explicit validity dates so that expired and not-yet-valid ones work.
  // extfile: a file of the PKI's directory holding the `ext` section
  // instead of ca.cnf (ocspLeaf).
  leaf(name, { type = 'ec', cn, o = 'Tlsplane Test', sans = [], start, end, issuer = 'ca', key, ext = 'leaf_ext', extfile } = {}) {
    if (key) fs.copyFileSync(this.file(`${key}.key`), this.file(`${name}.key`));
    else this.genkey(name, type);
    const req = ['req', '-new', '-key', `${name}.key`, '-out', `${name}.csr`, '-subj', `/O=${o}/CN=${cn}`];
    if (sans.length) req.push('-addext', `subjectAltName=${sans.join(',')}`);
    this.run(req);
    const now = Date.now();
    const ca = [
      'ca', '-batch', '-config', 'ca.cnf', '-notext', '-in', `${name}.csr`, '-out', `${name}.crt`,
      '-startdate', asn1Time(start || new Date(now - DAY)),
      '-enddate', asn1Time(end || new Date(now + 365 * DAY)),
      '-extensions', ext,
    ];
    if (extfile) ca.push('-extfile', extfile);
    if (issuer !== 'ca') ca.push('-cert', `${issuer}.crt`, '-keyfile', `${issuer}.key`);
    this.run(ca);
    return this.describe(name);
  }

  // A server leaf signed by the CA whose Authority Information Access names
  // the OCSP responder at url ("http://127.0.0.1:PORT"). opts as leaf's.
  ocspLeaf(name, url, opts = {}) {
    fs.writeFileSync(this.file(`${name}-ext.cnf`), `[ aia_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
authorityInfoAccess = OCSP;URI:${url}
`);
    return this.leaf(name, { cn: `${name}.example.com`, ...opts, ext: 'aia_ext', extfile: `${name}-ext.cnf` });
  }

  // A DER OCSP response for name's certificate as the CA's index has it now
  // (good, or revoked after revoke(name)), signed by the responder
  // certificate, valid `ndays` days.
  ocspResponseFor(name, { ndays = 7 } = {}) {
    this.run(['ocsp', '-issuer', 'ca.crt', '-cert', `${name}.crt`, '-no_nonce', '-reqout', `${name}-ocsp-req3.der`]);
    this.run([
      'ocsp', '-index', 'index.txt', '-rsigner', 'ocsp-responder.crt', '-rkey', 'ocsp-responder.key',
      '-CA', 'ca.crt', '-reqin', `${name}-ocsp-req3.der`, '-respout', `${name}-ocsp3.der`, '-ndays', String(ndays),
    ]);
    return this.readBuf(`${name}-ocsp3.der`);
  }

  // Marks name's certificate revoked in the CA's index (what an
  // \`openssl ocsp -index index.txt\` responder answers from).
  revoke(name) {
    this.run(['ca', '-batch', '-config', 'ca.cnf', '-revoke', `${name}.crt`]);
  }

  // What OpenSSL says about a certificate: the values the server must derive.
  describe(name) {
    const certFile = `${name}.crt`;
    const x = (...a) => this.run(['x509', '-in', certFile, '-noout', ...a]).toString().trim();
    const after = (s) => s.slice(s.indexOf('=') + 1);
    const sanText = this.run(['x509', '-in', certFile, '-noout', '-ext', 'subjectAltName']).toString();
    const dnsNames = [...sanText.matchAll(/DNS:([^,\s]+)/g)].map((m) => m[1]);
    const ipAddresses = [...sanText.matchAll(/IP Address:([^,\s]+)/g)].map((m) => m[1]);
    const cert = this.read(certFile);
    return {
      name,
      cert,
      key: this.read(`${name}.key`),
      certFile: this.file(certFile),
      keyFile: this.file(`${name}.key`),
      subject: after(x('-subject', '-nameopt', 'RFC2253')),
      issuer: after(x('-issuer', '-nameopt', 'RFC2253')),
      serial: after(x('-serial')),
      fingerprint: after(x('-fingerprint', '-sha256')),
      notBefore: new Date(after(x('-startdate'))),
      notAfter: new Date(after(x('-enddate'))),
      dnsNames,
      ipAddresses,
    };
  }

  _build() {
    const t0 = Date.now();
    fs.writeFileSync(this.file('ca.cnf'), CA_CONF);
    fs.writeFileSync(this.file('index.txt'), '');
    fs.writeFileSync(this.file('serial'), '1000A1\n');
    fs.writeFileSync(this.file('crlnumber'), '01\n');
    fs.mkdirSync(this.file('newcerts'));

    // The root CA, self-signed, RSA 2048.
    this.genkey('ca', 'rsa');
    this.run([
      'req', '-x509', '-new', '-key', 'ca.key', '-out', 'ca.crt', '-days', '3650',
      '-subj', '/O=Tlsplane Test/CN=Tlsplane Test Root CA',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature',
    ]);
    this.ca = this.describe('ca');

    // An intermediate CA, for chains of two.
    this.genkey('inter', 'ec');
    this.run(['req', '-new', '-key', 'inter.key', '-out', 'inter.csr', '-subj', '/O=Tlsplane Test/CN=Tlsplane Test Intermediate CA']);
    this.run([
      'ca', '-batch', '-config', 'ca.cnf', '-notext', '-in', 'inter.csr', '-out', 'inter.crt',
      '-days', '3650', '-extensions', 'inter_ext',
    ]);
    this.inter = this.describe('inter');

    // A second, unrelated root (trust bundle with two CAs).
    this.genkey('ca2', 'ec');
    this.run([
      'req', '-x509', '-new', '-key', 'ca2.key', '-out', 'ca2.crt', '-days', '3650',
      '-subj', '/O=Other Test/CN=Other Test Root CA',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    this.ca2 = this.describe('ca2');

    const now = Date.now();
    this.rsa = this.leaf('rsa', {
      type: 'rsa', cn: 'www.example.com',
      sans: ['DNS:www.example.com', 'DNS:example.com', 'IP:127.0.0.1'],
    });
    this.ecdsa = this.leaf('ecdsa', {
      type: 'ec', cn: 'www.example.com', sans: ['DNS:www.example.com', 'DNS:example.com'],
    });
    this.ecdsa2 = this.leaf('ecdsa2', {
      type: 'ec', cn: 'api.example.com', sans: ['DNS:api.example.com'],
    });
    this.ed25519 = this.leaf('ed25519', {
      type: 'ed25519', cn: 'ed.example.com', sans: ['DNS:ed.example.com'],
    });
    // Signed by the intermediate: the chain is leaf + intermediate.
    this.chained = this.leaf('chained', {
      type: 'ec', cn: 'chain.example.com', sans: ['DNS:chain.example.com'], issuer: 'inter',
    });
    this.chained.chain = this.chained.cert + this.inter.cert;
    // The same RSA key, a new certificate: a renewal that keeps the key.
    this.rsaRenewed = this.leaf('rsa-renewed', {
      key: 'rsa', cn: 'www.example.com',
      sans: ['DNS:www.example.com', 'DNS:example.com', 'DNS:renewed.example.com'],
    });
    this.expired = this.leaf('expired', {
      type: 'ec', cn: 'expired.example.com', sans: ['DNS:expired.example.com'],
      start: new Date('2020-01-01T00:00:00Z'), end: new Date('2020-02-01T00:00:00Z'),
    });
    this.notYetValid = this.leaf('future', {
      type: 'ec', cn: 'future.example.com', sans: ['DNS:future.example.com'],
      start: new Date(now + 365 * DAY), end: new Date(now + 2 * 365 * DAY),
    });
    this.expiring10d = this.leaf('expiring10d', {
      type: 'ec', cn: 'soon.example.com', sans: ['DNS:soon.example.com'],
      end: new Date(now + 10 * DAY),
    });
    this.expiring90d = this.leaf('expiring90d', {
      type: 'ec', cn: 'later.example.com', sans: ['DNS:later.example.com'],
      end: new Date(now + 90 * DAY),
    });
    // Client certificate, later revoked in the CRL.
    this.revoked = this.leaf('revoked', { type: 'ec', cn: 'revoked-client' });
    // An unrelated key: does not match any certificate.
    this.genkey('other-rsa', 'rsa');
    this.otherRsaKey = this.read('other-rsa.key');

    // Encrypted keys: PKCS#8 (BEGIN ENCRYPTED PRIVATE KEY) and the legacy
    // OpenSSL form (BEGIN RSA PRIVATE KEY + Proc-Type: 4,ENCRYPTED / DEK-Info).
    this.run(['pkey', '-in', 'rsa.key', '-aes256', '-passout', `pass:${PASSPHRASE}`, '-out', 'rsa-enc-pkcs8.key']);
    this.rsa.encryptedPkcs8Key = this.read('rsa-enc-pkcs8.key');
    this.run(['rsa', '-in', 'rsa.key', '-aes256', '-traditional', '-passout', `pass:${PASSPHRASE}`, '-out', 'rsa-enc-legacy.key']);
    this.rsa.encryptedLegacyKey = this.read('rsa-enc-legacy.key');
    this.run(['pkey', '-in', 'ecdsa.key', '-aes256', '-passout', `pass:${PASSPHRASE}`, '-out', 'ecdsa-enc-pkcs8.key']);
    this.ecdsa.encryptedPkcs8Key = this.read('ecdsa-enc-pkcs8.key');
    // Other unencrypted encodings of the same keys: PKCS#1 and SEC1.
    this.run(['rsa', '-in', 'rsa.key', '-traditional', '-out', 'rsa-pkcs1.key']);
    this.rsa.pkcs1Key = this.read('rsa-pkcs1.key');
    this.run(['ec', '-in', 'ecdsa.key', '-out', 'ecdsa-sec1.key']);
    this.ecdsa.sec1Key = this.read('ecdsa-sec1.key');

    // PKCS#12: modern (AES-256-CBC, PBKDF2, SHA-256 MAC), legacy (-legacy:
    // RC2-40 + 3DES, SHA-1 MAC, what old Windows / Java tools write) and
    // 3DES-only.
    const p12 = (out, extra) => this.run([
      'pkcs12', '-export', '-in', 'rsa.crt', '-inkey', 'rsa.key', '-certfile', 'ca.crt',
      '-name', 'www.example.com', '-passout', `pass:${PASSPHRASE}`, '-out', out, ...extra,
    ]);
    p12('rsa.pfx', []);
    p12('rsa-legacy.pfx', ['-legacy']);
    p12('rsa-3des.pfx', ['-certpbe', 'PBE-SHA1-3DES', '-keypbe', 'PBE-SHA1-3DES', '-macalg', 'sha1']);
    this.rsa.pfx = this.readBuf('rsa.pfx');
    this.rsa.pfxLegacy = this.readBuf('rsa-legacy.pfx');
    this.rsa.pfx3des = this.readBuf('rsa-3des.pfx');
    this.run([
      'pkcs12', '-export', '-in', 'chained.crt', '-inkey', 'chained.key', '-certfile', 'inter.crt',
      '-passout', `pass:${PASSPHRASE}`, '-out', 'chained.pfx',
    ]);
    this.chained.pfx = this.readBuf('chained.pfx');

    // OCSP: a responder certificate and a "good" response for the RSA leaf
    // (and one for the ECDSA leaf, which does not name the RSA leaf).
    this.leaf('ocsp-responder', { type: 'ec', cn: 'Tlsplane Test OCSP Responder', ext: 'ocsp_ext' });
    const ocsp = (leafName) => {
      this.run(['ocsp', '-issuer', 'ca.crt', '-cert', `${leafName}.crt`, '-no_nonce', '-reqout', `${leafName}-ocsp-req.der`]);
      this.run([
        'ocsp', '-index', 'index.txt', '-rsigner', 'ocsp-responder.crt', '-rkey', 'ocsp-responder.key',
        '-CA', 'ca.crt', '-reqin', `${leafName}-ocsp-req.der`, '-respout', `${leafName}-ocsp.der`,
        '-ndays', '7',
      ]);
      return this.readBuf(`${leafName}-ocsp.der`);
    };
    this.rsa.ocspResponse = ocsp('rsa');
    this.ecdsa.ocspResponse = ocsp('ecdsa');
    const ocspText = this.run(['ocsp', '-respin', 'rsa-ocsp.der', '-resp_text', '-noverify']).toString();
    const nu = /Next Update: (.+)/.exec(ocspText);
    this.rsa.ocspNextUpdate = nu ? new Date(nu[1].trim()) : null;

    // The CRL: the CA revokes one client certificate.
    this.run(['ca', '-batch', '-config', 'ca.cnf', '-revoke', 'revoked.crt', '-crl_reason', 'keyCompromise']);
    this.run(['ca', '-batch', '-config', 'ca.cnf', '-gencrl', '-crldays', '30', '-out', 'ca.crl']);
    this.crlPem = this.read('ca.crl');
    this.run(['crl', '-in', 'ca.crl', '-outform', 'DER', '-out', 'ca-crl.der']);
    this.crlDer = this.readBuf('ca-crl.der');
    const crlText = (...a) => this.run(['crl', '-in', 'ca.crl', '-noout', ...a]).toString().trim();
    const after = (s) => s.slice(s.indexOf('=') + 1);
    this.crl = {
      pem: this.crlPem,
      der: this.crlDer,
      issuer: after(crlText('-issuer', '-nameopt', 'RFC2253')),
      lastUpdate: new Date(after(crlText('-lastupdate'))),
      nextUpdate: new Date(after(crlText('-nextupdate'))),
      crlNumber: after(crlText('-crlnumber')),
      revokedCount: 1,
    };

    // DH parameters: 512 (refused), 1024 (accepted with a warning), 2048 (the
    // RFC 7919 ffdhe2048 group, accepted; named groups cost no generation).
    this.run(['dhparam', '-out', 'dh512.pem', '512']);
    this.run(['dhparam', '-out', 'dh1024.pem', '1024']);
    this.run(['genpkey', '-genparam', '-algorithm', 'DH', '-pkeyopt', 'group:ffdhe2048', '-out', 'dh2048.pem']);
    this.dh512 = this.read('dh512.pem');
    this.dh1024 = this.read('dh1024.pem');
    this.dh2048 = this.read('dh2048.pem');

    this.buildMs = Date.now() - t0;
  }

  // What only the agent tests need, built on first call so that the
  // server's test files do not pay for it: client certificates (one
  // trusted, one from an unrelated CA), a wildcard leaf, a server
  // certificate converted from a PFX as the server converts it, and OCSP
  // responses whose nextUpdate has already passed.
  agentExtras() {
    if (this._agentExtras) return this._agentExtras;
    const now = Date.now();
    const x = {};
    // Client certificates: alice is issued by the root CA; mallory by the
    // unrelated ca2, so no trust bundle holding only the root verifies her.
    x.alice = this.leaf('alice', { type: 'ec', cn: 'alice' });
    x.mallory = this.leaf('mallory', { type: 'ec', cn: 'mallory', issuer: 'ca2' });
    // Server leafs for SNI routes.
    x.wildcard = this.leaf('wildcard', { type: 'ec', cn: '*.example.com', sans: ['DNS:*.example.com'] });
    x.rsaApi = this.leaf('rsa-api', { type: 'rsa', cn: 'rsa.example.com', sans: ['DNS:rsa.example.com'] });
    // A PFX (key + leaf + intermediate, passphrase-protected) converted to
    // what a snapshot carries: the chain PEM and an unencrypted PKCS#8 key.
    x.fromPfx = this.pfxToPem('chained.pfx', this.passphrase);
    // OCSP responses for the RSA and the ECDSA leaf whose nextUpdate lies
    // an hour in the past (openssl ocsp cannot date a response back).
    const past = new Date(now - 2 * 3600 * 1000);
    const passed = new Date(now - 3600 * 1000);
    x.rsaOcspExpired = this.ocspResponseDated('rsa', past, passed);
    x.ecdsaOcspExpired = this.ocspResponseDated('ecdsa', past, passed);
    this._agentExtras = x;
    return x;
  }

  // Revokes the certificate `name` (made by leaf(), issued by the root CA)
  // with `openssl ca -revoke` and returns a new CRL (PEM) of the root CA
  // listing it with every earlier revocation.
  revokeAndCrl(name) {
    this.run(['ca', '-batch', '-config', 'ca.cnf', '-revoke', `${name}.crt`, '-crl_reason', 'keyCompromise']);
    this.crlSeq = (this.crlSeq || 0) + 1;
    const out = `ca-${this.crlSeq}.crl`;
    this.run(['ca', '-batch', '-config', 'ca.cnf', '-gencrl', '-crldays', '30', '-out', out]);
    return this.read(out);
  }

  // The chain (leaf first, then the certificates of the file that issue
  // it) and the unencrypted PKCS#8 key of a PFX file, as
  // tlsconf_certificate_prepare turns a pfx into what agents load.
  pfxToPem(pfxName, passphrase) {
    const pass = `pass:${passphrase}`;
    const leafPem = this.run(['pkcs12', '-in', pfxName, '-passin', pass, '-clcerts', '-nokeys']).toString();
    const caPem = this.run(['pkcs12', '-in', pfxName, '-passin', pass, '-cacerts', '-nokeys']).toString();
    const keyPem = this.run(['pkcs12', '-in', pfxName, '-passin', pass, '-nocerts', '-nodes']).toString();
    const clean = (text) => (text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/g) || [])
      .map((b) => (b.endsWith('\n') ? b : b + '\n'));
    const key = this.run(['pkey'], Buffer.from(keyPem)).toString(); // PKCS#8, unencrypted
    const leaf = clean(leafPem);
    const cas = clean(caPem);
    const cert = leaf[0];
    const fp = this.run(['x509', '-noout', '-fingerprint', '-sha256'], Buffer.from(cert)).toString().trim();
    return { cert, key, chain: leaf.concat(cas).join(''), fingerprint: fp.slice(fp.indexOf('=') + 1) };
  }

  // A "good" OCSP response for `leafName` with the given thisUpdate and
  // nextUpdate, signed by the root CA itself (RFC 6960 allows the issuer
  // to sign). openssl ocsp makes the response; its times are then
  // rewritten in the DER (GeneralizedTime values keep their length) and
  // the tbsResponseData is signed again with the CA's RSA key (an RSA
  // signature keeps its length too), so the result verifies.
  ocspResponseDated(leafName, thisUpdate, nextUpdate) {
    const out = `${leafName}-ocsp-dated.der`;
    this.run(['ocsp', '-issuer', 'ca.crt', '-cert', `${leafName}.crt`, '-no_nonce', '-reqout', `${leafName}-ocsp-req2.der`]);
    this.run([
      'ocsp', '-index', 'index.txt', '-rsigner', 'ca.crt', '-rkey', 'ca.key', '-CA', 'ca.crt',
      '-reqin', `${leafName}-ocsp-req2.der`, '-respout', out, '-ndays', '1',
    ]);
    const der = Buffer.from(this.readBuf(out));
    // OCSPResponse ::= SEQ { status ENUM, [0] { SEQ { OID, OCTET STRING { BasicOCSPResponse } } } }
    // BasicOCSPResponse ::= SEQ { tbsResponseData SEQ, signatureAlgorithm SEQ, signature BIT STRING, ... }
    const top = derChildren(der, derNode(der, 0));
    const respBytes = derChildren(der, derChildren(der, top[1])[0]);
    const octet = respBytes[1];
    const basic = derChildren(der, derNode(der, octet.content));
    const [tbs, , sig] = basic;
    const gen = (d) => Buffer.from(asn1Time(d), 'latin1'); // YYYYMMDDHHMMSSZ, 15 bytes
    // producedAt is tbsResponseData's first GeneralizedTime; thisUpdate and
    // nextUpdate ([0] EXPLICIT) follow inside the SingleResponse.
    const times = [];
    for (let i = tbs.start; i < tbs.end - 1; i++) {
      if (der[i] === 0x18 && der[i + 1] === 0x0f) times.push(i + 2);
    }
    if (times.length !== 3) throw new Error(`expected 3 GeneralizedTime values in the OCSP response, found ${times.length}`);
    gen(thisUpdate).copy(der, times[0]);
    gen(thisUpdate).copy(der, times[1]);
    gen(nextUpdate).copy(der, times[2]);
    const caKey = crypto.createPrivateKey(this.read('ca.key'));
    const signature = crypto.sign('sha256', der.subarray(tbs.start, tbs.end), caKey);
    const sigLen = sig.end - sig.content - 1; // BIT STRING: one "unused bits" byte first
    if (signature.length !== sigLen) throw new Error(`signature length ${signature.length} != ${sigLen}`);
    signature.copy(der, sig.content + 1);
    fs.writeFileSync(this.file(out), der);
    return der;
  }

  cleanup() {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// Minimal DER walking for ocspResponseDated: the node at `offset` (tag,
// where its content starts, where it ends).
function derNode(buf, offset) {
  let len = buf[offset + 1];
  let content = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i];
    content += n;
  }
  return { tag: buf[offset], start: offset, content, end: content + len };
}

function derChildren(buf, node) {
  const out = [];
  for (let off = node.content; off < node.end;) {
    const child = derNode(buf, off);
    out.push(child);
    off = child.end;
  }
  return out;
}

let instance = null;

// The process-wide PKI, built on first use.
function pki() {
  if (!instance) {
    instance = new Pki();
    process.on('exit', () => instance && instance.cleanup());
  }
  return instance;
}

// "AB:CD:EF" fingerprint form of a hex digest.
function colonHex(buf) {
  return buf.toString('hex').toUpperCase().match(/../g).join(':');
}

module.exports = { pki, PASSPHRASE, colonHex, DAY };
