'use strict'
// Shared helpers for the end-to-end suites: start the realtide binary, sign
// tokens, build real supabase-js clients that record every frame, and poll.
//
// Every wait in these tests is "until a condition holds, or fail after a
// generous timeout"; no test asserts on how long something took.

const { spawn } = require('node:child_process')
const crypto = require('node:crypto')
const path = require('node:path')
const fs = require('node:fs')
const WebSocket = require('ws')
const { createClient } = require('@supabase/supabase-js')

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..')
const JWT_SECRET = 'realtide-e2e-test-secret-with-enough-bytes-0123456789'
const DEFAULT_WAIT_MS = Number(process.env.E2E_WAIT_MS || 10000)

function realtideBin() {
  if (process.env.REALTIDE_BIN) return process.env.REALTIDE_BIN
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR)
    : path.join(REPO_ROOT, 'target')
  return path.join(target, 'debug', 'realtide')
}

// ---------------------------------------------------------------- tokens

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_')
}

/** HS256 JWT signed with `secret` (default: the server's JWT_SECRET). */
function signToken(claims, secret = JWT_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = b64url(JSON.stringify(claims))
  const sig = b64url(crypto.createHmac('sha256', secret).update(`${header}.${body}`).digest())
  return `${header}.${body}.${sig}`
}

const nowSec = () => Math.floor(Date.now() / 1000)

/** A token valid for `ttlSec` seconds (negative = already expired). */
function token({ role = 'anon', ttlSec = 3600, ...extra } = {}) {
  return signToken({ role, exp: nowSec() + ttlSec, iat: nowSec(), ...extra })
}

// ---------------------------------------------------------------- server

/**
 * Start `realtide serve` on a free port. Resolves to
 * { port, httpUrl, wsBase, stop(), output() } once the readiness line has
 * been printed.
 */
function startServer(extraEnv = {}) {
  const bin = realtideBin()
  if (!fs.existsSync(bin)) {
    throw new Error(`realtide binary not found at ${bin}: run \`cargo build -p realtide-server\` or set REALTIDE_BIN`)
  }
  // Database and cluster settings come only from `extraEnv`: a DB_URL in the caller's
  // environment must not turn the database-less suites into database ones.
  const inherited = { ...process.env }
  // Nor may cluster settings turn a single node into a cluster node.
  for (const k of ['DB_URL', 'SLOT_NAME', 'PUBLICATION', 'CLUSTER_NATS_URL', 'CLUSTER_NODE_NAME']) delete inherited[k]
  const env = {
    ...inherited,
    PORT: '0',
    HOST: '127.0.0.1',
    JWT_SECRET,
    CHANNEL_ERROR_BACKOFF_MS: '100',
    CONNECT_ERROR_BACKOFF_MS: '100',
    RUST_LOG: process.env.RUST_LOG || 'info',
    ...extraEnv,
  }
  // The change journal of a server with a database lives in a directory of that database
  // (its URL names a test cluster's unique port): a restarted server finds its journal and
  // parallel tests never share one.
  if (env.DB_URL && !extraEnv.CHANGES_DIR) {
    const hash = require('node:crypto').createHash('sha1').update(env.DB_URL).digest('hex').slice(0, 16)
    env.CHANGES_DIR = require('node:path').join(require('node:os').tmpdir(), 'realtide-test-changes', hash)
  }
  const child = spawn(bin, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  const keep = (s, chunk) => (s + chunk).slice(-20000)

  return new Promise((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      child.kill('SIGKILL')
      reject(new Error(`realtide did not print its readiness line within 20 s\nstdout:\n${out}\nstderr:\n${err}`))
    }, 20000)
    child.stdout.setEncoding('utf8')
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (c) => (err = keep(err, c)))
    child.stdout.on('data', (c) => {
      out = keep(out, c)
      const m = out.match(/^realtide listening on 127\.0\.0\.1:(\d+)$/m)
      if (m && !settled) {
        settled = true
        clearTimeout(timer)
        const port = Number(m[1])
        const srv = {
          port,
          httpUrl: `http://127.0.0.1:${port}`,
          wsBase: `ws://127.0.0.1:${port}`,
          child,
          output: () => `--- realtide stdout ---\n${out}\n--- realtide stderr (tail) ---\n${err.slice(-6000)}`,
          stop: () => stopChild(child),
        }
        currentServer = srv
        resolve(srv)
      }
    })
    child.on('exit', (code, signal) => {
      if (!settled) {
        settled = true
        clearTimeout(timer)
        reject(new Error(`realtide exited before becoming ready (code ${code}, signal ${signal})\nstdout:\n${out}\nstderr:\n${err}`))
      }
    })
  })
}

// The server of this test file, so failure messages can show its log tail.
let currentServer = null

function stopChild(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    const t = setTimeout(() => child.kill('SIGKILL'), 3000)
    child.once('exit', () => {
      clearTimeout(t)
      resolve()
    })
    child.kill('SIGTERM')
  })
}

// ---------------------------------------------------------------- polling

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Poll `cond` until it returns a truthy value (returned) or fail after
 * `timeout` ms with `what` plus the frames of `clients` in the message.
 */
async function waitFor(cond, what, { timeout = DEFAULT_WAIT_MS, clients = [] } = {}) {
  const deadline = Date.now() + timeout
  let lastErr
  for (;;) {
    try {
      const v = await cond()
      if (v) return v
    } catch (e) {
      lastErr = e
    }
    if (Date.now() > deadline) {
      const detail = lastErr ? `\nlast error: ${lastErr.stack || lastErr}` : ''
      throw new Error(`timed out after ${timeout} ms waiting for: ${what}${detail}\n${dumpFrames(clients)}`)
    }
    await sleep(20)
  }
}

// ---------------------------------------------------------------- clients

const openClients = new Set()

/**
 * A WebSocket class for realtime-js' `transport` option that records every
 * frame sent and received (text as-is, binary as hex) in `log.frames`.
 */
function recordingTransport(log) {
  return class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols)
      log.urls.push(String(url))
      this.on('message', (data, isBinary) => {
        // `log.skip(head)` (optional) drops text frames from the record by their first bytes
        // (streams of many changes would otherwise be kept whole); they are only counted.
        if (!isBinary && log.skip && log.skip(Buffer.from(data).subarray(0, 200).toString('utf8'))) {
          log.skipped = (log.skipped || 0) + 1
          return
        }
        log.frames.push(
          isBinary
            ? { dir: 'S→C', binary: true, hex: Buffer.from(data).toString('hex') }
            : { dir: 'S→C', binary: false, text: Buffer.from(data).toString('utf8') }
        )
      })
      this.on('close', (code, reason) => log.frames.push({ dir: 'CLOSE', code, reason: String(reason) }))
      // `ws` answers a ping with a pong right before this event, after every frame before it
      // was handled: `log.onPing`/`log.onOpen` (optional) let a test see what was acknowledged.
      this.on('ping', () => log.onPing && log.onPing())
      this.on('open', () => log.onOpen && log.onOpen())
      // Why a socket ended abnormally (an invalid frame, a reset); realtime-js has its own handler.
      this.on('error', (error) => log.frames.push({ dir: 'ERROR', text: String(error && error.message) }))
    }
    send(data, ...rest) {
      log.frames.push(
        typeof data === 'string'
          ? { dir: 'C→S', binary: false, text: data }
          : { dir: 'C→S', binary: true, hex: Buffer.from(data).toString('hex') }
      )
      return super.send(data, ...rest)
    }
  }
}

/**
 * A real supabase-js client for `server` with serializer `vsn`. Returns
 * { name, supabase, realtime, log, anonKey }. `accessToken` (async fn) is
 * passed through to createClient when given. `skipFrame(head)`, when given,
 * keeps received text frames whose first 200 bytes it accepts out of
 * `log.frames` (counted in `log.skipped`).
 */
function makeClient(
  server,
  { vsn = '2.0.0', name = `client-${vsn}`, anonKey = token(), accessToken, realtime = {}, skipFrame } = {}
) {
  const log = { name, frames: [], urls: [], skip: skipFrame }
  const options = {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: recordingTransport(log), vsn, ...realtime },
  }
  if (accessToken) options.accessToken = accessToken
  const supabase = createClient(server.httpUrl, anonKey, options)
  const c = { name, supabase, realtime: supabase.realtime, log, anonKey }
  openClients.add(c)
  return c
}

/** Connect the socket and wait until it is open and the token callback has settled on `expectedToken`. */
async function connectSettled(c, expectedToken = c.anonKey) {
  c.realtime.connect()
  await waitFor(() => c.realtime.isConnected(), `${c.name} socket open`, { clients: [c] })
  await waitFor(() => c.realtime.accessTokenValue === expectedToken, `${c.name} access token settled`, {
    clients: [c],
  })
}

/**
 * channel.subscribe() with every status recorded. Returns a record
 * { statuses: [{status, err}], first: Promise<{status, err}> }.
 */
function subscribe(channel) {
  const rec = { statuses: [] }
  rec.first = new Promise((resolve) => {
    channel.subscribe((status, err) => {
      rec.statuses.push({ status, err: err ? String(err.message ?? err) : undefined })
      resolve({ status, err: err ? String(err.message ?? err) : undefined })
    })
  })
  return rec
}

async function subscribeOk(channel, clients = []) {
  const rec = subscribe(channel)
  await waitFor(() => rec.statuses.length > 0, `subscribe status for ${channel.topic}`, { clients })
  const first = rec.statuses[0]
  if (first.status !== 'SUBSCRIBED') {
    throw new Error(`expected SUBSCRIBED for ${channel.topic}, got ${JSON.stringify(first)}\n${dumpFrames(clients)}`)
  }
  return rec
}

async function closeClient(c) {
  openClients.delete(c)
  try {
    await c.supabase.removeAllChannels()
  } catch {}
  try {
    await c.realtime.disconnect()
  } catch {}
}

async function closeAllClients() {
  await Promise.all([...openClients].map(closeClient))
}

function dumpFrames(clients) {
  const serverTail = currentServer
    ? `\n--- realtide log tail ---\n${currentServer.output().split('\n').slice(-40).join('\n')}`
    : ''
  return clients
    .map((c) => {
      const lines = c.log.frames
        .slice(-60)
        .map((f) => `  ${f.dir}${f.binary ? ' BIN ' + f.hex : f.text !== undefined ? ' ' + f.text : ` code=${f.code} reason=${f.reason}`}`)
      return `frames of ${c.name} (${c.log.urls.join(', ')}):\n${lines.join('\n')}`
    })
    .join('\n') + serverTail
}

/** Frames received by client `c` (parsed): [{binary, kind?, bytes?, msg?}]. */
function receivedFrames(c) {
  return c.log.frames
    .filter((f) => f.dir === 'S→C')
    .map((f) => (f.binary ? { binary: true, bytes: Buffer.from(f.hex, 'hex') } : { binary: false, msg: JSON.parse(f.text) }))
}

function uniqueTopic(prefix) {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`
}

module.exports = {
  JWT_SECRET,
  REPO_ROOT,
  realtideBin,
  signToken,
  token,
  nowSec,
  startServer,
  sleep,
  waitFor,
  makeClient,
  connectSettled,
  subscribe,
  subscribeOk,
  closeClient,
  closeAllClients,
  dumpFrames,
  receivedFrames,
  uniqueTopic,
  recordingTransport,
}
