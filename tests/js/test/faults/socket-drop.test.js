'use strict'
// Fault suite: one client's network connection drops. Two supabase-js 2.119.1 clients (anon)
// subscribe to the same table on their own topics while an inserter inside PostgreSQL
// commits one row per transaction; mid-stream the TCP socket under one client is destroyed
// (`ws._socket.destroy()`, as a network drop looks to the client). The other client is
// untouched: it gets every row exactly once in order and is never reconnected.
//
// (a) At 2,000 rows/s the socket is dropped three times (each time once the client is back);
//     the dropped client reconnects by itself (default backoff, well within the resume
//     window) and must end with every row exactly once, in order, apart from what no server
//     can know: rows it read after the last ping it answered before a drop (the socket died
//     before the pong left) come again, exactly those, first on the new socket. realtide
//     follows every change frame with a ping, so that is at most the row being read.
// (b) CHANGES_RESUME_WINDOW=3: the dropped client stays offline 6 s (`realtime.disconnect()`
//     right after the drop, rows keep being committed), then connects again; its channel
//     rejoins with the same topic, token and bindings. It must get `Subscribed to
//     PostgreSQL`, then a `system` message {extension: postgres_changes, status: error,
//     message: "Missed changes…"}, then the rows committed after it, exactly once and in order.

const { describe, it, before, after } = require('node:test')
const assert = require('node:assert/strict')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const RATE_A = 2000

let db
const deployments = []
before(async () => {
  db = await startCluster()
  await f.installInserter(db)
  await f.createItemsTable(db, 'drop_items')
  await f.createItemsTable(db, 'late_items')
})
after(async () => {
  await h.closeAllClients()
  for (const rt of deployments) {
    await rt.stop()
    rt.removeJournal()
  }
  if (db) await db.stop()
})

function context(rt, clients, subs, extra = '') {
  return () =>
    [
      ...clients.map(f.connectionSummary),
      ...subs.map((s) => `${s.tracker.name} system: ${JSON.stringify(s.system.map(({ at, ...p }) => p))}`),
      extra,
      rt.output(),
      h.dumpFrames(clients),
    ].join('\n')
}

describe('a client whose socket drops mid-stream', () => {
  it('(a) reconnects by itself within the window: every row exactly once, in order; the other client is untouched', { timeout: 120000 }, async (t) => {
    const rt = await f.startRealtide(db)
    deployments.push(rt)
    const dropped = f.anonClient(rt.endpoint, 'dropped')
    const steady = f.anonClient(rt.endpoint, 'steady')
    const subD = await f.subscribeRows(dropped, 'drop_items')
    const subS = await f.subscribeRows(steady, 'drop_items')
    const acks = f.watchAcknowledged(dropped, subD.tracker)
    // Three drops, each once the client is back, to give a loss at the drop a fair chance to show.
    const ins = f.startInserter(db, { table: 'drop_items', rate: RATE_A, seconds: 10 })
    const drops = []
    try {
      for (let k = 0; k < 3; k++) {
        await h.sleep(2500)
        // Back: rejoined, and rows flow again since the previous drop.
        await h.waitFor(
          () =>
            subD.ch.state === 'joined' &&
            f.subscribedCount(subD) >= k + 1 &&
            (k === 0 || subD.tracker.count > drops[k - 1].count),
          `the dropped client receiving again after drop ${k}`,
          { clients: [dropped], timeout: 20000 }
        )
        assert.ok(subD.tracker.count > 0, 'rows arrived before the drop')
        drops.push({ count: subD.tracker.count, last: subD.tracker.last, acked: acks.acked(), ackedBefore: acks.ackedBefore() })
        f.wsOf(dropped)._socket.destroy()
      }
      await ins.done
    } finally {
      await ins.stop()
    }
    await db.sql(`insert into public.drop_items (owner) values (null)`)
    const expected = await f.committedSeqs(db, 'drop_items')
    await f.settle(subD.tracker, expected.length, { timeoutMs: 60000, idleMs: 20000 })
    await f.settle(subS.tracker, expected.length, { timeoutMs: 20000 })
    // Where each drop fell in the dropped client's stream: a gap between the last row before it
    // and the first after it means frames were written to the dying socket and never resent.
    // `opens` holds the row count at each reconnect (the first socket opened before the watch).
    for (const [k, d] of drops.entries()) d.reopened = acks.opens[k] ?? subD.tracker.count
    const extra = drops
      .map(
        (d, k) =>
          `drop ${k + 1}: last row before it ${d.last}, first row after it ${subD.tracker.seqs[d.reopened]}, ` +
          `read after the last answered ping ${d.reopened - d.acked}`
      )
      .join('; ')
    t.diagnostic(`${expected.length} rows; ${extra}; ${f.connectionSummary(dropped)}, joins ${f.subscribedCount(subD)}`)
    const ctx = context(rt, [dropped, steady], [subD, subS], extra)
    f.assertExact(subS.tracker, expected, ctx)
    assert.equal(steady.log.urls.length, 1, `the other client was never reconnected\n${ctx()}`)
    assert.ok(!steady.log.frames.some((fr) => fr.dir === 'CLOSE'), `the other client's socket was never closed\n${ctx()}`)
    // A drop can only make the server send again what the client read after its last answered
    // ping (one ping follows every change frame, so at most the row being read at the drop).
    const again = f.assertExactAfterDrops(subD.tracker, expected, drops, ctx)
    t.diagnostic(`rows sent again after the drops: ${again}`)
    assert.ok(f.subscribedCount(subD) >= 4, `the dropped client rejoined after each drop\n${ctx()}`)
    assert.equal(subD.ch.state, 'joined')
    await h.closeClient(dropped)
    await h.closeClient(steady)
    await rt.stop()
  })

  it('(b) offline longer than CHANGES_RESUME_WINDOW=3: told "Missed changes", then live rows exactly once', { timeout: 120000 }, async (t) => {
    const rt = await f.startRealtide(db, { env: { CHANGES_RESUME_WINDOW: '3' } })
    deployments.push(rt)
    const late = f.anonClient(rt.endpoint, 'late')
    const steady = f.anonClient(rt.endpoint, 'steady-b')
    const subL = await f.subscribeRows(late, 'late_items')
    const subS = await f.subscribeRows(steady, 'late_items')
    const ctx = context(rt, [late, steady], [subL, subS])
    const ins = f.startInserter(db, { table: 'late_items', rate: 500, seconds: 14 })
    let missed
    try {
      await h.sleep(2000)
      assert.ok(subL.tracker.count > 0, 'rows arrived before the drop')
      f.wsOf(late)._socket.destroy()
      await late.realtime.disconnect()
      const offlineAt = Date.now()
      await h.sleep(6000)
      assert.ok(!late.realtime.isConnected(), 'the client stayed offline')
      const countOffline = subL.tracker.count
      late.realtime.connect()
      missed = await h.waitFor(
        () => subL.system.find((p) => p.extension === 'postgres_changes' && p.status === 'error'),
        'the Missed changes system message after the late rejoin',
        { clients: [late], timeout: 30000 }
      )
      t.diagnostic(
        `offline ${((missed.at - offlineAt) / 1000).toFixed(1)} s; rows received when offline began ${countOffline}; system message: ${JSON.stringify(missed)}`
      )
      await ins.done
    } finally {
      await ins.stop()
    }
    assert.equal(missed.extension, 'postgres_changes')
    assert.equal(missed.status, 'error')
    assert.match(String(missed.message), /^Missed changes/, ctx())
    // Subscribed to PostgreSQL (of the rejoin) comes first, then the error.
    const okIdx = subL.system.findIndex((p, i) => i > 0 && p.status === 'ok')
    const errIdx = subL.system.indexOf(missed)
    assert.ok(okIdx >= 0 && okIdx < errIdx, `Subscribed to PostgreSQL precedes Missed changes\n${ctx()}`)

    // Rows committed after the error message must all arrive, exactly once.
    const post = (
      await db.sql(`insert into public.late_items (owner) select null from generate_series(1, 200) returning seq`)
    )
      .split('\n')
      .filter(Boolean)
      .map(Number)
    await h.waitFor(() => post.every((s) => subL.tracker.has(s)), 'the rows committed after the rejoin', {
      clients: [late],
      timeout: 30000,
    }).catch((e) => assert.fail(`${e.message}\n${subL.tracker.check(post).text}\n${ctx()}`))
    await h.sleep(500)
    const got = subL.tracker.check(post)
    assert.equal(got.missing.length, 0, got.text)
    assert.equal(subL.tracker.count, subL.tracker.unique, `no row was delivered twice\n${subL.tracker.check([]).text}`)
    assert.equal(subL.tracker.inversions, 0, `in commit order\n${subL.tracker.check([]).text}`)

    const expected = await f.committedSeqs(db, 'late_items')
    await f.settle(subS.tracker, expected.length, { timeoutMs: 20000 })
    f.assertExact(subS.tracker, expected, ctx)
    assert.equal(steady.log.urls.length, 1, `the other client was never reconnected\n${ctx()}`)
  })
})
