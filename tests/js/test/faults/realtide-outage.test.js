'use strict'
// Fault suite: a long realtide outage. An inserter inside PostgreSQL commits 500 rows/s, one
// per transaction, for 4 s, then realtide stops (FAULTS_OUTAGE_SIGNAL, default SIGTERM) and
// stays down FAULTS_OUTAGE_SECS (default 60) seconds while the inserter goes on (30,000 rows
// at the defaults), then a new realtide starts on the same port, CHANGES_DIR and SLOT_NAME and
// the inserter runs 4 s more. The supabase-js 2.119.1 subscriber (default reconnect backoff,
// capped at 10 s) comes back by itself within the resume window and must receive every row
// exactly once in order: the rows before, the 30,000 committed during the outage (from the
// slot), and the rows after.

const { it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const OUTAGE_SECS = Number(process.env.FAULTS_OUTAGE_SECS || 60)
const SIGNAL = process.env.FAULTS_OUTAGE_SIGNAL || 'SIGTERM'
const RATE = 500
const PRE_SECS = 4
const POST_SECS = 4
const TABLE = 'outage_items'

let db
let rt
before(async () => {
  db = await startCluster()
  await f.installInserter(db)
  await f.createItemsTable(db, TABLE)
})
after(async () => {
  await h.closeAllClients()
  if (rt) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

it(`a ${OUTAGE_SECS} s realtide outage (${SIGNAL}) at ${RATE} rows/s: everything committed before, during and after arrives exactly once`, { timeout: (OUTAGE_SECS + 200) * 1000 }, async (t) => {
  rt = await f.startRealtide(db)
  const c = f.anonClient(rt.endpoint, 'subscriber')
  const sub = await f.subscribeRows(c, TABLE)
  const ins = f.startInserter(db, { table: TABLE, rate: RATE, seconds: PRE_SECS + OUTAGE_SECS + POST_SECS })
  let insRes
  let downAt
  let upAt
  const ctx = () =>
    [f.connectionSummary(c), `system: ${JSON.stringify(sub.system.map(({ at, ...p }) => p))}`, `inserter: ${JSON.stringify(insRes)}`, rt.output(), h.dumpFrames([c])].join('\n')
  try {
    await h.sleep(PRE_SECS * 1000)
    assert.ok(sub.tracker.count > 0, `rows arrived before the outage\n${ctx()}`)
    await rt.signal(SIGNAL)
    downAt = Date.now()
    await h.sleep(OUTAGE_SECS * 1000)
    await rt.start()
    upAt = Date.now()
    insRes = await ins.done
  } finally {
    await ins.stop()
  }
  await db.sql(`insert into public.${TABLE} (owner) values (null)`)
  const expected = await f.committedSeqs(db, TABLE)
  const during = Number(
    (
      await db.sql(
        `select count(*) from public.${TABLE} where at >= to_timestamp(${downAt / 1000}) and at < to_timestamp(${upAt / 1000})`
      )
    ).trim()
  )
  t.diagnostic(`${expected.length} rows in all, ${during} committed while realtide was down (${((upAt - downAt) / 1000).toFixed(1)} s)`)
  assert.ok(during >= OUTAGE_SECS * RATE * 0.8, `about ${OUTAGE_SECS * RATE} rows are committed during the outage, got ${during}`)

  const complete = await f.settle(sub.tracker, expected.length, { timeoutMs: 150000, idleMs: 40000 })
  t.diagnostic(`${complete ? 'complete' : 'INCOMPLETE'} ${((Date.now() - upAt) / 1000).toFixed(1)} s after the restart: ${f.connectionSummary(c)}, joins ${f.subscribedCount(sub)}`)
  f.assertExact(sub.tracker, expected, ctx)
  assert.ok(f.subscribedCount(sub) >= 2, `the client rejoined\n${ctx()}`)
  assert.ok(
    !sub.system.some((p) => p.status === 'error'),
    `no error on the channel within the resume window: ${JSON.stringify(sub.system)}`
  )
  assert.equal(sub.ch.state, 'joined')
})
