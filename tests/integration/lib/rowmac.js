'use strict';
// Re-authenticates a stored row under the data directory's master key, as
// a server holding that key does when it writes (store/seal.c): an HMAC-
// SHA256 of the row's kind, name and data, each after its big-endian
// length (4, 4 and 8 bytes), under HKDF-SHA256(master key, info
// "tlsplane row mac v1", no salt), stored as version 1 | key id (8 bytes
// of SHA-256("tlsplane master key id" | key)) | tag. Written from the
// format, not from the C code, so a test that needs a row "as an older
// server stored it" can make one that the store accepts.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

function be(n, bytes) {
  const b = Buffer.alloc(bytes);
  if (bytes === 8) b.writeBigUInt64BE(BigInt(n));
  else b.writeUInt32BE(n);
  return b;
}

function rowMac(masterKey, kind, name, data) {
  const macKey = Buffer.from(crypto.hkdfSync('sha256', masterKey, Buffer.alloc(0), 'tlsplane row mac v1', 32));
  const h = crypto.createHmac('sha256', macKey);
  for (const part of [Buffer.from(kind), Buffer.from(name)]) h.update(be(part.length, 4)).update(part);
  h.update(be(data.length, 8)).update(data);
  const id = crypto.createHash('sha256').update('tlsplane master key id').update(masterKey).digest().subarray(0, 8);
  return Buffer.concat([Buffer.from([1]), id, h.digest()]);
}

// Rewrites row (kind, name)'s data in dataDir/tlsplane.db to `data` (a
// Buffer) with a MAC the store accepts. The server must be stopped, or
// must not have the row cached (it has no row cache).
function rewriteRow(dataDir, kind, name, data) {
  const key = Buffer.from(fs.readFileSync(path.join(dataDir, 'master.key'), 'utf8').trim(), 'base64');
  const mac = rowMac(key, kind, name, data);
  const q = (s) => s.replace(/'/g, "''");
  execFileSync('sqlite3', ['-cmd', '.timeout 5000', path.join(dataDir, 'tlsplane.db'),
    `BEGIN; UPDATE resources SET data = X'${data.toString('hex')}' WHERE kind = '${q(kind)}' AND name = '${q(name)}';` +
    ` UPDATE macs SET mac = X'${mac.toString('hex')}' WHERE kind = '${q(kind)}' AND name = '${q(name)}'; COMMIT;`]);
}

module.exports = { rowMac, rewriteRow };
