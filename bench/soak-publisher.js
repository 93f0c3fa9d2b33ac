// Soak publisher child (Redis broker): `node bench/soak-publisher.js '<json options>'`. A process with
// no sockets and no Fastify that publishes into the history topics the way an outside job does:
// `FCALL drizzle_publish 1 <prefix><topic> '{"data":...}' <size> <ttl>` (DESIGN §9), paced by
// soak-common.js's pacedPublisher. Answers publish-start, publish-stats, publish-stop, exit over IPC.
import { Redis } from 'ioredis'
import { BENCH_BUILD, ipcServer } from './common.js'
import { pacedPublisher, topicName } from './soak-common.js'

const options = JSON.parse(process.argv[2])
const { LIBRARY } = await import(`${BENCH_BUILD}/brokers/redis-history.js`)
const redis = new Redis(options.url, { enableAutoPipelining: true })
await redis.call('FUNCTION', 'LOAD', 'REPLACE', LIBRARY)
const size = String(options.historySize)
const ttl = String(options.historyTtl)
let publisher

ipcServer({
  'publish-start' ({ rate, topics }) {
    publisher = pacedPublisher({
      rate,
      topics,
      publish: (topic, data) => redis.call('FCALL', 'drizzle_publish', '1', options.prefix + topic, JSON.stringify({ data }), size, ttl)
    })
    return publisher.start()
  },
  'publish-stats' () { return publisher.stats() },
  'publish-stop' () { return publisher.stop() },
  /** The last assigned offset of every topic, straight from Redis (what every subscription must reach). */
  async positions ({ topics }) {
    const replies = await Promise.all(Array.from({ length: topics }, (_, i) =>
      redis.call('FCALL', 'drizzle_position', '1', options.prefix + topicName(i), size, ttl)))
    return replies.map(([offset]) => Number(offset))
  },
  exit () { redis.disconnect(); setImmediate(() => process.exit(0)); return {} }
})
process.send({ ready: true })
