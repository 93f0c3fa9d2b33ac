// What the load generator speaks to each implementation, over the same raw `ws` client, so the client
// side costs the same for every server: fastify-drizzle's protocol (also spoken by the bare baseline),
// Socket.IO 4 (Engine.IO v4 + Socket.IO v5 packets, WebSocket transport only) and @hapi/nes (v2).
import { REQUEST_DATA, TOPIC } from './common.js'

const DATA = JSON.stringify(REQUEST_DATA)

function envelope (id) {
  return '{"resource":"bench","action":"echo","data":' + DATA + ',"request_id":' + id + '}'
}

function intAfter (str, marker) {
  const at = str.indexOf(marker)
  if (at === -1) return -1
  let n = 0
  for (let i = at + marker.length; i < str.length; i++) {
    const c = str.charCodeAt(i)
    if (c < 48 || c > 57) break
    n = n * 10 + (c - 48)
  }
  return n
}

const SEQ = Buffer.from('"seq":')

/** The `seq` of a publication frame, read from the bytes (no string made per frame). */
export function seqOf (buf) {
  const at = buf.indexOf(SEQ)
  if (at === -1) return -1
  let n = 0
  for (let i = at + SEQ.length; i < buf.length; i++) {
    const c = buf[i]
    if (c < 48 || c > 57) break
    n = n * 10 + (c - 48)
  }
  return n
}

const drizzleProtocol = {
  path: '/ws',
  handshake (_ws) { return Promise.resolve() },
  request: envelope,
  subscribe (id) { return '{"resource":"$topic","action":"subscribe","data":{"topic":"' + TOPIC + '"},"request_id":' + id + '}' },
  /** Request id of a reply, -1 for anything else. */
  replyId (str) { return str.startsWith('{"topic"') ? -1 : intAfter(str, '"request_id":') },
  isError (str) { return !str.startsWith('{"data"') },
  isPublication (buf) { return buf[2] === 0x74 /* {"t */ },
  control (_ws, _str) { return false }
}

const socketIoProtocol = {
  path: '/socket.io/?EIO=4&transport=websocket',
  handshake (ws) {
    return new Promise((resolve, reject) => {
      const onMessage = (buf) => {
        const str = buf.toString()
        if (str[0] === '0') ws.send('40')
        else if (str.startsWith('40')) { ws.off('message', onMessage); resolve() } else if (str.startsWith('44')) reject(new Error('socket.io connect refused: ' + str))
      }
      ws.on('message', onMessage)
    })
  },
  request (id) { return '42' + id + '["req",' + envelope(id) + ']' },
  subscribe (id) { return '42' + id + '["sub","' + TOPIC + '"]' },
  replyId (str) { return str.startsWith('43') ? intAfter(str, '43') : -1 },
  isError (_str) { return false },
  isPublication (buf) { return buf[0] === 0x34 && buf[1] === 0x32 /* 42 */ },
  control (ws, str) {
    if (str === '2') { ws.send('3'); return true }
    return false
  }
}

const nesProtocol = {
  path: '/',
  handshake (ws) {
    return new Promise((resolve, reject) => {
      const onMessage = (buf) => {
        const str = buf.toString()
        if (!str.startsWith('{"type":"hello"')) return
        ws.off('message', onMessage)
        if (str.includes('"error"')) reject(new Error('nes hello refused: ' + str))
        else resolve()
      }
      ws.on('message', onMessage)
      ws.send('{"type":"hello","id":1,"version":"2"}')
    })
  },
  // Ids start above the hello's.
  request (id) { return '{"type":"request","id":' + (id + 1) + ',"method":"POST","path":"/bench/echo","payload":' + envelope(id) + '}' },
  subscribe (id) { return '{"type":"sub","id":' + (id + 1) + ',"path":"/' + TOPIC + '"}' },
  replyId (str) {
    if (!str.startsWith('{"type":"request"') && !str.startsWith('{"type":"sub"')) return -1
    return intAfter(str, '"id":') - 1
  },
  isError (str) { return str.includes('"error"') },
  isPublication (buf) { return buf[9] === 0x70 /* {"type":"p */ && buf[10] === 0x75 },
  control (ws, str) {
    if (str.startsWith('{"type":"ping"')) { ws.send('{"type":"ping","id":' + (1e9 + Math.floor(Math.random() * 1e6)) + '}'); return true }
    return false
  }
}

export const protocols = {
  drizzle: drizzleProtocol,
  'drizzle+metrics': drizzleProtocol,
  'drizzle+otel-off': drizzleProtocol,
  'drizzle+notrace': drizzleProtocol,
  'drizzle+exp': drizzleProtocol,
  // The same server with topic history on (issue #15): same frames, plus an offset.
  'drizzle-history': drizzleProtocol,
  bare: drizzleProtocol,
  // Frames by hand on the net.Socket, round trips only (bench/server.js): the floor under bare.
  floor: drizzleProtocol,
  socketio: socketIoProtocol,
  nes: nesProtocol
}
