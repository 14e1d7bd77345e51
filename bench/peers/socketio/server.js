'use strict'
// The Socket.IO 4 peer of the benchmarks: what a Node app reaches for to relay messages to
// rooms. WebSocket transport only (the load generator speaks Engine.IO v4 over WebSocket).
//   join <room>            (acknowledged)   -> socket.join(room)
//   pub  <room> <payload>                   -> socket.to(room).emit('m', payload)  (not to the sender)
// Prints "socketio listening on 127.0.0.1:<port>" once ready.
const http = require('node:http')
const { Server } = require('socket.io')

const port = Number(process.env.PORT || 0)
const httpServer = http.createServer()
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
})

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room)
    if (typeof ack === 'function') ack(true)
  })
  socket.on('pub', (room, payload) => {
    socket.to(room).emit('m', payload)
  })
})

httpServer.listen(port, '127.0.0.1', () => {
  console.log(`socketio listening on 127.0.0.1:${httpServer.address().port}`)
})
process.on('SIGTERM', () => process.exit(0))
