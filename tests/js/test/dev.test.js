'use strict'
// `realtide dev`: one command gives a private PostgreSQL plus realtide; the printed keys, user
// token, psql command and snippets work as printed with the real supabase-js client; the demo
// table streams postgres_changes under its owner-only policy; the server listens on loopback
// only; a second `realtide dev` on the same data directory is refused naming the PID; a restart
// keeps the database port; PostgreSQL notices stay out of the default output; SIGTERM stops both
// processes.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, execFileSync, execSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { createClient } = require('@supabase/supabase-js')
const { realtideBin, waitFor, sleep } = require('../lib/helpers')

/** Starts `realtide dev` on `dataDir`; default log level unless `env` sets one. */
function startDev(dataDir, env = {}, extra = []) {
  const inherited = { ...process.env }
  delete inherited.RUST_LOG
  delete inherited.HOST
  const child = spawn(realtideBin(), ['dev', '--data-dir', dataDir, '--port', '0', ...extra], {
    env: { ...inherited, JWT_SECRET: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const dev = { child, out: '', err: '' }
  child.stdout.on('data', (d) => { dev.out += d })
  child.stderr.on('data', (d) => { dev.err += d })
  dev.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  return dev
}

async function stopDev(dev) {
  dev.child.kill('SIGTERM')
  const code = await dev.exited
  assert.equal(code, 0, dev.err)
  assert.match(dev.err, /PostgreSQL stopped/)
}

function nonLoopbackAddress() {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list || []) if (a.family === 'IPv4' && !a.internal) return a.address
  }
  return null
}

test('realtide dev serves a working backend as printed, and behaves across starts', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-dev-'))
  fs.chmodSync(dataDir, 0o755)
  let dev = startDev(dataDir)
  const clients = []
  let dbPort
  try {
    await waitFor(() => /realtide listening on/.test(dev.out), 'realtide dev to start', { timeout: 60000 })
    const out = dev.out
    const url = out.match(/URL:\s+(\S+)/)[1]
    const dbUrl = out.match(/database:\s+(\S+)/)[1]
    const anon = out.match(/anon key:\s+(\S+)/)[1]
    const service = out.match(/service key:\s+(\S+)/)[1]
    const user = out.match(/user token:\s+(\S+)/)[1]
    dbPort = new URL(dbUrl).port
    assert.match(out, new RegExp(`psql:\\s+psql ${dbUrl.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
    assert.match(out, /createClient\('http:\/\/127\.0\.0\.1:\d+', 'eyJ/)
    assert.match(out, /realtide token --data-dir \S+ --role authenticated --sub <uuid>/)
    assert.match(out, /anon key may not read it/)
    const secret = fs.readFileSync(path.join(dataDir, 'jwt_secret'), 'utf8').trim()
    const claimsOf = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url'))
    const [h, b, sig] = anon.split('.')
    assert.equal(require('node:crypto').createHmac('sha256', secret).update(`${h}.${b}`).digest('base64url'), sig)
    assert.equal(claimsOf(anon).role, 'anon')
    assert.equal(claimsOf(service).role, 'service_role')
    assert.equal(claimsOf(user).role, 'authenticated')

    // Loopback only, as printed.
    assert.match(out, /realtide listening on 127\.0\.0\.1:\d+/)
    const port = new URL(url).port
    const outside = nonLoopbackAddress()
    if (outside) {
      await assert.rejects(fetch(`http://${outside}:${port}/healthcheck`), `reachable on ${outside}`)
    }

    // The broadcast snippet, as printed.
    const supabase = createClient(url, anon, { realtime: { transport: require('ws') } })
    clients.push(supabase)
    const got = []
    const room = supabase.channel('room1', { config: { broadcast: { self: true } } })
    room
      .on('broadcast', { event: 'hello' }, (m) => got.push(m.payload))
      .subscribe((status) => {
        if (status === 'SUBSCRIBED') room.send({ type: 'broadcast', event: 'hello', payload: { at: 1 } })
      })
    await waitFor(() => got.length === 1, 'the broadcast to come back', { timeout: 15000 })
    assert.deepEqual(got[0], { at: 1 })

    // The postgres_changes snippet, run exactly as printed (its console.log collected), then
    // the printed psql insert.
    const lines = out.split('\n')
    const from = lines.findIndex((l) => l.startsWith('const user = createClient('))
    const to = lines.findIndex((l, i) => i > from && l.endsWith('.subscribe())'))
    assert.ok(from >= 0 && to > from, out)
    const snippet = lines.slice(from, to + 1).join('\n')
    const seen = []
    let subscribed = false
    // The snippet's own createClient, with a `system` listener added to its channels so the
    // test knows when `Subscribed to PostgreSQL` arrived (the snippet itself is unchanged).
    const watchedCreateClient = (...args) => {
      const client = createClient(...args)
      const channel = client.channel.bind(client)
      client.channel = (...a) => channel(...a).on('system', {}, (p) => {
        if (p.message === 'Subscribed to PostgreSQL') subscribed = true
      })
      return client
    }
    const run = new Function('createClient', 'require', 'console', `${snippet}\nreturn user`)
    const userClient = run(watchedCreateClient, require, { log: (change) => seen.push(change) })
    clients.push(userClient)
    await waitFor(() => subscribed, 'the printed snippet: Subscribed to PostgreSQL', { timeout: 15000 })
    const insertLine = out.split('\n').find((l) => l.startsWith('psql ') && l.includes('insert into public.todos'))
    assert.ok(insertLine, out)
    execSync(insertLine, { stdio: 'ignore' })
    // Another user's row never arrives.
    const psql = (sql) => execFileSync('psql', [dbUrl, '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql])
    psql(`insert into public.todos(owner, title) values ('22222222-2222-4222-8222-222222222222', 'not-yours')`)
    psql(`insert into public.todos(owner, title) values ('${claimsOf(user).sub}', 'second')`)
    await waitFor(() => seen.length >= 2, 'the user\'s rows to arrive', { timeout: 15000 })
    assert.deepEqual(seen.map((c) => [c.eventType, c.new.title, c.errors]), [['INSERT', 'hello', null], ['INSERT', 'second', null]])

    // More tokens with the printed command: it finds the dev secret.
    const more = execFileSync(realtideBin(), ['token', '--data-dir', dataDir, '--role', 'authenticated', '--sub', 'x'], {
      env: { ...process.env, JWT_SECRET: '' },
    }).toString().trim()
    const [mh, mb, msig] = more.split('.')
    assert.equal(require('node:crypto').createHmac('sha256', secret).update(`${mh}.${mb}`).digest('base64url'), msig)

    // A second `realtide dev` on the same directory is refused, naming the PID and the log.
    const second = startDev(dataDir)
    const code = await second.exited
    assert.notEqual(code, 0)
    assert.match(second.err, new RegExp(`another \`realtide dev\` \\(PID ${dev.child.pid}\\)`))
    assert.match(second.err, /postgres\.log/)

    // PostgreSQL notices (`... does not exist, skipping`) stay out of the default output.
    assert.doesNotMatch(dev.err, /skipping|NOTICE/, dev.err)
  } finally {
    for (const c of clients) await c.removeAllChannels().catch(() => {})
  }
  await stopDev(dev)
  await sleep(200)
  assert.equal(fs.existsSync(path.join(dataDir, 'pgdata', 'postmaster.pid')), false)

  // A restart keeps the database port (a saved psql URL keeps working).
  dev = startDev(dataDir)
  try {
    await waitFor(() => /realtide listening on/.test(dev.out), 'realtide dev to start again', { timeout: 60000 })
    assert.equal(new URL(dev.out.match(/database:\s+(\S+)/)[1]).port, dbPort)
  } finally {
    await stopDev(dev)
  }
  fs.rmSync(dataDir, { recursive: true, force: true })
})

test('a second realtide dev after a kill -9 takes over the data directory', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-dev-'))
  fs.chmodSync(dataDir, 0o755)
  let dev = startDev(dataDir, { RUST_LOG: 'warn' })
  await waitFor(() => /realtide listening on/.test(dev.out), 'realtide dev to start', { timeout: 60000 })
  dev.child.kill('SIGKILL')
  await dev.exited
  // Its PostgreSQL (own process group) is still running; the next start stops and reuses it.
  dev = startDev(dataDir, { RUST_LOG: 'warn' })
  try {
    await waitFor(() => /realtide listening on/.test(dev.out), 'realtide dev to start after kill -9', { timeout: 60000 })
    assert.match(dev.err, /left running by an earlier realtide dev/)
  } finally {
    await stopDev(dev)
  }
  fs.rmSync(dataDir, { recursive: true, force: true })
})

test('realtide dev --tenants 2 serves two isolated demo tenants as printed', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-dev-'))
  fs.chmodSync(dataDir, 0o755)
  const dev = startDev(dataDir, {}, ['--tenants', '2'])
  const clients = []
  try {
    await waitFor(() => /realtide listening on/.test(dev.out), 'realtide dev --tenants to start', { timeout: 90000 })
    const out = dev.out
    const tenant = (name) => {
      const block = out.split(`\n  ${name}\n`)[1]
      assert.ok(block, `no block for ${name} in:\n${out}`)
      return {
        url: block.match(/URL:\s+(\S+)/)[1],
        db: block.match(/database:\s+(\S+)/)[1],
        anon: block.match(/anon key:\s+(\S+)/)[1],
        user: block.match(/user token:\s+(\S+)/)[1],
      }
    }
    const t1 = tenant('tenant1')
    const t2 = tenant('tenant2')
    assert.match(t1.url, /^http:\/\/127\.0\.0\.1:\d+\/t\/tenant1$/)
    assert.notEqual(t1.anon, t2.anon)
    const subscribe = async (t, name) => {
      const supabase = createClient(t.url, t.anon, {
        realtime: { transport: require('ws') },
        accessToken: async () => t.user,
      })
      clients.push(supabase)
      await supabase.realtime.setAuth()
      const got = []
      const status = []
      const system = []
      supabase
        .channel('todos')
        .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, (c) => got.push(c.new.title))
        .on('system', {}, (m) => system.push(m))
        .subscribe((s) => status.push(s))
      // Changes flow once the server says `Subscribed to PostgreSQL`.
      await waitFor(() => status.includes('SUBSCRIBED') && system.some((m) => m.status === 'ok'), `${name} subscribed`, { timeout: 30000 })
      return got
    }
    const got1 = await subscribe(t1, 'tenant1')
    const got2 = await subscribe(t2, 'tenant2')
    const sub = JSON.parse(Buffer.from(t1.user.split('.')[1], 'base64url')).sub
    const psql = (db, sql) => execFileSync('psql', [db, '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql])
    psql(t1.db, `insert into public.todos(owner, title) values ('${sub}', 'in-one')`)
    psql(t2.db, `insert into public.todos(owner, title) values ('${sub}', 'in-two')`)
    await waitFor(() => got1.includes('in-one') && got2.includes('in-two'), 'each tenant its own row', { timeout: 30000 }).catch((e) => {
      throw new Error(`${e.message}: got ${JSON.stringify([got1, got2])}\n${dev.err}`)
    })
    await sleep(500)
    assert.deepEqual(got1, ['in-one'])
    assert.deepEqual(got2, ['in-two'])
    // A key of tenant1 does not open tenant2.
    const port = new URL(t1.url).port
    const refused = await new Promise((resolve) => {
      const WebSocket = require('ws')
      const ws = new WebSocket(`ws://127.0.0.1:${port}/t/tenant2/realtime/v1/websocket?apikey=${t1.anon}&vsn=2.0.0`)
      ws.on('unexpected-response', (_req, res) => { resolve({ status: res.statusCode }); ws.terminate() })
      ws.on('open', () => { resolve({ status: 101 }); ws.close() })
      ws.on('error', () => {})
    })
    assert.equal(refused.status, 401)
  } finally {
    for (const c of clients) await c.removeAllChannels().catch(() => {})
    for (const c of clients) c.realtime.disconnect()
    await stopDev(dev)
  }
  fs.rmSync(dataDir, { recursive: true, force: true })
})
