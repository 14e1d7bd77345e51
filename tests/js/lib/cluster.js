'use strict'
// Cluster-mode harness: a throwaway nats-server with JetStream (temporary store directory,
// free loopback port, both kept across restarts) and N realtide nodes sharing one PostgreSQL
// (a Cluster from lib/pg.js: one DB_URL, SLOT_NAME and JWT_SECRET), each with its own port,
// CLUSTER_NODE_NAME and CHANGES_DIR. `waitFormed()` waits (bounded) until every running
// node's /api/health lists exactly the running nodes and the same slot holder.
//
// nats-server comes from NATS_SERVER, PATH, /usr/sbin or /usr/local/bin (Debian package
// `nats-server`; .ci/run installs it); without it the suites fail with a message saying so.

const { spawn } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const h = require('./helpers')
const f = require('./faults')

/** The nats-server binary, or an error saying how to get one. */
function natsServerBin() {
  if (process.env.NATS_SERVER) {
    if (!fs.existsSync(process.env.NATS_SERVER)) throw new Error(`NATS_SERVER=${process.env.NATS_SERVER} does not exist`)
    return process.env.NATS_SERVER
  }
  const dirs = (process.env.PATH || '').split(path.delimiter).concat(['/usr/sbin', '/usr/local/bin'])
  for (const dir of dirs) {
    const candidate = path.join(dir, 'nats-server')
    if (dir && fs.existsSync(candidate)) return candidate
  }
  throw new Error(
    'the cluster tests need nats-server (2.9 or newer, with JetStream): install it ' +
      '(`apt-get install nats-server`; .ci/run does this) or point NATS_SERVER at the binary'
  )
}

/** Resolves to the first bytes the server at `port` sends (its INFO line), or null. */
function infoLine(port, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    let data = ''
    const done = (v) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(v)
    }
    const timer = setTimeout(() => done(null), timeoutMs)
    socket.on('data', (chunk) => {
      data += chunk
      if (data.includes('\r\n')) done(data)
    })
    socket.on('error', () => done(null))
  })
}

/** A nats-server -js on a fixed port and store directory; restartable. */
class Nats {
  constructor(port, dir) {
    this.port = port
    this.dir = dir
    this.child = null
    this.log = ''
    this.events = []
  }

  get url() {
    return `nats://127.0.0.1:${this.port}`
  }

  note(what) {
    this.events.push(`${new Date().toISOString()} nats: ${what}`)
  }

  get running() {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null
  }

  /** Starts it (again) and waits until it accepts clients with JetStream (bounded). */
  async start(timeoutMs = 20000) {
    if (this.running) return
    const bin = natsServerBin()
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const child = spawn(bin, ['-js', '-sd', path.join(this.dir, 'store'), '-a', '127.0.0.1', '-p', String(this.port)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      const keep = (c) => (this.log = (this.log + c).slice(-20000))
      child.stdout.setEncoding('utf8').on('data', keep)
      child.stderr.setEncoding('utf8').on('data', keep)
      for (;;) {
        if (child.exitCode !== null || child.signalCode !== null) break
        const info = await infoLine(this.port)
        if (info && info.startsWith('INFO ')) {
          if (!info.includes('"jetstream":true')) {
            child.kill('SIGKILL')
            throw new Error(`nats-server runs without JetStream: ${info}`)
          }
          this.child = child
          this.note(`started pid ${child.pid} on ${this.port}`)
          return
        }
        if (Date.now() > deadline) break
        await h.sleep(50)
      }
      child.kill('SIGKILL')
      if (Date.now() > deadline) throw new Error(`nats-server did not start on port ${this.port} within ${timeoutMs} ms\n${this.log}`)
      // The port of a process that just stopped may take a moment to be free again.
      await h.sleep(250)
    }
  }

  /** Sends `sig` and waits (bounded; SIGKILL after 10 s) for the exit. */
  async stop(sig = 'SIGTERM') {
    const child = this.child
    if (!child) return
    this.child = null
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    this.note(`${sig} to pid ${child.pid}`)
    child.kill(sig)
    const t = setTimeout(() => child.kill('SIGKILL'), 10000)
    await exited
    clearTimeout(t)
  }

  kill() {
    return this.stop('SIGKILL')
  }

  async restart(downMs = 1000) {
    await this.stop()
    await h.sleep(downMs)
    await this.start()
  }

  async remove() {
    await this.kill()
    fs.rmSync(this.dir, { recursive: true, force: true })
  }
}

/** Starts a nats-server with JetStream in a new temporary directory on a free port. */
async function startNats() {
  natsServerBin()
  let lastErr
  for (let attempt = 0; attempt < 3; attempt++) {
    const nats = new Nats(await f.freePort(), f.tempDir('realtide-nats-'))
    try {
      await nats.start()
      return nats
    } catch (e) {
      lastErr = e
      await nats.remove()
    }
  }
  throw lastErr
}

/** One realtide node: its fixed port, name and journal, served by one process at a time. */
class Node {
  constructor(deployment, name, port, changesDir) {
    this.deployment = deployment
    this.name = name
    this.port = port
    this.changesDir = changesDir
    this.srv = null
    this.servers = []
  }

  /** `srv`-like object for h.makeClient and the faults helpers. */
  get endpoint() {
    return { httpUrl: `http://127.0.0.1:${this.port}`, wsBase: `ws://127.0.0.1:${this.port}` }
  }

  get httpUrl() {
    return this.endpoint.httpUrl
  }

  get wsBase() {
    return this.endpoint.wsBase
  }

  get running() {
    const c = this.srv && this.srv.child
    return !!c && c.exitCode === null && c.signalCode === null
  }

  async start() {
    const d = this.deployment
    let lastErr
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        this.srv = await h.startServer({
          PORT: String(this.port),
          DB_URL: d.db.dbUrl,
          SLOT_NAME: d.slot,
          CHANGES_DIR: this.changesDir,
          CLUSTER_NATS_URL: d.nats.url,
          CLUSTER_NODE_NAME: this.name,
          ...d.env,
        })
        this.servers.push(this.srv)
        d.note(`${this.name} started (pid ${this.srv.child.pid})`)
        return
      } catch (e) {
        lastErr = e
        if (!/in use|AddrInUse|os error 98/i.test(String(e.message))) throw e
        await h.sleep(500)
      }
    }
    throw lastErr
  }

  /** Sends `sig` and waits (bounded) for the exit: {code, signal}. */
  async signal(sig, timeoutMs = 40000) {
    const child = this.srv && this.srv.child
    if (!child) throw new Error(`${this.name} is not running`)
    const exited =
      child.exitCode !== null || child.signalCode !== null
        ? Promise.resolve({ code: child.exitCode, signal: child.signalCode })
        : new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    this.deployment.note(`${sig} to ${this.name} (pid ${child.pid})`)
    child.kill(sig)
    let timer
    const res = await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(() => resolve(null), timeoutMs)))])
    clearTimeout(timer)
    if (!res) {
      child.kill('SIGKILL')
      await exited
      throw new Error(`${this.name} did not exit within ${timeoutMs} ms of ${sig}`)
    }
    this.deployment.note(`${this.name} exited (code ${res.code}, signal ${res.signal})`)
    return res
  }

  /** GET /api/health as JSON (whatever the status). */
  async health() {
    const res = await fetch(`${this.httpUrl}/api/health`)
    return res.json()
  }

  output(lines = 40) {
    return this.servers
      .map((s) => `=== ${this.name} pid ${s.child.pid} ===\n${s.output().split('\n').slice(-lines).join('\n')}`)
      .join('\n')
  }
}

/** N nodes on one database and one NATS. */
class ClusterDeployment {
  constructor({ db, nats, slot, env }) {
    this.db = db
    this.nats = nats
    this.slot = slot
    this.env = env
    this.nodes = []
    this.events = []
  }

  note(what) {
    this.events.push(`${new Date().toISOString()} ${what}`)
  }

  async addNode(name) {
    const node = new Node(this, name, await f.freePort(), f.tempDir(`realtide-${name}-`))
    this.nodes.push(node)
    await node.start()
    return node
  }

  node(name) {
    const n = this.nodes.find((x) => x.name === name)
    if (!n) throw new Error(`no node ${name}`)
    return n
  }

  get running() {
    return this.nodes.filter((n) => n.running)
  }

  /**
   * Waits until every node of `nodes` (default: the running ones) reports NATS connected,
   * exactly those node names, and the same slot holder among them; returns the holder's name.
   */
  async waitFormed({ nodes = this.running, timeout = 20000 } = {}) {
    const names = nodes.map((n) => n.name).sort()
    let last = []
    try {
      return await h.waitFor(
        async () => {
          last = await Promise.all(nodes.map((n) => n.health().then((b) => ({ name: n.name, cluster: b.cluster }), (e) => ({ name: n.name, error: String(e) }))))
          const holders = new Set(last.map((x) => x.cluster && x.cluster.slot_holder))
          const ok = last.every(
            (x) =>
              x.cluster &&
              x.cluster.node === x.name &&
              x.cluster.nats === 'connected' &&
              JSON.stringify(x.cluster.nodes) === JSON.stringify(names)
          )
          const [holder] = [...holders]
          return ok && holders.size === 1 && names.includes(holder) && holder
        },
        `cluster formed of ${names.join(', ')} with one slot holder`,
        { timeout }
      )
    } catch (e) {
      throw new Error(`${e.message}\nlast health: ${JSON.stringify(last)}\n${this.output()}`)
    }
  }

  /** The node the running nodes agree holds the slot. */
  async holder() {
    return this.node(await this.waitFormed())
  }

  output(lines = 40) {
    return [
      `=== timeline ===\n${this.events.concat(this.nats.events).sort().join('\n')}`,
      ...this.nodes.map((n) => n.output(lines)),
      `=== nats-server log tail ===\n${this.nats.log.split('\n').slice(-15).join('\n')}`,
    ].join('\n')
  }

  async stop() {
    for (const n of this.nodes) for (const s of n.servers) await s.stop()
    for (const n of this.nodes) fs.rmSync(n.changesDir, { recursive: true, force: true })
    await this.nats.remove()
  }
}

/**
 * Starts NATS and `n` nodes (`node-1`..) on `db` (from lib/pg.js) with one slot; waits for
 * the slot to stream and the cluster to form. `env` goes to every node.
 */
async function startClusterNodes(db, { n = 3, env = {}, slot = `cluster_${process.pid}_${Date.now() % 1e6}` } = {}) {
  const nats = await startNats()
  const d = new ClusterDeployment({ db, nats, slot, env })
  try {
    for (let i = 1; i <= n; i++) await d.addNode(`node-${i}`)
    await db.waitForSlot(slot)
    await d.waitFormed()
  } catch (e) {
    const out = d.output()
    await d.stop()
    throw new Error(`${e.message}\n${out}`)
  }
  return d
}

module.exports = { natsServerBin, startNats, Nats, Node, ClusterDeployment, startClusterNodes }
