'use strict'
// Native TLS (TLS_CERT / TLS_KEY): supabase-js 2.119.1 over wss:// and https://
// against a realtide holding a throwaway self-signed certificate (made with the openssl CLI),
// trusted by the client through `ca`; plain http on the same port is refused; a bad key stops
// the start with one line naming the setting.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const https = require('node:https')
const http = require('node:http')
const { execFileSync, spawnSync } = require('node:child_process')
const WebSocket = require('ws')
const { createClient } = require('@supabase/supabase-js')
const h = require('../lib/helpers')

let dir
let cert
let key
let server
before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-tls-'))
  cert = path.join(dir, 'cert.pem')
  key = path.join(dir, 'key.pem')
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1',
  ], { stdio: 'ignore' })
  server = await h.startServer({ TLS_CERT: cert, TLS_KEY: key })
})
after(async () => {
  if (server) await server.stop()
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
})

function get(url, options) {
  return new Promise((resolve, reject) => {
    const lib = url.startsWith('https') ? https : http
    const req = lib.get(url, options, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
}

describe('native TLS', () => {
  it('serves https routes and wss channels to supabase-js', async () => {
    const ca = fs.readFileSync(cert)
    const health = await get(`https://127.0.0.1:${server.port}/healthcheck`, { ca })
    assert.deepEqual(health, { status: 200, body: 'ok' })
    // Plain http to the TLS port gets no HTTP answer.
    await assert.rejects(get(`http://127.0.0.1:${server.port}/healthcheck`, {}))

    class TrustingWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols, { ca })
      }
    }
    const supabase = createClient(`https://127.0.0.1:${server.port}`, h.token(), {
      realtime: { transport: TrustingWebSocket },
    })
    const got = []
    const ch = supabase.channel('secure-room', { config: { broadcast: { self: true, ack: true } } })
    ch.on('broadcast', { event: 'hello' }, (m) => got.push(m.payload))
    const rec = h.subscribe(ch)
    const first = await rec.first
    assert.equal(first.status, 'SUBSCRIBED')
    assert.equal(await ch.send({ type: 'broadcast', event: 'hello', payload: { over: 'tls' } }), 'ok')
    await h.waitFor(() => got.length === 1, 'broadcast over wss')
    assert.deepEqual(got, [{ over: 'tls' }])
    await supabase.removeAllChannels()
    supabase.realtime.disconnect()
  })

  it('a key that does not match stops the start with one line', () => {
    const other = path.join(dir, 'other.pem')
    execFileSync('openssl', ['genpkey', '-algorithm', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', other], {
      stdio: 'ignore',
    })
    const run = spawnSync(h.realtideBin(), ['serve'], {
      env: { ...process.env, JWT_SECRET: h.JWT_SECRET, PORT: '0', TLS_CERT: cert, TLS_KEY: other },
      encoding: 'utf8',
      timeout: 10000,
    })
    assert.equal(run.status, 2, run.stderr)
    assert.match(run.stderr.trim(), /^realtide: TLS_CERT\/TLS_KEY: /)
    assert.equal(run.stderr.trim().split('\n').length, 1)
    const half = spawnSync(h.realtideBin(), ['serve'], {
      env: { ...process.env, JWT_SECRET: h.JWT_SECRET, PORT: '0', TLS_CERT: cert, TLS_KEY: '' },
      encoding: 'utf8',
      timeout: 10000,
    })
    assert.equal(half.status, 2, half.stderr)
  })
})
