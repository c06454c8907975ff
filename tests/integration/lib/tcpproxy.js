'use strict';
// A TCP proxy on 127.0.0.1 (a port the OS picks) in front of one
// address, which can turn into a blackhole: a network partition without
// a reset. Blackholed, it forwards nothing in either direction, drops
// what arrives, closes nothing (a side that closes is not told to the
// other) and accepts new connections into the same silence.
//
//   const p = await TcpProxy.start('127.0.0.1:7443');   // p.address
//   p.blackhole();   // from now on, every connection, old and new
//   p.held           // connections accepted into the silence, still open
//   await p.close(); // destroys every socket

const net = require('node:net');

class TcpProxy {
  constructor(target) {
    const i = target.lastIndexOf(':');
    this.host = target.slice(0, i);
    this.port = Number(target.slice(i + 1));
    this.holed = false;
    this.sockets = new Set();
    this.accepted = 0;
    this.holding = new Set(); // accepted while blackholed, still open
    this.server = net.createServer((client) => this._pair(client));
  }

  static async start(target) {
    const p = new TcpProxy(target);
    await new Promise((resolve, reject) => {
      p.server.once('error', reject);
      p.server.listen(0, '127.0.0.1', resolve);
    });
    p.address = `127.0.0.1:${p.server.address().port}`;
    return p;
  }

  _keep(s) {
    this.sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => this.sockets.delete(s));
  }

  _pair(client) {
    this.accepted++;
    this._keep(client);
    if (this.holed) {
      this.holding.add(client);
      client.on('close', () => this.holding.delete(client));
      client.on('data', () => {});
      return;
    }
    const upstream = net.connect(this.port, this.host);
    this._keep(upstream);
    const forward = (from, to) => {
      from.on('data', (d) => {
        if (!this.holed) to.write(d);
      });
      from.on('end', () => {
        if (!this.holed) to.end();
      });
      from.on('close', () => {
        if (!this.holed) to.destroy();
      });
    };
    forward(client, upstream);
    forward(upstream, client);
  }

  get held() {
    return this.holding.size;
  }

  blackhole() {
    this.holed = true;
  }

  async close() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

module.exports = { TcpProxy };
