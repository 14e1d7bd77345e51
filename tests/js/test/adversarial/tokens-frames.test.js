'use strict'
// Adversarial: forged tokens (at connect and by access_token) and malformed frames against the
// real binary. Every attack must be refused, and a canary (a normal supabase-js subscriber fed
// every 100 ms) on the same server must keep receiving.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../../lib/helpers')
const { Raw, canary } = require('../../lib/adversarial')

const b64 = (value) =>
  Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))
    .toString('base64')
    .replace(/=+$/, '')
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
const hmac = (input, secret = h.JWT_SECRET) =>
  crypto.createHmac('sha256', secret).update(input).digest('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_')
const future = () => Math.floor(Date.now() / 1000) + 3600

/** Tokens that must never be accepted, with what each one tries. */
function forgeries() {
  const claims = { role: 'service_role', sub: 'attacker', exp: future() }
  const valid = h.signToken({ role: 'anon', exp: future() })
  const [vh, vp, vs] = valid.split('.')
  const signedAs = (header, body = claims) => {
    const input = `${b64(header)}.${b64(body)}`
    return `${input}.${hmac(input)}`
  }
  const { publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const pem = publicKey.export({ type: 'spki', format: 'pem' })
  const rsPub = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' })
  const withKey = (alg, key) => {
    const input = `${b64({ alg, typ: 'JWT' })}.${b64(claims)}`
    return `${input}.${hmac(input, key)}`
  }
  return [
    ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`],
    ['alg None', `${b64({ alg: 'None' })}.${b64(claims)}.`],
    ['alg NONE without signature part', `${b64({ alg: 'NONE' })}.${b64(claims)}`],
    ['RS256 header, HMAC with the shared secret (HS/RS confusion)', signedAs({ alg: 'RS256', typ: 'JWT' })],
    ['ES256 header, HMAC with the shared secret (HS/ES confusion)', signedAs({ alg: 'ES256', typ: 'JWT' })],
    ['HS256 keyed with an RSA public key', withKey('HS256', rsPub)],
    ['HS256 keyed with an EC public key', withKey('HS256', pem)],
    ['tampered claims, original signature', `${vh}.${b64(claims)}.${vs}`],
    ['stripped signature', `${vh}.${vp}.`],
    ['no signature part', `${vh}.${vp}`],
    ['padded signature', `${vh}.${vp}.${vs}==`],
    ['signature of another secret', h.signToken(claims, 'another-secret-that-is-long-enough-0123456789')],
    ['string exp', h.signToken({ role: 'anon', exp: String(future()) })],
    ['exp in the past', h.signToken({ role: 'anon', exp: 1000 })],
    ['no exp', h.signToken({ role: 'anon' })],
    ['no role', h.signToken({ exp: future() })],
    ['garbage base64', 'eyJ!!!.@@@.###'],
    ['oversized (100 kB) token', h.signToken({ role: 'anon', exp: future(), pad: 'x'.repeat(100000) }, 'wrong-secret-wrong-secret-wrong-secret')],
  ]
}

let server
let bird
before(async () => {
  server = await h.startServer()
  bird = await canary(server)
})
after(async () => {
  bird?.stop()
  await h.closeAllClients()
  if (server) await server.stop()
})

describe('adversarial: tokens', () => {
  it('forged tokens are refused at connect', async () => {
    for (const [what, token] of forgeries()) {
      await assert.rejects(
        Raw.open(server, { token }),
        // 401 for signature, format and missing claims; 500 for a failed claim rule (a string
        // `exp`), as the reference.
        (e) => e.status >= 400,
        `${what}: the connection must be refused`
      )
    }
    await bird.check('after forged connects')
  })

  it('a forged access_token closes that channel only; the socket and other channels go on', async () => {
    for (const [what, forged] of forgeries()) {
      const raw = await Raw.open(server)
      const topic = `realtime:${h.uniqueTopic('forge')}`
      const other = `realtime:${h.uniqueTopic('forge-other')}`
      const joined = await raw.join(topic)
      assert.equal(joined.payload.status, 'ok', what)
      await raw.join(other)
      raw.send([joined.joinRef, raw.next(), topic, 'access_token', { access_token: forged }])
      await raw.waitFor((m) => Array.isArray(m) && m[2] === topic && m[3] === 'phx_close', `${what}: channel closed`)
      // The other channel still relays, and the socket answers heartbeats.
      await raw.heartbeat()
      const ref = raw.next()
      raw.send([null, ref, other, 'broadcast', { type: 'broadcast', event: 'e', payload: { after: what } }])
      assert.ok(!raw.closed, `${what}: the socket must stay open`)
      raw.close()
    }
    await bird.check('after forged access_token')
  })
})

describe('adversarial: malformed frames', () => {
  it('garbage frames are dropped; the socket stays open and answers heartbeats', async () => {
    const raw = await Raw.open(server)
    const garbage = [
      'not json',
      '{"topic":',
      '[]',
      '[1]',
      '[null,null,null,null,null,null,null]',
      '[1,2,3,4,5]',
      JSON.stringify(['1', 'x'.repeat(100000), 'realtime:x', 'phx_join', {}]),
      JSON.stringify([null, '1', 'realtime:' + 'y'.repeat(100000), 'phx_join', {}]),
      JSON.stringify([null, '1', 'phoenix', 'heartbeat', 'not an object']),
      JSON.stringify({ topic: 'realtime:x', event: 'phx_join', payload: null, ref: 1 }),
      '\u0000\u0001\u0002',
    ]
    for (const frame of garbage) raw.send(frame)
    for (const bytes of [Buffer.from([0]), Buffer.from([3, 200, 200, 200, 200]), crypto.randomBytes(5000), Buffer.from([9, 9, 9])]) {
      raw.ws.send(bytes)
    }
    await raw.heartbeat()
    assert.ok(!raw.closed, `socket closed: ${JSON.stringify(raw.closed)}`)
    // A flood of heartbeats is answered in order and costs the canary nothing.
    for (let i = 0; i < 5000; i++) raw.send([null, `f${i}`, 'phoenix', 'heartbeat', {}])
    await raw.waitFor((m) => Array.isArray(m) && m[1] === 'f4999', 'last flooded heartbeat answered', 30000)
    raw.close()
    await bird.check('after garbage frames')
  })

  it('a message over WEBSOCKET_MAX_FRAME_SIZE closes that socket only (1009)', async () => {
    const raw = await Raw.open(server)
    raw.send('['.padEnd(5_100_000, ' '))
    await h.waitFor(() => raw.closed !== null, 'oversized message closes the socket', { timeout: 15000 })
    // 1009 when the close frame is read before the reset of the unread upload, else 1006.
    assert.ok([1009, 1006].includes(raw.closed.code), JSON.stringify(raw.closed))
    await bird.check('after an oversized message')
  })
})
