// A background job with no Fastify: publishes through Redis to every instance, then exits.
//   npm run example:worker -- '{"id": 99, "title": "from the worker", "done": false}'
import { redisBroker } from '../lib/brokers/redis.js'

const data = JSON.parse(process.argv[2] ?? '{"id":0,"title":"from the worker","done":false}')
const broker = redisBroker({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' })
try {
  await broker.publish('todos', data, { event: 'created' })
  console.log('published to "todos":', JSON.stringify(data))
} finally {
  await broker.close()
}
