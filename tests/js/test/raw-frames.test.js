'use strict'
// Low-level checks with the raw `ws` package: exact frames the clients rely
// on, and the HTTP answers of the upgrade endpoint.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const WebSocket = require('ws')
const h = require('../lib/helpers')

let server
before(async () => {
  server = await h.startServer()
})
after(async () => {
  for (const ws of sockets) ws.terminate()
  if (server) await server.stop()
})

const sockets = new Set()

/** Open a raw socket; resolves { ws, frames, next(pred) } or rejects with the HTTP answer. */
function open(path, query) {
  const url = `${server.wsBase}${path}${query === undefined ? '' : '?' + query}`
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    sockets.add(ws)
    const frames = []
    const waiters = []
    ws.on('message', (data, isBinary) => {
      const f = isBinary ? { binary: true, bytes: Buffer.from(data) } : { binary: false, text: data.toString('utf8') }
      if (!f.binary) {
        try {
          f.msg = JSON.parse(f.text)
        } catch {}
      }
      frames.push(f)
      for (const w of [...waiters]) if (w.pred(f)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(f))
    })
    const next = (pred, what = 'frame') =>
      new Promise((res, rej) => {
        const hit = frames.find(pred)
        if (hit) return res(hit)
        const w = { pred, resolve: res }
        waiters.push(w)
        const t = setTimeout(() => {
          const i = waiters.indexOf(w)
          if (i >= 0) {
            waiters.splice(i, 1)
            rej(new Error(`timed out waiting for ${what} on ${url}; frames: ${JSON.stringify(frames.map((f) => f.text ?? f.bytes.toString('hex')))}`))
          }
        }, 10000)
        t.unref()
      })
    ws.on('open', () => resolve({ ws, frames, next, url }))
    ws.on('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => (body += c))
      res.on('end', () => {
        const e = new Error(`HTTP ${res.statusCode}`)
        e.status = res.statusCode
        e.headers = res.headers
        e.body = body
        reject(e)
        ws.terminate()
      })
    })
    ws.on('error', (e) => reject(e))
  })
}

async function httpError(path, query) {
  try {
    const s = await open(path, query)
    s.ws.close()
  } catch (e) {
    if (e.status) return e
    throw e
  }
  assert.fail(`expected the upgrade of ${path}?${query} to be refused`)
}

const apikey = () => `apikey=${h.token()}`
const v2join = (jr, topic, config = {}, extra = {}) =>
  JSON.stringify([
    jr,
    jr,
    topic,
    'phx_join',
    {
      config: {
        broadcast: { ack: false, self: false },
        presence: { key: '', enabled: false },
        postgres_changes: [],
        private: false,
        ...config,
      },
      ...extra,
    },
  ])

function kind3(joinRef, ref, topic, event, payload, encoding = 1) {
  const parts = [joinRef, ref, topic, event].map((s) => Buffer.from(s))
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload))
  return Buffer.concat([Buffer.from([3, ...parts.map((p) => p.length), 0, encoding]), ...parts, body])
}

describe('HTTP endpoint', () => {
  it('GET /healthcheck → 200 ok', async () => {
    const res = await fetch(`${server.httpUrl}/healthcheck`)
    assert.equal(res.status, 200)
    assert.equal((await res.text()).trim(), 'ok')
  })

  it('unknown vsn → HTTP 403', async () => {
    const e = await httpError('/realtime/v1/websocket', `${apikey()}&vsn=3.0.0`)
    assert.equal(e.status, 403)
  })

  for (const [label, query, message] of [
    ['missing apikey', 'vsn=2.0.0', 'API key is missing'],
    ['malformed apikey', 'apikey=not-a-jwt&vsn=2.0.0', 'The token provided is not a valid JWT'],
    ['expired apikey', () => `apikey=${h.token({ ttlSec: -30 })}&vsn=2.0.0`, 'Token has expired'],
    ['apikey with a bad signature', () => `apikey=${h.signToken({ role: 'anon', exp: h.nowSec() + 600 }, 'wrong-secret')}&vsn=1.0.0`, 'Failed to validate JWT signature'],
    ['apikey without role', () => `apikey=${h.signToken({ exp: h.nowSec() + 600 })}&vsn=1.0.0`, 'Fields `role` and `exp` are required in JWT'],
  ]) {
    it(`${label} → HTTP 401 {"error": "${message}"}`, async () => {
      const e = await httpError('/realtime/v1/websocket', typeof query === 'function' ? query() : query)
      assert.equal(e.status, 401, `status; body ${e.body}`)
      assert.match(String(e.headers['content-type']), /application\/json/)
      assert.deepEqual(JSON.parse(e.body), { error: message })
    })
  }
})

describe('heartbeat frames', () => {
  for (const path of ['/socket/websocket', '/realtime/v1/websocket']) {
    it(`V2 heartbeat reply is exact (${path})`, async () => {
      const s = await open(path, `${apikey()}&vsn=2.0.0`)
      s.ws.send('[null,"14","phoenix","heartbeat",{}]')
      const f = await s.next((f) => !f.binary, 'heartbeat reply')
      assert.deepEqual(f.msg, [null, '14', 'phoenix', 'phx_reply', { status: 'ok', response: {} }])
      s.ws.close()
    })

    it(`V1 heartbeat reply is exact, without join_ref (${path})`, async () => {
      const s = await open(path, `${apikey()}&vsn=1.0.0`)
      s.ws.send('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"14"}')
      const f = await s.next((f) => !f.binary, 'heartbeat reply')
      assert.deepEqual(f.msg, { topic: 'phoenix', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '14' })
      s.ws.close()
    })
  }

  it('V1 heartbeat with a null ref (the Python client) gets "ref": null', async () => {
    const s = await open('/realtime/v1/websocket', `${apikey()}&vsn=1.0.0`)
    s.ws.send('{"event":"heartbeat","payload":{},"topic":"phoenix","ref":null,"join_ref":null}')
    const f = await s.next((f) => !f.binary, 'heartbeat reply')
    assert.deepEqual(f.msg, { topic: 'phoenix', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: null })
    s.ws.close()
  })

  it('no vsn parameter means V1', async () => {
    const s = await open('/socket/websocket', apikey())
    s.ws.send('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}')
    const f = await s.next((f) => !f.binary, 'heartbeat reply')
    assert.deepEqual(f.msg, { topic: 'phoenix', event: 'phx_reply', payload: { status: 'ok', response: {} }, ref: '1' })
    s.ws.close()
  })
})

describe('join and broadcast frames', () => {
  it('V2 join reply is exact', async () => {
    const topic = `realtime:${h.uniqueTopic('raw-join')}`
    const s = await open('/realtime/v1/websocket', `${apikey()}&vsn=2.0.0`)
    s.ws.send(v2join('1', topic))
    const f = await s.next((f) => f.msg?.[3] === 'phx_reply', 'join reply')
    assert.deepEqual(f.msg, ['1', '1', topic, 'phx_reply', { status: 'ok', response: { postgres_changes: [] } }])
    s.ws.close()
  })

  it('ack:false broadcast gets no reply; ack:true gets ok {}', async () => {
    const topic = `realtime:${h.uniqueTopic('raw-ack')}`
    const s = await open('/realtime/v1/websocket', `${apikey()}&vsn=2.0.0`)
    s.ws.send(v2join('1', topic))
    await s.next((f) => f.msg?.[3] === 'phx_reply' && f.msg?.[1] === '1', 'join reply')
    s.ws.send(JSON.stringify(['1', '2', topic, 'broadcast', { type: 'broadcast', event: 'e', payload: { a: 1 } }]))
    s.ws.send(kind3('1', '3', topic, 'e', { a: 2 }))
    s.ws.send('[null,"4","phoenix","heartbeat",{}]')
    await s.next((f) => f.msg?.[1] === '4', 'heartbeat reply (barrier)')
    const replies = s.frames.filter((f) => f.msg?.[3] === 'phx_reply' && (f.msg[1] === '2' || f.msg[1] === '3'))
    assert.deepEqual(replies.map((f) => f.text), [], 'no reply to broadcasts with ack:false')

    const topic2 = `realtime:${h.uniqueTopic('raw-ack2')}`
    s.ws.send(v2join('5', topic2, { broadcast: { ack: true, self: false } }))
    await s.next((f) => f.msg?.[1] === '5', 'second join reply')
    s.ws.send(JSON.stringify(['5', '6', topic2, 'broadcast', { type: 'broadcast', event: 'e', payload: { a: 1 } }]))
    s.ws.send(kind3('5', '7', topic2, 'e', { a: 2 }))
    const r6 = await s.next((f) => f.msg?.[1] === '6', 'ack for the text broadcast')
    const r7 = await s.next((f) => f.msg?.[1] === '7', 'ack for the kind-3 broadcast')
    assert.deepEqual(r6.msg, ['5', '6', topic2, 'phx_reply', { status: 'ok', response: {} }])
    assert.deepEqual(r7.msg, ['5', '7', topic2, 'phx_reply', { status: 'ok', response: {} }])
    s.ws.close()
  })

  it('relay: V2 text stays text, kind 3 → kind 4 for V2 and JSON text for V1, binary payloads never reach V1', async () => {
    const topic = `realtime:${h.uniqueTopic('raw-relay')}`
    const snd = await open('/realtime/v1/websocket', `${apikey()}&vsn=2.0.0`)
    const r2 = await open('/realtime/v1/websocket', `${apikey()}&vsn=2.0.0`)
    const r1 = await open('/socket/websocket', `${apikey()}&vsn=1.0.0`)
    for (const s of [snd, r2]) {
      s.ws.send(v2join('1', topic))
      await s.next((f) => f.msg?.[3] === 'phx_reply', 'join reply')
    }
    r1.ws.send(
      JSON.stringify({
        topic,
        event: 'phx_join',
        payload: { config: { broadcast: { ack: false, self: false }, presence: { key: '', enabled: false }, postgres_changes: [], private: false } },
        ref: '1',
        join_ref: '1',
      })
    )
    const j1 = await r1.next((f) => f.msg?.event === 'phx_reply', 'V1 join reply')
    assert.deepEqual(j1.msg, { topic, event: 'phx_reply', payload: { status: 'ok', response: { postgres_changes: [] } }, ref: '1' })

    // 1. text broadcast
    snd.ws.send(JSON.stringify(['1', '2', topic, 'broadcast', { type: 'broadcast', event: 'txt', payload: { a: 1 } }]))
    const t2 = await r2.next((f) => f.msg?.[3] === 'broadcast', 'V2 text broadcast')
    assert.deepEqual(t2.msg, [null, null, topic, 'broadcast', { type: 'broadcast', event: 'txt', payload: { a: 1 } }])
    const t1 = await r1.next((f) => f.msg?.event === 'broadcast', 'V1 text broadcast')
    assert.deepEqual(t1.msg, { topic, event: 'broadcast', payload: { type: 'broadcast', event: 'txt', payload: { a: 1 } }, ref: null })

    // 2. kind 3 with a JSON payload
    snd.ws.send(kind3('1', '3', topic, 'cursor', { x: 10, y: 20 }))
    const b2 = await r2.next((f) => f.binary, 'V2 kind-4 frame')
    const tb = Buffer.from(topic)
    assert.equal(
      b2.bytes.toString('hex'),
      Buffer.concat([Buffer.from([4, tb.length, 6, 0, 1]), tb, Buffer.from('cursor{"x":10,"y":20}')]).toString('hex')
    )
    const c1 = await r1.next((f) => f.msg?.payload?.event === 'cursor', 'V1 JSON form of the user broadcast')
    assert.deepEqual(c1.msg, { topic, event: 'broadcast', payload: { type: 'broadcast', event: 'cursor', payload: { x: 10, y: 20 } }, ref: null })

    // 3. kind 3 with a binary payload, then a JSON one as a barrier
    const raw = Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00, 0x01])
    snd.ws.send(kind3('1', '4', topic, 'bin', raw, 0))
    const bb = await r2.next((f) => f.binary && f.bytes[2] === 3, 'V2 binary kind-4 frame')
    assert.equal(bb.bytes.toString('hex'), Buffer.concat([Buffer.from([4, tb.length, 3, 0, 0]), tb, Buffer.from('bin'), raw]).toString('hex'))
    snd.ws.send(kind3('1', '5', topic, 'barrier', { done: true }))
    await r1.next((f) => f.msg?.payload?.event === 'barrier', 'V1 barrier broadcast')
    assert.equal(r1.frames.filter((f) => f.binary).length, 0, 'V1 socket never receives a binary frame')
    assert.equal(r1.frames.filter((f) => f.msg?.payload?.event === 'bin').length, 0, 'binary payload dropped for V1')
    // sender has self:false
    assert.equal(snd.frames.filter((f) => f.binary || f.msg?.[3] === 'broadcast').length, 0, 'no self-echo')
    for (const s of [snd, r2, r1]) s.ws.close()
  })
})
