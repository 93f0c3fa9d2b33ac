// Soak server child: `node --expose-gc bench/soak-server.js '<json options>'` (bench/soak.js starts it).
// fastify-drizzle built as bench/run.js builds it (node_modules/.cache/fastify-drizzle-bench), the
// declared topic `room/:id` with history and presence, `identify` reading the `user` query parameter.
// Listens on 127.0.0.1 (an ephemeral port) and answers over IPC: mem, gcmem, positions, and, for the
// single-instance memory broker, the paced publisher (publish-start / publish-stop) running in here.
import { BENCH_BUILD, ipcServer, now } from './common.js'
import { pacedPublisher, TOPIC_PATTERN, topicName } from './soak-common.js'

const options = JSON.parse(process.argv[2])
const { default: Fastify } = await import('fastify')
const { default: drizzle } = await import(`${BENCH_BUILD}/index.js`)
let broker
if (options.broker === 'redis') {
  const { redisBroker } = await import(`${BENCH_BUILD}/brokers/redis.js`)
  broker = redisBroker({ url: options.url, prefix: options.prefix })
}
// Warnings and errors (a broker timeout behind an INTERNAL_ERROR reply, a slow consumer closed) go to
// bench/results/soak-<stamp>-server<i>.log: the soak's clients only see "Unknown error".
const app = Fastify({ logger: { level: 'warn', file: options.log } })
await app.register(drizzle, {
  broker,
  // The bench's usual lift (bench/server.js), and room for every connection of the run on one instance.
  rateLimit: false,
  maxConnections: options.conns + 100,
  identify: (request) => request.query.user ?? null
})
app.drizzle.topic(TOPIC_PATTERN, {
  history: { size: options.historySize, ttl: options.historyTtl },
  presence: options.presenceEvents ? true : { events: false }
})
await app.listen({ host: '127.0.0.1', port: 0 })

let publisher

ipcServer({
  /** Memory and CPU as they are (no GC forced): the RSS series. */
  mem () {
    const m = process.memoryUsage()
    return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers, connections: app.websocketServer.clients.size, cpu: process.cpuUsage(), t: now() }
  },
  /** Heap after two full GCs: the leak signal beside RSS (costs a pause, so taken once a minute). */
  gcmem () {
    const t0 = now()
    globalThis.gc()
    globalThis.gc()
    const m = process.memoryUsage()
    return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, gcMs: now() - t0 }
  },
  /** The last assigned offset of every topic, from the broker (what every subscription must reach). */
  async positions ({ topics }) {
    const out = []
    for (let i = 0; i < topics; i += 100) {
      const batch = []
      for (let j = i; j < Math.min(topics, i + 100); j++) batch.push(app.drizzle.position(topicName(j)))
      for (const p of await Promise.all(batch)) out.push(p.offset)
    }
    return out
  },
  'publish-start' ({ rate, topics }) {
    publisher = pacedPublisher({ rate, topics, publish: (topic, data) => app.drizzle.publish(topic, data) })
    return publisher.start()
  },
  'publish-stats' () { return publisher.stats() },
  'publish-stop' () { return publisher.stop() },
  async exit () {
    await Promise.race([app.close(), new Promise(resolve => setTimeout(resolve, 3000))])
    setImmediate(() => process.exit(0))
    return {}
  }
})
process.send({ ready: true, port: app.server.address().port, pid: process.pid })
