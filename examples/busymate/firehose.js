// Busymate firehose listener: joins the private channel ws:<workspace_id> as a user and prints
// every entry change (sent by the database trigger through realtime.broadcast_changes) as one
// JSON line. Also prints one line with the subscription status.
//
//   REALTIDE_URL=http://127.0.0.1:4000 ANON_KEY=... USER_TOKEN=... WORKSPACE_ID=... \
//     node examples/busymate/firehose.js
//
// Needs @supabase/supabase-js and ws (Node 20 has no global WebSocket for supabase-js).
'use strict'
const { createClient } = require('@supabase/supabase-js')

const { REALTIDE_URL, ANON_KEY, USER_TOKEN, WORKSPACE_ID } = process.env
for (const [name, value] of Object.entries({ REALTIDE_URL, ANON_KEY, USER_TOKEN, WORKSPACE_ID })) {
  if (!value) {
    console.error(`firehose.js: set ${name}`)
    process.exit(2)
  }
}

const supabase = createClient(REALTIDE_URL, ANON_KEY, {
  auth: { persistSession: false, autoRefreshToken: false },
  // The user's JWT: private channels are authorized with it (RLS on realtime.messages). An app
  // signed in with supabase-js auth gets this from its session; here it comes from outside.
  accessToken: async () => USER_TOKEN,
  realtime: { transport: require('ws'), vsn: process.env.REALTIDE_VSN || '2.0.0' },
})

async function main() {
  // Make the join carry the user's token (without it the first join may go out with the
  // anon key, before the async token callback resolved).
  await supabase.realtime.setAuth()
  const channel = supabase.channel(`ws:${WORKSPACE_ID}`, { config: { private: true } })
  channel
    .on('broadcast', { event: '*' }, (message) => {
      const { operation, table, record, old_record } = message.payload
      console.log(JSON.stringify({ event: message.event, operation, table, record, old_record }))
    })
    .subscribe((status, err) => {
      console.log(JSON.stringify({ status, error: err ? err.message : undefined }))
      if (status === 'CHANNEL_ERROR') {
        process.exitCode = 1
        supabase.removeAllChannels()
      }
    })
}

main()

process.on('SIGTERM', async () => {
  await supabase.removeAllChannels()
  process.exit(0)
})
