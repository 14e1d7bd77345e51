'use strict'
// Broadcast between real supabase-js clients, for both serializers.

const { describe, it, before, after, afterEach } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../lib/helpers')

let server
before(async () => {
  server = await h.startServer()
})
afterEach(async () => {
  await h.closeAllClients()
})
after(async () => {
  await h.closeAllClients()
  if (server) await server.stop()
})

/** Join `topic` on a new client and collect every broadcast callback payload. */
async function joined(vsn, topic, config, name) {
  const c = h.makeClient(server, { vsn, name })
  const received = []
  const ch = c.supabase
    .channel(topic, { config })
    .on('broadcast', { event: '*' }, (msg) => received.push(msg))
  await h.subscribeOk(ch, [c])
  return { c, ch, received }
}

for (const vsn of ['2.0.0', '1.0.0']) {
  describe(`broadcast, vsn ${vsn}`, () => {
    it('self:false: the receiver gets the message, the sender does not get its own', async () => {
      const topic = h.uniqueTopic('bc-noself')
      const a = await joined(vsn, topic, { broadcast: { self: false } }, `A(${vsn})`)
      const b = await joined(vsn, topic, { broadcast: { self: false } }, `B(${vsn})`)
      const clients = [a.c, b.c]

      assert.equal(await a.ch.send({ type: 'broadcast', event: 'from-a', payload: { n: 1, text: 'héllo' } }), 'ok')
      await h.waitFor(() => b.received.length >= 1, 'B receives A\'s broadcast', { clients })
      assert.equal(b.received[0].type, 'broadcast')
      assert.equal(b.received[0].event, 'from-a')
      assert.deepEqual(b.received[0].payload, { n: 1, text: 'héllo' })

      // Causal barrier instead of a sleep: B answers, and A must see exactly
      // B's message. Had the server echoed A's own message, it would have
      // reached A before this answer.
      assert.equal(await b.ch.send({ type: 'broadcast', event: 'from-b', payload: { n: 2 } }), 'ok')
      await h.waitFor(() => a.received.length >= 1, 'A receives B\'s broadcast', { clients })
      await h.sleep(100)
      assert.deepEqual(
        a.received.map((m) => [m.event, m.payload]),
        [['from-b', { n: 2 }]],
        `A must not receive its own broadcast with self:false\n${h.dumpFrames(clients)}`
      )
      assert.deepEqual(b.received.map((m) => m.event), ['from-a'], 'B must not receive its own broadcast')
    })

    it('self:true: the sender receives its own message too', async () => {
      const topic = h.uniqueTopic('bc-self')
      const a = await joined(vsn, topic, { broadcast: { self: true } }, `A(${vsn})`)
      const b = await joined(vsn, topic, { broadcast: { self: false } }, `B(${vsn})`)
      const clients = [a.c, b.c]

      assert.equal(await a.ch.send({ type: 'broadcast', event: 'echo', payload: { list: [1, 2, 3], nested: { ok: true } } }), 'ok')
      await h.waitFor(() => a.received.length >= 1, 'A receives its own broadcast', { clients })
      await h.waitFor(() => b.received.length >= 1, 'B receives A\'s broadcast', { clients })
      for (const got of [a.received[0], b.received[0]]) {
        assert.equal(got.event, 'echo')
        assert.deepEqual(got.payload, { list: [1, 2, 3], nested: { ok: true } })
      }
      assert.equal(a.received.length, 1, 'exactly one self-echo')
    })

    it('ack:true: send() resolves "ok" from the server reply', async () => {
      const topic = h.uniqueTopic('bc-ack')
      const a = await joined(vsn, topic, { broadcast: { ack: true } }, `A(${vsn})`)
      const b = await joined(vsn, topic, {}, `B(${vsn})`)
      const clients = [a.c, b.c]

      const before = h.receivedFrames(a.c).length
      const res = await a.ch.send({ type: 'broadcast', event: 'acked', payload: { v: 42 } })
      assert.equal(res, 'ok', `send() with ack:true resolved ${res}\n${h.dumpFrames(clients)}`)
      // The 'ok' must come from a real phx_reply on this topic, not a client shortcut.
      const replies = h
        .receivedFrames(a.c)
        .slice(before)
        .filter((f) => !f.binary)
        .map((f) => f.msg)
        .map((m) => (Array.isArray(m) ? { topic: m[2], event: m[3], payload: m[4] } : m))
        .filter((m) => m.topic === `realtime:${topic}` && m.event === 'phx_reply')
      assert.equal(replies.length, 1, `one phx_reply for the acked broadcast\n${h.dumpFrames(clients)}`)
      assert.deepEqual(replies[0].payload, { status: 'ok', response: {} })
      await h.waitFor(() => b.received.length >= 1, 'B receives the acked broadcast', { clients })
      assert.deepEqual(b.received[0].payload, { v: 42 })
    })

    it('ack:false: send() resolves "ok" immediately and the message is delivered', async () => {
      const topic = h.uniqueTopic('bc-noack')
      const a = await joined(vsn, topic, { broadcast: { ack: false } }, `A(${vsn})`)
      const b = await joined(vsn, topic, {}, `B(${vsn})`)
      const clients = [a.c, b.c]

      assert.equal(await a.ch.send({ type: 'broadcast', event: 'unacked', payload: { v: 7 } }), 'ok')
      await h.waitFor(() => b.received.length >= 1, 'B receives the un-acked broadcast', { clients })
      assert.equal(b.received[0].event, 'unacked')
      assert.deepEqual(b.received[0].payload, { v: 7 })
    })

    it('several messages arrive in order', async () => {
      const topic = h.uniqueTopic('bc-order')
      const a = await joined(vsn, topic, {}, `A(${vsn})`)
      const b = await joined(vsn, topic, {}, `B(${vsn})`)
      const clients = [a.c, b.c]
      for (let i = 0; i < 20; i++) {
        await a.ch.send({ type: 'broadcast', event: 'seq', payload: { i } })
      }
      await h.waitFor(() => b.received.length >= 20, 'B receives 20 broadcasts', { clients })
      assert.deepEqual(
        b.received.map((m) => m.payload.i),
        Array.from({ length: 20 }, (_, i) => i)
      )
    })
  })
}

describe('broadcast across serializers', () => {
  it('V2 sender → V1 receiver and V1 sender → V2 receiver (JSON)', async () => {
    const topic = h.uniqueTopic('bc-cross')
    const v2 = await joined('2.0.0', topic, {}, 'V2')
    const v1 = await joined('1.0.0', topic, {}, 'V1')
    const clients = [v2.c, v1.c]

    assert.equal(await v2.ch.send({ type: 'broadcast', event: 'to-v1', payload: { from: 'v2', n: [1, 2] } }), 'ok')
    await h.waitFor(() => v1.received.length >= 1, 'V1 receives the V2 broadcast', { clients })
    assert.equal(v1.received[0].type, 'broadcast')
    assert.equal(v1.received[0].event, 'to-v1')
    assert.deepEqual(v1.received[0].payload, { from: 'v2', n: [1, 2] })

    assert.equal(await v1.ch.send({ type: 'broadcast', event: 'to-v2', payload: { from: 'v1' } }), 'ok')
    await h.waitFor(() => v2.received.length >= 1, 'V2 receives the V1 broadcast', { clients })
    assert.equal(v2.received[0].event, 'to-v2')
    assert.deepEqual(v2.received[0].payload, { from: 'v1' })

    // The V1 socket never gets a binary frame.
    const bin = h.receivedFrames(v1.c).filter((f) => f.binary)
    assert.equal(bin.length, 0, `V1 client received binary frames\n${h.dumpFrames(clients)}`)
  })

  it('a V2 kind-3 push reaches V2 receivers as a kind-4 frame', async () => {
    const topic = h.uniqueTopic('bc-kind4')
    const a = await joined('2.0.0', topic, {}, 'V2-A')
    const b = await joined('2.0.0', topic, {}, 'V2-B')
    const clients = [a.c, b.c]
    // The client itself encodes this as binary kind 3.
    await a.ch.send({ type: 'broadcast', event: 'cursor', payload: { x: 10, y: 20 } })
    const sent = a.c.log.frames.filter((f) => f.dir === 'C→S' && f.binary)
    assert.ok(sent.length >= 1 && sent.at(-1).hex.startsWith('03'), 'the V2 client sent a kind-3 frame')
    await h.waitFor(() => b.received.length >= 1, 'B receives the broadcast', { clients })
    assert.deepEqual(b.received[0].payload, { x: 10, y: 20 })
    const bin = h.receivedFrames(b.c).filter((f) => f.binary)
    assert.equal(bin.length, 1, `V2 receiver got exactly one binary frame\n${h.dumpFrames(clients)}`)
    const t = Buffer.from(`realtime:${topic}`)
    const expected = Buffer.concat([
      Buffer.from([4, t.length, 6, 0, 1]),
      t,
      Buffer.from('cursor'),
      Buffer.from('{"x":10,"y":20}'),
    ])
    assert.equal(bin[0].bytes.toString('hex'), expected.toString('hex'), 'kind-4 frame bytes')
  })

  it('binary payload: V2 → V2 as identical bytes; a V1 receiver gets nothing, survives, and still gets JSON afterwards', async () => {
    const uncaught = []
    const onUncaught = (e) => uncaught.push(e)
    process.on('uncaughtException', onUncaught)
    try {
      const topic = h.uniqueTopic('bc-binary')
      const sender = await joined('2.0.0', topic, {}, 'V2-sender')
      const v2 = await joined('2.0.0', topic, {}, 'V2-receiver')
      const v1 = await joined('1.0.0', topic, {}, 'V1-receiver')
      const clients = [sender.c, v2.c, v1.c]

      const bytes = Uint8Array.from([0, 1, 2, 3, 0x7b, 0x22, 0xff, 0xfe, 0x80, 0x00, 0x0a, 0x0d])
      const ab = bytes.buffer.slice(0)
      assert.equal(await sender.ch.send({ type: 'broadcast', event: 'blob', payload: ab }), 'ok')
      const sentFrame = sender.c.log.frames.filter((f) => f.dir === 'C→S' && f.binary).at(-1)
      assert.ok(sentFrame && sentFrame.hex.startsWith('03'), 'sender used a kind-3 frame')

      await h.waitFor(() => v2.received.length >= 1, 'V2 receiver gets the binary broadcast', { clients })
      const got = v2.received[0]
      assert.equal(got.event, 'blob')
      assert.ok(got.payload instanceof ArrayBuffer, `payload is an ArrayBuffer (got ${Object.prototype.toString.call(got.payload)})`)
      assert.deepEqual(Buffer.from(got.payload).toString('hex'), Buffer.from(bytes).toString('hex'))
      // kind 4, encoding 0 (binary)
      const kind4 = h.receivedFrames(v2.c).filter((f) => f.binary)
      assert.equal(kind4.length, 1)
      assert.equal(kind4[0].bytes[0], 4, 'kind 4')
      assert.equal(kind4[0].bytes[4], 0, 'payload encoding 0 (binary)')

      // A JSON broadcast sent afterwards still reaches the V1 client, and
      // arrives after anything the server could have sent for the binary one.
      assert.equal(await sender.ch.send({ type: 'broadcast', event: 'after', payload: { still: 'alive' } }), 'ok')
      await h.waitFor(() => v1.received.some((m) => m.event === 'after'), 'V1 receiver gets the later JSON broadcast', {
        clients,
      })
      assert.deepEqual(
        v1.received.map((m) => [m.event, m.payload]),
        [['after', { still: 'alive' }]],
        'V1 receiver got only the JSON broadcast'
      )
      const v1Binary = h.receivedFrames(v1.c).filter((f) => f.binary)
      assert.equal(v1Binary.length, 0, `a binary frame was sent to a vsn 1.0.0 socket\n${h.dumpFrames([v1.c])}`)
      assert.equal(v1.c.realtime.isConnected(), true, 'V1 socket still open')
      await h.waitFor(() => v2.received.length >= 2, 'V2 receiver gets the later JSON broadcast', { clients })
      assert.deepEqual(v2.received[1].payload, { still: 'alive' })
      assert.deepEqual(uncaught.map(String), [], 'no uncaught exception in the client process')
    } finally {
      process.off('uncaughtException', onUncaught)
    }
  })
})
