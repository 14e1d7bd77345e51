'use strict'
// Fault suite: a commit that the walsender streams before it is visible, made deterministic.
// With `synchronous_standby_names = 'nobody'` (no such standby ever connects), a session with
// synchronous_commit=on writes and flushes its commit record (so realtide receives the
// transaction) and then waits for the standby: the rows are committed in WAL but invisible to
// every other session. Meanwhile rows committed later (asynchronously) are visible. After ~2 s
// the setting is reset and the held transaction completes.
//
// Subscribers (supabase-js 2.119.1): an owner-only RLS subscriber (authenticated, `sub` =
// owner) on `secure_items`, whose policy check must not run before the held row is visible
// (it would find nothing and drop the row), and a plain anon subscriber on `open_items` (no
// RLS). The held transaction inserts one row in each table. Both must get every row exactly
// once, in commit order: the held row before the rows committed after it.

const { it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

let db
let rt
before(async () => {
  db = await startCluster()
  await f.installInserter(db)
  await f.createItemsTable(db, 'secure_items', { rls: true })
  await f.createItemsTable(db, 'open_items')
})
after(async () => {
  await h.closeAllClients()
  try {
    if (db) await db.sql(`alter system reset synchronous_standby_names; select pg_reload_conf();`)
  } catch {}
  if (rt) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

const setting = async () => (await db.sql('show synchronous_standby_names')).trim()

it('a transaction streamed before it is visible reaches the RLS and the plain subscriber exactly once, in order', { timeout: 120000 }, async (t) => {
  rt = await f.startRealtide(db)
  const owner = crypto.randomUUID()
  const other = crypto.randomUUID()
  const a = f.userClient(rt.endpoint, 'rls-subscriber', owner)
  const b = f.anonClient(rt.endpoint, 'plain-subscriber')
  const subA = await f.subscribeRows(a, 'secure_items', { owner })
  const subB = await f.subscribeRows(b, 'open_items')
  const both = (o) => `insert into public.secure_items (owner) values ('${o}'); insert into public.open_items (owner) values ('${o}');`

  // Rows before: both subscribers are live.
  await db.sql(both(owner) + both(other))
  await h.waitFor(() => subA.tracker.count >= 1 && subB.tracker.count >= 2, 'rows before the held transaction', { clients: [a, b] })

  await db.sql(`alter system set synchronous_standby_names = 'nobody'; select pg_reload_conf();`)
  await h.waitFor(async () => (await setting()) === 'nobody', 'synchronous_standby_names in effect')

  const held = f.psqlChild(
    db,
    `with s as (insert into public.secure_items (owner) values ('${owner}') returning seq),
          o as (insert into public.open_items (owner) values ('${owner}') returning seq)
     select (select seq from s) || ',' || (select seq from o)`,
    { app: 'faults_held', env: { PGOPTIONS: '-c synchronous_commit=on' } }
  )
  let released = false
  const ctx = () =>
    [f.connectionSummary(a), f.connectionSummary(b), `rls system: ${JSON.stringify(subA.system)}`, rt.output(), h.dumpFrames([a, b])].join('\n')
  try {
    // The held transaction's commit is in WAL and it waits for the (absent) standby.
    await h.waitFor(
      async () =>
        (await db.sql(`select wait_event from pg_stat_activity where application_name = 'faults_held'`)).trim() === 'SyncRep',
      'the held transaction waiting in SyncRep',
      { timeout: 15000 }
    )
    const invisible = (await db.sql(`select count(*) from public.secure_items where owner = '${owner}'`)).trim()
    // Rows committed after it (asynchronous commits do not wait) are visible before it.
    await db.sql(both(owner) + both(other))
    await h.sleep(2000)
    t.diagnostic(
      `while held: the owner's visible rows ${invisible} (+1 later); rls subscriber has ${subA.tracker.count}, plain subscriber has ${subB.tracker.count}`
    )
    await db.sql(`alter system reset synchronous_standby_names; select pg_reload_conf();`)
    released = true
    const res = await held.done
    assert.equal(res.code, 0, `held transaction: ${res.err}`)
    t.diagnostic(`held transaction committed seq (secure, open) = ${res.out.trim()}`)
  } finally {
    if (!released) {
      await db.sql(`alter system reset synchronous_standby_names; select pg_reload_conf();`)
      held.child.kill('SIGKILL')
    }
  }
  // Barriers.
  await db.sql(both(owner))
  const expA = await f.committedSeqs(db, 'secure_items', owner)
  const expB = await f.committedSeqs(db, 'open_items')
  await f.settle(subA.tracker, expA.length, { timeoutMs: 30000, idleMs: 15000 })
  await f.settle(subB.tracker, expB.length, { timeoutMs: 30000, idleMs: 15000 })
  f.assertExact(subA.tracker, expA, ctx)
  f.assertExact(subB.tracker, expB, ctx)
  assert.deepEqual(subA.foreign, [], 'the RLS subscriber gets only its own rows')
  assert.equal(a.log.urls.length, 1, `the RLS subscriber was never disconnected\n${ctx()}`)
  assert.equal(b.log.urls.length, 1, `the plain subscriber was never disconnected\n${ctx()}`)
})
