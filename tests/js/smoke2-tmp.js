const { createClient } = require('@supabase/supabase-js')
const { signToken } = require('/work/main/tests/js/lib/helpers.js')
const { execSync } = require('child_process')
const secret = process.env.JWT_SECRET
const tok = signToken({ role: 'anon', exp: Math.floor(Date.now()/1000)+3600 }, secret)
const mk = (port) => createClient(`http://127.0.0.1:${port}`, tok, { realtime: { transport: require('ws'), params: { apikey: tok } } })
async function sub(ch) { return new Promise((res, rej) => ch.subscribe((s, e) => s === 'SUBSCRIBED' ? res() : (s !== 'CLOSED' && rej(new Error(s + ' ' + e))))) }
;(async () => {
  const got = {}
  for (const port of [15001, 15002, 15003]) {
    got[port] = []
    const ch = mk(port).channel('pc' + port).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'items' }, (p) => got[port].push(p.new.seq))
    await sub(ch)
  }
  await new Promise(r => setTimeout(r, 500))
  execSync(`psql "${process.env.DB_URL}" -qc "insert into items(seq) select g from generate_series(1,50) g"`)
  for (let i = 51; i <= 100; i++) execSync(`psql "${process.env.DB_URL}" -qc "insert into items(seq) values (${i})"`)
  await new Promise(r => setTimeout(r, 1500))
  for (const port of Object.keys(got)) console.log(port, got[port].length, got[port].every((v, i) => v === i + 1))
  process.exit(0)
})().catch(e => { console.error(e); process.exit(1) })
