'use strict';
// What the ACME order tests start: pebbles (lib/pebble.js), one ACME
// issuer per pebble with its account registered, a TLS server, an echo
// upstream, and a real tlsplane-agent (lib/cpagent.js) whose listener
// "listeners/edge" on `port` (the pebbles' tlsPort) routes the given
// hostnames to an ordinary certificate, so that the server puts
// tls-alpn-01 challenges out there and the agent answers them.
//
//   const env = await AcmeEnv.start({
//     pebbles: { pebble: { validitySeconds: 90 }, picky: { nonceReject: 20 }, spare: { ownPorts: true } },
//     hostnames: ['a.tlsplane.test'],
//     env: { TLSPLANE_RENEW_RETRY_MS: '1000' },    // the server's
//   });
//   env.srv, env.conn, env.api      // the server, an admin connection, conn.api
//   env.pebbles.pebble              // a Pebble; its issuer is "issuers/pebble"
//   env.p, env.up, env.agent, env.port
//   await env.close()               // agent, connection, server (stopClean), upstream, pebbles
//
// A pebble's options are Pebble.start's; ownPorts: true validates on
// free ports of its own instead of the agent's listener (a pebble that
// is only registered with, or stopped).

const { Server } = require('./server');
const { connect } = require('./reflect');
const { Pebble } = require('./pebble');
const { pki } = require('./pki');
const { Upstream } = require('./upstream');
const { exchange } = require('./tlsclient');
const { CpAgent } = require('./cpagent');
const { freePorts, agentBinary } = require('./agent');
const { uid } = require('./util');
const { waitFor } = require('./wait');


class AcmeEnv {
  static async start({ pebbles = { pebble: {} }, hostnames = [], env = {} } = {}) {
    agentBinary();
    const e = new AcmeEnv();
    e.p = pki();
    [e.port] = await freePorts(1);
    e.pebbles = {};
    const ids = Object.keys(pebbles);
    const started = await Promise.all(ids.map((id) => {
      const { ownPorts, ...opts } = pebbles[id];
      return Pebble.start(ownPorts ? opts : { tlsPort: e.port, ...opts });
    }));
    ids.forEach((id, i) => { e.pebbles[id] = started[i]; });
    e.up = await Upstream.start({ mode: 'echo' });
    e.srv = await Server.start({ tls: true, env });
    e.conn = await connect(e.srv.address, e.srv.connectOptions());
    e.api = e.conn.api;
    const issuers = e.api.IssuerService;
    for (const id of ids) await issuers.CreateIssuer({ issuerId: id, issuer: e.pebbles[id].issuer() });
    for (const id of ids) {
      await waitFor(`issuers/${id}: account valid`, async () => {
        const g = await issuers.GetIssuer({ name: `issuers/${id}` });
        return g.acmeAccountStatus === 'valid' ? g : null;
      }, { timeoutMs: 30000 });
    }
    // The listener pebble validates on: its default context serves an
    // ordinary certificate, and SNI routes name the ACME names.
    await e.api.CertificateService.CreateCertificate({ certificateId: 'web', certificate: { certificateChainPem: e.p.rsa.cert, privateKeyPem: e.p.rsa.key } });
    await e.api.TlsContextService.CreateTlsContext({ tlsContextId: 'web', tlsContext: { certificates: ['certificates/web'] } });
    await e.api.ListenerService.CreateListener({
      listenerId: 'edge',
      listener: {
        address: `127.0.0.1:${e.port}`, defaultTlsContext: 'tlsContexts/web', upstream: e.up.address,
        sniRoutes: hostnames.map((hostname) => ({ hostname, tlsContext: 'tlsContexts/web' })),
      },
    });
    const tok = await e.api.TokenService.CreateToken({ tokenId: uid('join'), token: { role: 'JOIN', agentId: 'edge-1' } });
    e.agent = await CpAgent.start(e.srv, { name: 'edge-1', joinToken: tok.secret, wait: 'connected' });
    await waitFor('the agent serves the listener', async () => (await exchange(e.port, {}, { send: 'x\n' })).ok);
    return e;
  }

  async close() {
    if (this.agent) await this.agent.stopClean();
    if (this.conn) this.conn.close();
    if (this.srv && this.srv.running) await this.srv.stopClean();
    if (this.up) await this.up.close();
    for (const pb of Object.values(this.pebbles || {})) pb.stop();
  }
}

module.exports = { AcmeEnv };
