'use strict'
// `realtide dev`: one command gives a private PostgreSQL plus realtide; the printed keys and
// snippet work with the real supabase-js client, the demo table streams postgres_changes under
// its owner-only policy, and SIGTERM stops both processes.

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { createClient } = require('@supabase/supabase-js')
const { realtideBin, signToken, waitFor, sleep } = require('../lib/helpers')

test('realtide dev serves a working backend and stops cleanly', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'realtide-dev-'))
  fs.chmodSync(dataDir, 0o755)
  const child = spawn(realtideBin(), ['dev', '--data-dir', dataDir, '--port', '0'], {
    env: { ...process.env, RUST_LOG: 'warn', JWT_SECRET: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  let err = ''
  child.stderr.on('data', (d) => { err += d })
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  const clients = []
  try {
    await waitFor(() => /realtide listening on/.test(out), 'realtide dev to start', { timeout: 60000 })
    const url = out.match(/URL:\s+(\S+)/)[1]
    const dbUrl = out.match(/database:\s+(\S+)/)[1]
    const anon = out.match(/anon key:\s+(\S+)/)[1]
    const service = out.match(/service key:\s+(\S+)/)[1]
    assert.match(out, /createClient\('http:\/\/127\.0\.0\.1:\d+', 'eyJ/)
    const secret = fs.readFileSync(path.join(dataDir, 'jwt_secret'), 'utf8').trim()
    const [h, b, sig] = anon.split('.')
    assert.equal(require('node:crypto').createHmac('sha256', secret).update(`${h}.${b}`).digest('base64url'), sig)
    assert.equal(JSON.parse(Buffer.from(b, 'base64url')).role, 'anon')
    assert.equal(JSON.parse(Buffer.from(service.split('.')[1], 'base64url')).role, 'service_role')

    // The printed snippet, as printed (broadcast to itself).
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

    // The demo table: a user sees their own todos only.
    const exp = Math.floor(Date.now() / 1000) + 3600
    const alice = '11111111-1111-4111-8111-111111111111'
    const bob = '22222222-2222-4222-8222-222222222222'
    const aliceToken = signToken({ role: 'authenticated', sub: alice, exp }, secret)
    const seen = []
    const db = createClient(url, anon, {
      realtime: { transport: require('ws') },
      accessToken: async () => aliceToken,
    })
    clients.push(db)
    // The join must carry alice's token: wait until the client resolved it.
    db.realtime.connect()
    await waitFor(() => db.realtime.isConnected() && db.realtime.accessTokenValue === aliceToken, 'alice token settled')
    let subscribed = false
    db.channel('todos')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, (p) => seen.push(p.new.title ?? JSON.stringify(p)))
      .on('system', {}, (p) => { if (p.message === 'Subscribed to PostgreSQL') subscribed = true })
      .subscribe()
    await waitFor(() => subscribed, 'Subscribed to PostgreSQL', { timeout: 15000 })
    const psql = (sql) => execFileSync('psql', [dbUrl, '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql])
    psql(`insert into public.todos(owner, title) values ('${bob}', 'bob-1'), ('${alice}', 'alice-1')`)
    psql(`insert into public.todos(owner, title) values ('${alice}', 'alice-2')`)
    await waitFor(() => seen.includes('alice-2'), 'alice-2 to arrive', { timeout: 15000 }).catch((e) => { throw new Error(e.message + ' seen=' + JSON.stringify(seen) + ' err=' + err.slice(-2000)) })
    assert.deepEqual(seen, ['alice-1', 'alice-2'])
  } finally {
    for (const c of clients) await c.removeAllChannels().catch(() => {})
    child.kill('SIGTERM')
  }
  assert.equal(await exited, 0, err)
  assert.match(err, /PostgreSQL stopped/)
  // The cluster is really down: pg_ctl reports no server.
  await sleep(200)
  assert.equal(fs.existsSync(path.join(dataDir, 'pgdata', 'postmaster.pid')), false)
  fs.rmSync(dataDir, { recursive: true, force: true })
})
