'use strict'
// Tools for the adversarial suite: a raw V2 WebSocket client (no supabase-js, so it can send
// anything), the server's RSS, and a canary (a normal supabase-js subscriber fed by another
// client) that every attack must leave unaffected.

const fs = require('node:fs')
const net = require('node:net')
const WebSocket = require('ws')
const h = require('./helpers')

/** VmRSS of a process, in bytes. */
function rss(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = Number(status.match(/^VmRSS:\s+(\d+)/m)?.[1] || 0)
  return kb * 1024
}

/** Samples a process's RSS every `everyMs` until stopped; `stop()` returns {peak, last}. */
function sampleRss(pid, everyMs = 100) {
  let peak = rss(pid)
  let last = peak
  const timer = setInterval(() => {
    try {
      last = rss(pid)
      peak = Math.max(peak, last)
    } catch {}
  }, everyMs)
  return {
    stop() {
      clearInterval(timer)
      return { peak, last }
    },
  }
}

const mb = (bytes) => (bytes / 1048576).toFixed(1)

/** A raw WebSocket (V2 serializer) that records every message it reads. */
class Raw {
  static async open(server, { token = h.token(), vsn = '2.0.0', path = '/realtime/v1/websocket' } = {}) {
    const raw = new Raw()
    raw.ws = new WebSocket(`${server.wsBase}${path}?apikey=${encodeURIComponent(token)}&vsn=${vsn}`)
    raw.messages = []
    raw.closed = null
    raw.ws.on('message', (data, isBinary) => {
      raw.messages.push(isBinary ? { binary: Buffer.from(data) } : safeParse(data.toString('utf8')))
    })
    raw.ws.on('close', (code, reason) => (raw.closed = { code, reason: String(reason) }))
    raw.ws.on('error', (error) => (raw.error = error))
    await new Promise((resolve, reject) => {
      raw.ws.once('open', resolve)
      raw.ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode })))
      raw.ws.once('error', reject)
    })
    raw.ref = 0
    return raw
  }

  next() {
    this.ref += 1
    return String(this.ref)
  }

  send(message) {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** Joins `topic` (V2); resolves to the join reply's payload. */
  async join(topic, config = {}, extra = {}) {
    const ref = this.next()
    this.send([ref, ref, topic, 'phx_join', { config, ...extra }])
    const reply = await this.waitFor((m) => Array.isArray(m) && m[1] === ref && m[3] === 'phx_reply', `join reply ${topic}`)
    return { joinRef: ref, payload: reply[4] }
  }

  async heartbeat() {
    const ref = this.next()
    this.send([null, ref, 'phoenix', 'heartbeat', {}])
    return this.waitFor((m) => Array.isArray(m) && m[1] === ref && m[2] === 'phoenix', 'heartbeat reply')
  }

  async waitFor(predicate, what, timeout = 10000) {
    let found
    await h.waitFor(() => (found = this.messages.find(predicate)) !== undefined, `${what} (raw client)`, { timeout })
    return found
  }

  /** Stops reading: the kernel buffers fill and the server's writes to it block. */
  pause() {
    this.ws._socket.pause()
  }

  close() {
    try {
      this.ws.terminate()
    } catch {}
  }
}

function safeParse(text) {
  try {
    return JSON.parse(text)
  } catch {
    return { unparsed: text }
  }
}

/**
 * A canary: one supabase-js client subscribed to a public topic and a second one broadcasting
 * to it every 100 ms. `check()` asserts the subscriber kept receiving (a message sent after the
 * call arrives) and its socket is still open.
 */
async function canary(server) {
  const topic = h.uniqueTopic('canary')
  const rx = h.makeClient(server, { name: 'canary-rx' })
  const tx = h.makeClient(server, { name: 'canary-tx' })
  const got = []
  const ch = rx.supabase.channel(topic).on('broadcast', { event: 'tick' }, (m) => got.push(m.payload.n))
  await h.subscribeOk(ch, [rx])
  const out = tx.supabase.channel(topic)
  await h.subscribeOk(out, [tx])
  let n = 0
  let stopped = false
  const timer = setInterval(() => {
    if (!stopped) out.send({ type: 'broadcast', event: 'tick', payload: { n: ++n } })
  }, 100)
  return {
    got,
    async check(what = 'canary') {
      const want = n + 2
      await h.waitFor(() => got.some((x) => x >= want), `${what}: the canary still receives (wanted tick ${want})`, {
        clients: [rx, tx],
        timeout: 15000,
      })
      if (!rx.realtime.isConnected()) throw new Error(`${what}: the canary's socket closed`)
    },
    stop() {
      stopped = true
      clearInterval(timer)
    },
  }
}

/** Opens `count` TCP connections that send `bytes` (or nothing) and then stay silent. */
async function silentSockets(port, count, bytes = '') {
  const sockets = []
  for (let i = 0; i < count; i++) {
    await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        if (bytes) s.write(bytes)
        resolve()
      })
      s.on('error', () => resolve())
      s.closedByServer = false
      s.on('close', () => (s.closedByServer = true))
      sockets.push(s)
    })
  }
  return sockets
}

async function health(server) {
  const res = await fetch(`${server.httpUrl}/api/health`)
  return res.json()
}

module.exports = { rss, sampleRss, mb, Raw, canary, silentSockets, health }
