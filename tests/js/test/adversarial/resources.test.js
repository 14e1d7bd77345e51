'use strict'
// Adversarial: cheap requests that used to cost the server much. Each attack measures the
// server's RSS (printed as `# figure:` lines for docs/BENCHMARKS.md) and asserts a bound far
// below what the attack cost before the fixes, and that a canary client is unaffected.
//
// Before (measured by an outside attack run on a release binary): two 2.9 MB broadcasts to
// 1,000 subscribers that never read took +2.2 GB; ten 2.9 MB presence metas and 40 joiners that
// never read +1.08 GB; 10,000 half-open connections stayed open, uncounted.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../../lib/helpers')
const { Raw, canary, rss, sampleRss, mb, silentSockets, health } = require('../../lib/adversarial')

const BIG = 2_900_000

let server
let bird
before(async () => {
  server = await h.startServer({ HANDSHAKE_TIMEOUT_MS: '2000', MAX_CONNECTIONS: '600' })
  bird = await canary(server)
})
after(async () => {
  bird?.stop()
  await h.closeAllClients()
  if (server) await server.stop()
})

async function readers(count, topic, config = {}) {
  const list = []
  for (let i = 0; i < count; i++) {
    const raw = await Raw.open(server)
    const joined = await raw.join(topic, config)
    assert.equal(joined.payload.status, 'ok')
    list.push(raw)
  }
  return list
}

describe('adversarial: memory amplification', () => {
  it('large broadcasts to subscribers that never read are held once, not once per subscriber', async () => {
    const topic = `realtime:${h.uniqueTopic('amp')}`
    const stalled = await readers(400, topic)
    for (const raw of stalled) raw.pause()
    const sender = await Raw.open(server)
    await sender.join(topic)
    const base = rss(server.child.pid)
    const sampler = sampleRss(server.child.pid)
    for (let i = 0; i < 2; i++) {
      sender.send([null, sender.next(), topic, 'broadcast', { type: 'broadcast', event: 'big', payload: { pad: 'x'.repeat(BIG), i } }])
    }
    await new Promise((r) => setTimeout(r, 4000))
    await bird.check('during the broadcast amplification')
    const { peak } = sampler.stop()
    const growth = peak - base
    console.log(`# figure: broadcast-amplification subscribers=400 upload_mb=${mb(2 * BIG)} rss_before_mb=${mb(base)} peak_mb=${mb(peak)} growth_mb=${mb(growth)}`)
    // Before: every writer held its own copy (400 x 5.8 MB = 2.3 GB).
    assert.ok(growth < 200 * 1048576, `RSS grew by ${mb(growth)} MB`)
    for (const raw of stalled) raw.close()
    sender.close()
  })

  it('presence metas are bounded per topic and presence_state is shared by joiners that never read', async () => {
    const topic = `realtime:${h.uniqueTopic('presence-amp')}`
    const base = rss(server.child.pid)
    const sampler = sampleRss(server.child.pid)
    const trackers = []
    let refused = 0
    for (let i = 0; i < 10; i++) {
      const raw = await Raw.open(server)
      const { joinRef } = await raw.join(topic, { presence: { key: `t${i}`, enabled: true } })
      const ref = raw.next()
      raw.send([joinRef, ref, topic, 'presence', { type: 'presence', event: 'track', payload: { pad: 'x'.repeat(BIG), i } }])
      const reply = await raw.waitFor((m) => Array.isArray(m) && m[1] === ref && m[3] === 'phx_reply', 'track reply')
      if (reply[4].status === 'error') {
        refused += 1
        assert.equal(reply[4].response.reason, 'Presence state size exceeded')
      }
      trackers.push(raw)
    }
    // PRESENCE_MAX_STATE_BYTES (10 MB) counts each 2.9 MB meta twice: one track fits.
    assert.ok(refused >= 8, `${refused} of 10 tracks refused`)
    const joiners = []
    for (let i = 0; i < 40; i++) {
      const raw = await Raw.open(server)
      await raw.join(topic, { presence: { enabled: true } })
      raw.pause()
      joiners.push(raw)
    }
    await new Promise((r) => setTimeout(r, 2000))
    await bird.check('during the presence amplification')
    const { peak } = sampler.stop()
    const growth = peak - base
    console.log(`# figure: presence-amplification trackers=10 refused=${refused} joiners=40 rss_before_mb=${mb(base)} peak_mb=${mb(peak)} growth_mb=${mb(growth)}`)
    assert.ok(growth < 150 * 1048576, `RSS grew by ${mb(growth)} MB`)
    for (const raw of [...trackers, ...joiners]) raw.close()
  })
})

describe('adversarial: connections that never finish', () => {
  it('silent and half-finished connections are counted from accept and closed after HANDSHAKE_TIMEOUT_MS', async () => {
    const base = rss(server.child.pid)
    const silent = await silentSockets(server.port, 400)
    const half = await silentSockets(server.port, 400, 'GET /realtime/v1/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n')
    const all = [...silent, ...half]
    // MAX_CONNECTIONS 600 + 64 sockets (the canary's among them): those past it are closed at
    // once, the rest when their deadline passes.
    await new Promise((r) => setTimeout(r, 500))
    const closedAtOnce = all.filter((s) => s.closedByServer).length
    console.log(`# figure: half-open sockets opened=800 closed_at_accept=${closedAtOnce} rss_growth_mb=${mb(rss(server.child.pid) - base)}`)
    assert.ok(closedAtOnce >= 800 - 664, `only ${closedAtOnce} closed at accept`)
    await h.waitFor(() => all.every((s) => s.closedByServer), 'every silent socket closed by the server', { timeout: 15000 })
    const after = await health(server)
    assert.ok(after.sockets < 20, `sockets left: ${after.sockets}`)
        // New clients get in and the canary never noticed.
    const fresh = await Raw.open(server)
    await fresh.heartbeat()
    fresh.close()
    await bird.check('after the half-open connections')
  })
})
