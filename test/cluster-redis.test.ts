import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import drizzle from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { connect } from './helpers/client.js'
import { cluster, clusterSuite, instance, settle, type Backend } from './helpers/cluster.js'
import { python, pythonMissing } from './helpers/python.js'
import { REDIS_URL, canReach, freePort, killServer, startRedisServer, waitFor } from './helpers/redis.js'

// Two Fastify instances on one real Redis, with clients over real sockets: what users run in production.

const redisUp = await canReach(REDIS_URL)
if (!redisUp && process.env.CI !== undefined) throw new Error(`Redis is not reachable at ${REDIS_URL} in CI`)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: CROSS-PROCESS REDIS TESTS SKIPPED`
if (skip !== false) console.warn(`\n*** ${skip} ***\n`)
const run = promisify(execFile)
const WORKER = fileURLToPath(new URL('./fixtures/redis-standalone-publisher.ts', import.meta.url))

const publisher = redisUp ? new Redis(REDIS_URL) : undefined
test.after(() => publisher?.disconnect())

const backend: Backend = {
  skip,
  namespace: () => `test:${randomUUID()}:`,
  broker: prefix => redisBroker({ url: REDIS_URL, prefix }),
  publishRaw: async (prefix, topic, body) => { await publisher?.publish(prefix + topic, body) }
}

clusterSuite('redis', backend)

test('redis-cli and a Python job publish to every instance', { skip }, async t => {
  const { namespace: prefix, clients } = await cluster(t, backend)
  await run('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'PUBLISH', `${prefix}todos`, '{"data":{"id":1},"event":"from-cli"}'], { timeout: 5000 })
  const missing = await pythonMissing('redis')
  if (missing === undefined) {
    await python([
      'import json, sys, redis',
      'r = redis.Redis(host="127.0.0.1", port=6379)',
      'r.publish(sys.argv[1] + "todos", json.dumps({"data": {"id": 2, "py": True}}))',
      'r.publish(sys.argv[1] + "rooms/1", json.dumps({"data": [1, 2], "event": "py"}))'
    ].join('\n'), [prefix])
  }
  await settle(backend, prefix, Object.values(clients))
  // An order Redis does promise: the Python job starts after redis-cli's PUBLISH returned, and one
  // Redis server pushes messages to each instance's subscriber connection in the order it ran them.
  const expected = [{ topic: 'todos', data: { id: 1 }, event: 'from-cli' }]
  if (missing === undefined) expected.push({ topic: 'todos', data: { id: 2, py: true } } as any)
  assert.deepEqual(clients.a1.publications('todos'), expected)
  assert.deepEqual(clients.b1.publications('todos'), expected)
  if (missing === undefined) {
    for (const c of [clients.a2, clients.b2]) assert.deepEqual(c.publications('rooms/1'), [{ topic: 'rooms/1', data: [1, 2], event: 'py' }])
  }
})

test('each instance subscribes Redis only to topics with local subscribers', { skip }, async t => {
  const prefix = `test:${randomUUID()}:`
  const { app, url } = await instance(t, redisBroker({ url: REDIS_URL, prefix }))
  const probe = new Redis(REDIS_URL)
  t.after(() => probe.disconnect())
  const channels = async () => (await probe.pubsub('CHANNELS', `${prefix}*`) as string[]).sort()
  await waitFor('__all__ always subscribed', async () => (await channels()).length === 1)
  assert.deepEqual(await channels(), [`${prefix}__all__`])
  const c1 = await connect(t, url)
  const c2 = await connect(t, url)
  await c1.request('$topic', 'subscribe', { topic: 'rooms/7' })
  await c2.request('$topic', 'subscribe', { topic: 'rooms/7' })
  await waitFor('rooms/7 subscribed', async () => (await channels()).includes(`${prefix}rooms/7`))
  assert.equal(app.drizzle.subscriberCount('rooms/7'), 2)
  c1.terminate()
  await c1.closed
  await new Promise(resolve => setTimeout(resolve, 100))
  assert.ok((await channels()).includes(`${prefix}rooms/7`), 'still one local subscriber')
  await c2.request('$topic', 'unsubscribe', { topic: 'rooms/7' })
  await waitFor('rooms/7 unsubscribed when its last local subscriber left', async () => !(await channels()).includes(`${prefix}rooms/7`))
})

test('a worker with no Fastify publishes through a standalone broker in a child process', { skip }, async t => {
  const { namespace: prefix, clients } = await cluster(t, backend)
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
    env: { ...process.env, REDIS_URL, PREFIX: prefix },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  const [code] = await once(child, 'exit')
  clearTimeout(timer)
  assert.equal(code, 0, 'the worker exits on its own')
  for (const c of [clients.a1, clients.b1]) {
    assert.deepEqual(await c.waitFor(f => f.topic === 'todos'), { topic: 'todos', data: { from: 'worker' }, event: 'created' })
  }
})

test('Redis down: local traffic goes on, publish rejects with a coded error; after a restart subscriptions are renewed', { skip, timeout: 30_000 }, async t => {
  const port = await freePort()
  let server = await startRedisServer(port)
  t.after(() => killServer(server))
  const redisUrl = `redis://127.0.0.1:${port}`
  const prefix = 'restart:'
  const a = await instance(t, redisBroker({ url: redisUrl, prefix }))
  const b = await instance(t, redisBroker({ url: redisUrl, prefix }))
  const ca = await connect(t, a.url)
  const cb = await connect(t, b.url)
  await ca.request('todos', 'watch')
  await cb.request('todos', 'watch')
  const probe = () => {
    const client = new Redis(redisUrl, { retryStrategy: () => null, maxRetriesPerRequest: 0 })
    client.on('error', () => {})
    return client
  }
  let p = probe()
  await waitFor('both subscribed', async () => ((await p.pubsub('NUMSUB', `${prefix}todos`)) as Array<string | number>)[1] === 2)
  p.disconnect()

  await killServer(server)
  const started = Date.now()
  await assert.rejects(a.app.drizzle.publish('todos', 'during outage'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  assert.ok(Date.now() - started < 2500, 'publish fails fast instead of queueing')
  assert.deepEqual(await ca.waitFor(f => f.data === 'during outage'), { topic: 'todos', data: 'during outage' }, 'local delivery went on')
  // A handler whose publish fails gets the generic 500: the broker's reason names internal addresses.
  assert.equal((await ca.request('todos', 'create', { x: 1 })).code, 'INTERNAL_ERROR')

  server = await startRedisServer(port)
  p = probe()
  t.after(() => p.disconnect())
  await waitFor('subscriptions renewed on the restarted server', async () => {
    const counts = await p.pubsub('NUMSUB', `${prefix}todos`, `${prefix}__all__`).catch(() => []) as Array<string | number>
    return counts[1] === 2 && counts[3] === 2
  }, 10_000)
  // The publishing connection reconnects on its own backoff: until then publish keeps failing fast.
  await waitFor('publishing works again', () => a.app.drizzle.publish('todos', 'after restart').then(() => true, () => false), 10_000)
  assert.deepEqual(await cb.waitFor(f => f.data === 'after restart'), { topic: 'todos', data: 'after restart' })
  assert.equal(cb.frames.filter(f => f.data === 'during outage').length, 0, 'Redis pub/sub is at-most-once: nothing replays')
})

test('fastify.close() closes the broker the app was given, but not an ioredis client the user passed in', { skip }, async t => {
  const client = new Redis(REDIS_URL)
  t.after(() => client.disconnect())
  const app = Fastify()
  await app.register(drizzle, { broker: redisBroker({ client, prefix: `test:${randomUUID()}:` }), heartbeatInterval: 0 })
  await app.ready()
  await app.close()
  assert.equal(client.status, 'ready')
  assert.equal(await client.ping(), 'PONG')
})
