'use strict'
// Graceful restart seen from supabase-js 2.119.1: SIGTERM makes realtide push
// `Server requested disconnect` to every channel and close the socket with 1012; the client
// reconnects by itself to a new realtide on the same port, rejoins its channel, and keeps
// receiving broadcasts.

const { describe, it, after } = require('node:test')
const assert = require('node:assert/strict')
const net = require('node:net')
const h = require('../lib/helpers')

/** A free TCP port on 127.0.0.1 (the restarted server must come back on the same one). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

let servers = []
after(async () => {
  await h.closeAllClients()
  for (const s of servers) await s.stop()
})

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`restart, vsn ${vsn}`, () => {
    it('a client rejoins a restarted server by itself and keeps receiving', async () => {
      const port = String(await freePort())
      const first = await h.startServer({ PORT: port })
      servers.push(first)
      const listener = h.makeClient(first, { vsn, name: `listener(${vsn})` })
      const got = []
      const system = []
      const topic = h.uniqueTopic('restart')
      const ch = listener.supabase.channel(topic)
      ch.on('broadcast', { event: 'tick' }, (m) => got.push(m.payload.n))
      ch.on('system', {}, (p) => system.push(p))
      await h.subscribeOk(ch, [listener])

      const sender = h.makeClient(first, { vsn: '2.0.0', name: 'sender-1' })
      const out = sender.supabase.channel(topic)
      await h.subscribeOk(out, [sender])
      assert.equal(await out.send({ type: 'broadcast', event: 'tick', payload: { n: 1 } }), 'ok')
      await h.waitFor(() => got.includes(1), 'tick 1', { clients: [listener] })

      // SIGTERM: the channel hears "Server requested disconnect", then the socket closes 1012.
      const exited = new Promise((resolve) => first.child.once('exit', (code) => resolve(code)))
      first.child.kill('SIGTERM')
      assert.equal(await exited, 0, first.output())
      await h.waitFor(() => system.some((p) => p.message === 'Server requested disconnect'), 'disconnect notice', {
        clients: [listener],
      })
      await h.waitFor(() => listener.log.frames.some((f) => f.dir === 'CLOSE' && f.code === 1012), 'close 1012', {
        clients: [listener],
      })
      await h.closeClient(sender)

      // A new process on the same port: the client reconnects and rejoins by itself.
      const second = await h.startServer({ PORT: port })
      servers.push(second)
      const sender2 = h.makeClient(second, { vsn: '2.0.0', name: 'sender-2' })
      const out2 = sender2.supabase.channel(topic, { config: { broadcast: { ack: true } } })
      await h.subscribeOk(out2, [sender2])
      // Keep sending until the rejoined listener hears one (it rejoins after its backoff).
      let n = 2
      await h.waitFor(
        async () => {
          await out2.send({ type: 'broadcast', event: 'tick', payload: { n: n++ } })
          return got.some((x) => x >= 2)
        },
        'a tick from the new server',
        { clients: [listener, sender2], timeout: 30000 }
      )
      assert.equal(ch.state, 'joined')
      await h.closeAllClients()
      await second.stop()
    })
  })
}
