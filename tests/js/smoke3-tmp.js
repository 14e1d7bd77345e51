const { createClient } = require('@supabase/supabase-js')
const { signToken } = require('/work/main/tests/js/lib/helpers.js')
const { execSync } = require('child_process')
const secret = process.env.JWT_SECRET
const tok = signToken({ role: 'anon', exp: Math.floor(Date.now()/1000)+3600 }, secret)
const mk = (port) => createClient(`http://127.0.0.1:${port}`, tok, { realtime: { transport: require('ws'), params: { apikey: tok } } })
async function sub(ch) { return new Promise((res, rej) => ch.subscribe((s, e) => s === 'SUBSCRIBED' ? res() : (s !== 'CLOSED' && rej(new Error(s + ' ' + e))))) }
;(async () => {
  execSync(`psql "${process.env.DB_URL}" -qc "truncate items"`)
  const got = {}
  for (const port of [15001, 15003]) {
    got[port] = []
    const ch = mk(port).channel('pk' + port).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'items' }, (p) => got[port].push(p.new.seq))
    await sub(ch)
  }
  const t0 = Date.now()
  for (let i = 1; i <= 300; i++) {
    execSync(`psql "${process.env.DB_URL}" -qc "insert into items(seq) values (${i})"`)
    if (i === 100) { execSync(`kill -9 ${process.env.KILLPID}`); console.log('killed at', Date.now() - t0) }
  }
  await new Promise(r => setTimeout(r, 8000))
  for (const port of Object.keys(got)) {
    const a = got[port]; const set = new Set(a)
    console.log(port, a.length, 'unique', set.size, 'inorder', a.every((v, i) => v === i + 1))
  }
  process.exit(0)
})().catch(e => { console.error(e); process.exit(1) })
