'use strict'
// Fault suite: a subscriber that stops reading. The `ws` socket under a supabase-js 2.119.1
// client is paused (ws `pause()`: the TCP socket is not read, so the kernel buffers fill and
// realtide's writes stall) for 30 s while 40,000 rows of ~450-byte frames (~18 MB, more than
// the loopback socket buffers hold) are committed in 500-row transactions; then it is
// resumed. A second subscriber on the same table keeps reading throughout. Checked: both get
// every row exactly once in order, and the second one gets them all while the first is still
// paused (one stalled reader holds nobody else up).
//
// Two settings: with the default CHANGES_STALL_TIMEOUT (60 s) the paused reader is not cut;
// with CHANGES_STALL_TIMEOUT=20 realtide cuts it after 20 s without progress (its socket stays
// open another 20 s for it to read what it was already sent, with the close frame after it),
// and it resumes after it reconnects by itself (that variant asserts the cut and the rejoin
// happened).
//
// The pause begins right after a heartbeat reply: supabase-js sends its next heartbeat 25 s
// later and gives up on it 25 s after that, so its own heartbeat timeout (which would make the
// client close the socket and drop whatever the kernel still holds for it, a loss no server
// can see) cannot fire during the 30 s pause plus the drain.

const { describe, it, after } = require('node:test')
const assert = require('node:assert/strict')
const { execFileSync } = require('node:child_process')
const h = require('../../lib/helpers')
const f = require('../../lib/faults')
const { startCluster } = require('../../lib/pg')

const PAUSE_MS = 30000
const ROWS = Number(process.env.FAULTS_SLOW_ROWS || 40000)
const BATCH = 500
const PAD = 300

const CASES = [
  { name: 'default stall timeout: the paused reader is kept', env: {}, cut: false },
  { name: 'CHANGES_STALL_TIMEOUT=20: the paused reader is cut and resumes', env: { CHANGES_STALL_TIMEOUT: '20' }, cut: true },
]

const clusters = []
const deployments = []
after(async () => {
  await h.closeAllClients()
  for (const rt of deployments) {
    await rt.stop()
    rt.removeJournal()
  }
  for (const db of clusters) await db.stop()
})

/** Bytes queued in the kernel on both ends of the connections to `port` (ss -tn). */
function kernelQueued(port) {
  try {
    const out = execFileSync('ss', ['-tnH', 'state', 'established', `( sport = :${port} or dport = :${port} )`]).toString()
    let send = 0
    let recv = 0
    for (const line of out.split('\n')) {
      const m = line.trim().split(/\s+/)
      if (m.length < 4) continue
      recv += Number(m[0]) || 0
      send += Number(m[1]) || 0
    }
    return `kernel Recv-Q ${recv} B, Send-Q ${send} B`
  } catch (e) {
    return `(ss: ${e.message})`
  }
}

describe('a subscriber that stops reading for 30 s', () => {
  for (const { name, env, cut } of CASES) {
    it(name, { timeout: 240000 }, async (t) => {
      const db = await startCluster()
      clusters.push(db)
      await f.installInserter(db)
      await f.createItemsTable(db, 'slow_items')
      const rt = await f.startRealtide(db, { env })
      deployments.push(rt)
      const hb = []
      const reader = f.anonClient(rt.endpoint, 'paused-reader', {
        realtime: { heartbeatCallback: (status) => hb.push({ status, at: Date.now() }) },
      })
      const watcher = f.anonClient(rt.endpoint, 'watcher')
      const subR = await f.subscribeRows(reader, 'slow_items')
      const subW = await f.subscribeRows(watcher, 'slow_items')
      const ctx = () =>
        [
          f.connectionSummary(reader),
          f.connectionSummary(watcher),
          `reader heartbeats: ${JSON.stringify(hb.map((x) => x.status))}`,
          `reader system: ${JSON.stringify(subR.system.map(({ at, ...p }) => p))}`,
          rt.output(),
          h.dumpFrames([reader]),
        ].join('\n')

      await db.sql(`insert into public.slow_items (pad) values ('before')`)
      await h.waitFor(() => subR.tracker.count >= 1 && subW.tracker.count >= 1, 'a row before the pause', { clients: [reader, watcher] })

      // Align with the heartbeat cycle (see the header), then stop reading.
      // (sendHeartbeat with one still unanswered would count as a heartbeat timeout.)
      const phx = reader.realtime.socketAdapter.getSocket()
      await h.waitFor(() => !phx.pendingHeartbeatRef, 'no heartbeat in flight', { clients: [reader] })
      const n0 = hb.length
      reader.realtime.sendHeartbeat()
      await h.waitFor(() => hb.slice(n0).some((x) => x.status === 'ok'), 'a heartbeat reply before the pause', { clients: [reader] })
      const ws = f.wsOf(reader)
      ws.pause()
      const pausedAt = Date.now()
      const atPause = subR.tracker.count

      // 40,000 rows in 500-row transactions over ~16 s.
      for (let i = 0; i < ROWS / BATCH; i++) {
        await db.sql(`insert into public.slow_items (pad) select repeat('x', ${PAD}) from generate_series(1, ${BATCH})`)
        await h.sleep(200)
      }
      const expectedDuring = await f.committedSeqs(db, 'slow_items')
      // The watcher is not held up by the paused reader.
      await f.settle(subW.tracker, expectedDuring.length, { timeoutMs: Math.max(1000, pausedAt + PAUSE_MS - Date.now() - 500), idleMs: 20000, graceMs: 0 })
      const watcherDuring = subW.tracker.unique
      await h.sleep(Math.max(0, pausedAt + PAUSE_MS - Date.now()))
      t.diagnostic(
        `paused ${((Date.now() - pausedAt) / 1000).toFixed(1)} s; reader got ${subR.tracker.count - atPause} rows while paused; ` +
          `watcher had ${watcherDuring}/${expectedDuring.length} before the resume; ${kernelQueued(rt.port)}`
      )
      ws.resume()
      const resumedAt = Date.now()

      await db.sql(`insert into public.slow_items (pad) values ('after')`)
      const expected = await f.committedSeqs(db, 'slow_items')
      const complete = await f.settle(subR.tracker, expected.length, { timeoutMs: 120000, idleMs: 20000 })
      await f.settle(subW.tracker, expected.length, { timeoutMs: 10000 })
      t.diagnostic(
        `reader ${complete ? 'complete' : 'INCOMPLETE'} ${((Date.now() - resumedAt) / 1000).toFixed(1)} s after the resume; ` +
          `${f.connectionSummary(reader)}, joins ${f.subscribedCount(subR)}; heartbeat timeouts ${hb.filter((x) => x.status === 'timeout').length}`
      )
      f.assertExact(subR.tracker, expected, ctx)
      f.assertExact(subW.tracker, expected, ctx)
      assert.equal(watcherDuring, expectedDuring.length, `the watcher got every row while the reader was paused\n${ctx()}`)
      assert.equal(watcher.log.urls.length, 1, `the watcher was never disconnected\n${ctx()}`)
      if (cut) {
        assert.ok(reader.log.frames.some((fr) => fr.dir === 'CLOSE'), `the stalled reader was disconnected\n${ctx()}`)
        assert.ok(f.subscribedCount(subR) >= 2, `the stalled reader rejoined\n${ctx()}`)
      } else {
        assert.equal(reader.log.urls.length, 1, `the paused reader was not disconnected within the stall timeout\n${ctx()}`)
      }
      assert.equal(subR.ch.state, 'joined')
    })
  }
})

// Each batch of change frames ends with a ping that acknowledges it. A reader that pauses
// while rows trickle in one per transaction finds many small batches, each with its ping,
// waiting; it must read them all and keep its socket. (The Node `ws` client terminates a
// connection that has 60 answers to pings not yet flushed, its `maxPendingAutoPongs`:
// realtide keeps at most 32 pings in flight, which this backlog reaches.)
describe('a subscriber that pauses while rows trickle in one per transaction', () => {
  it('reads the backlog of small batches without being cut by its own client', { timeout: 60000 }, async (t) => {
    const db = await startCluster()
    clusters.push(db)
    await f.installInserter(db)
    await f.createItemsTable(db, 'trickle_items')
    const rt = await f.startRealtide(db)
    deployments.push(rt)
    const reader = f.anonClient(rt.endpoint, 'trickle-reader')
    const subR = await f.subscribeRows(reader, 'trickle_items')
    const ctx = () => [f.connectionSummary(reader), rt.output(), h.dumpFrames([reader])].join('\n')
    let pings = 0
    reader.log.onPing = () => pings++
    const ws = f.wsOf(reader)
    ws.pause()
    // 150 rows, each its own transaction flushed at commit (the test cluster runs with
    // synchronous_commit=off, which would group them), so each is written as its own batch.
    for (let i = 0; i < 150; i++) {
      await db.sql(`set synchronous_commit = on; insert into public.trickle_items (owner) values (null)`)
      await h.sleep(5)
    }
    await h.sleep(500)
    ws.resume()
    await db.sql(`insert into public.trickle_items (owner) values (null)`)
    const expected = await f.committedSeqs(db, 'trickle_items')
    await f.settle(subR.tracker, expected.length, { timeoutMs: 20000, idleMs: 10000 })
    t.diagnostic(`${expected.length} rows, ${pings} pings answered; ${f.connectionSummary(reader)}`)
    assert.equal(reader.log.urls.length, 1, `the reader kept its socket\n${ctx()}`)
    assert.ok(!reader.log.frames.some((fr) => fr.dir === 'CLOSE'), `the reader's socket was never closed\n${ctx()}`)
    f.assertExact(subR.tracker, expected, ctx)
  })
})
