// Publisher child for the cross-process scenario: a process with no sockets that publishes into
// Redis. For fastify-drizzle and the bare relay it PUBLISHes the documented drizzle wire format
// (`{"data": ...}` on `<prefix>bench`) with a plain ioredis client, as a cron job or a worker would;
// for Socket.IO it is a Socket.IO server with @socket.io/redis-adapter and no clients, emitting to the
// room (the adapter's own msgpack format; there is no documented plain format to publish).
import { Redis } from 'ioredis'
import { ipcServer, now, publication, TOPIC } from './common.js'

const impl = process.argv[2]
const options = JSON.parse(process.argv[3])

let publish
let close
if (impl === 'socketio') {
  const { Server } = await import('socket.io')
  const { createAdapter } = await import('@socket.io/redis-adapter')
  const pub = new Redis(options.redis.url)
  const sub = pub.duplicate()
  const io = new Server({ serveClient: false })
  io.adapter(createAdapter(pub, sub, { key: options.redis.prefix }))
  await new Promise(resolve => setTimeout(resolve, 200)) // the adapter's psubscribe
  publish = (data) => { io.to(TOPIC).emit('pub', data) }
  // io.close() would fail: this server was never attached to an HTTP server.
  close = () => { pub.disconnect(); sub.disconnect() }
} else if (impl === 'drizzle-history') {
  // The outside publishers' way to a history topic: FCALL drizzle_publish, same message as PUBLISH.
  const { LIBRARY } = await import('../node_modules/.cache/fastify-drizzle-bench/brokers/redis-history.js')
  const redis = new Redis(options.redis.url)
  await redis.call('FUNCTION', 'LOAD', 'REPLACE', LIBRARY)
  const channel = options.redis.prefix + TOPIC
  publish = (data) => redis.call('FCALL', 'drizzle_publish', '1', channel, JSON.stringify({ data }))
  close = () => redis.disconnect()
} else {
  const redis = new Redis(options.redis.url)
  const channel = options.redis.prefix + TOPIC
  publish = (data) => redis.publish(channel, JSON.stringify({ data }))
  close = () => redis.disconnect()
}

ipcServer({
  async publish ({ from = 0, count, intervalMs = 0 }) {
    const times = []
    for (let i = 0; i < count; i++) {
      times.push(now())
      publish(publication(from + i))
      if (intervalMs > 0) await new Promise(resolve => setTimeout(resolve, intervalMs))
      else if (i % 50 === 49) await new Promise(resolve => setImmediate(resolve))
    }
    return { times }
  },
  exit () { close(); setImmediate(() => process.exit(0)); return {} }
})
process.send({ ready: true })
