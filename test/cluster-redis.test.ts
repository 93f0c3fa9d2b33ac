import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import drizzle from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { connect, listen, type TestClient } from './helpers/client.js'
import { python, pythonMissing } from './helpers/python.js'
import { REDIS_URL, canReach, freePort, killServer, startRedisServer, waitFor } from './helpers/redis.js'

// Two Fastify instances on one real Redis, with clients over real sockets: what users run in production.

const redisUp = await canReach(REDIS_URL)
if (!redisUp && process.env.CI !== undefined) throw new Error(`Redis is not reachable at ${REDIS_URL} in CI`)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: CROSS-PROCESS REDIS TESTS SKIPPED`
if (skip !== false) console.warn(`\n*** ${skip} ***\n`)
const run = promisify(execFile)
const WORKER = fileURLToPath(new URL('./fixtures/redis-standalone-publisher.ts', import.meta.url))

async function instance (t: TestContext, prefix: string, url = REDIS_URL): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify()
  await app.register(drizzle, { broker: redisBroker({ url, prefix }), heartbeatInterval: 0, closeGracePeriod: 100 })
  app.drizzle.resource('todos', {
    watch: async (_m, ctx) => { await ctx.subscribe('todos'); return true },
    create: async (message, ctx) => { await ctx.publish('todos', message.data, { event: 'created' }); return message.data }
  })
  app.drizzle.topic('rooms/:id')
  t.after(() => app.close())
  return { app, url: await listen(app) }
}

async function cluster (t: TestContext, prefix = `test:${randomUUID()}:`) {
  const a = await instance(t, prefix)
  const b = await instance(t, prefix)
  const clients = {
    a1: await connect(t, a.url),
    a2: await connect(t, a.url),
    b1: await connect(t, b.url),
    b2: await connect(t, b.url)
  }
  for (const c of [clients.a1, clients.b1]) await c.request('todos', 'watch')
  for (const c of [clients.a2, clients.b2]) await c.request('$topic', 'subscribe', { topic: 'rooms/1' })
  // A subscription reaches Redis asynchronously; wait until both instances listen on both channels.
  const probe = new Redis(REDIS_URL)
  t.after(() => probe.disconnect())
  await waitFor('both instances subscribed', async () => {
    const counts = await probe.pubsub('NUMSUB', `${prefix}todos`, `${prefix}rooms/1`, `${prefix}__all__`) as Array<string | number>
    return counts[1] === 2 && counts[3] === 2 && counts[5] === 2
  })
  return { prefix, a, b, clients, probe }
}

/** Waits for the marker on every client, then checks what each got on `topic`, in order. */
async function settle (clients: TestClient[], marker: string): Promise<void> {
  for (const c of clients) await c.waitFor(f => f.topic === '__all__' && f.data === marker, 3000)
}

test('a publication from either instance reaches the subscribers of both, exactly once, event included', { skip }, async t => {
  const { a, b, clients } = await cluster(t)
  await a.app.drizzle.publish('todos', { from: 'a' }, { event: 'created' })
  await clients.b2.request('todos', 'create', { from: 'b-handler' })
  await b.app.drizzle.publish('rooms/1', { from: 'b' })
  await a.app.drizzle.publish('__all__', 'marker-1')
  const all = Object.values(clients)
  await settle(all, 'marker-1')
  assert.deepEqual(clients.a1.publications('todos'), [
    { topic: 'todos', data: { from: 'a' }, event: 'created' },
    { topic: 'todos', data: { from: 'b-handler' }, event: 'created' }
  ])
  assert.deepEqual(clients.b1.publications('todos'), clients.a1.publications('todos'))
  for (const c of [clients.a2, clients.b2]) {
    assert.deepEqual(c.publications('rooms/1'), [{ topic: 'rooms/1', data: { from: 'b' } }])
    assert.equal(c.publications('todos').length, 0)
  }
  for (const c of all) assert.equal(c.publications('__all__').length, 1, '__all__ spans instances, once each')
})

test('redis-cli and a Python job publish to every instance', { skip }, async t => {
  const { prefix, clients } = await cluster(t)
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
  await run('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'PUBLISH', `${prefix}__all__`, '{"data":"marker"}'], { timeout: 5000 })
  await settle(Object.values(clients), 'marker')
  const expected = [{ topic: 'todos', data: { id: 1 }, event: 'from-cli' }]
  if (missing === undefined) expected.push({ topic: 'todos', data: { id: 2, py: true } } as any)
  assert.deepEqual(clients.a1.publications('todos'), expected)
  assert.deepEqual(clients.b1.publications('todos'), expected)
  if (missing === undefined) {
    for (const c of [clients.a2, clients.b2]) assert.deepEqual(c.publications('rooms/1'), [{ topic: 'rooms/1', data: [1, 2], event: 'py' }])
  }
})

test('garbage published on the channels harms nobody', { skip }, async t => {
  const { prefix, a, clients, probe } = await cluster(t)
  const garbage = ['not json', '[]', '{"nodata":1}', '{"data":1,"event":5}', 'x'.repeat(2 * 1024 * 1024), '{"__proto__":{"polluted":1},"data":"stripped"}']
  for (const g of garbage) await probe.publish(`${prefix}todos`, g)
  await probe.publish(`${prefix}todos`, Buffer.from([0xff, 0xfe, 0xfd]))
  await probe.publish(`${prefix}__all__`, '{"data":"marker"}')
  await settle(Object.values(clients), 'marker')
  for (const c of [clients.a1, clients.b1]) {
    assert.deepEqual(c.publications('todos'), [{ topic: 'todos', data: 'stripped' }], 'only the one valid message, __proto__ stripped')
  }
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
  assert.equal((await clients.a1.request('todos', 'create', { still: 'serving' })).data.still, 'serving')
  await a.app.drizzle.publish('todos', 'after garbage')
  await clients.b1.waitFor(f => f.data === 'after garbage')
})

test('no message of one app reaches another app that uses a different prefix', { skip }, async t => {
  const one = await cluster(t)
  const other = await cluster(t)
  await one.a.app.drizzle.publish(['todos', '__all__'], 'for app one')
  await other.a.app.drizzle.publish('__all__', 'marker-other')
  await settle(Object.values(other.clients), 'marker-other')
  await one.clients.b1.waitFor(f => f.data === 'for app one')
  for (const c of Object.values(other.clients)) assert.equal(c.frames.filter(f => f.data === 'for app one').length, 0)
})

test('each instance subscribes Redis only to topics with local subscribers', { skip }, async t => {
  const prefix = `test:${randomUUID()}:`
  const { app, url } = await instance(t, prefix)
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
  const { prefix, clients } = await cluster(t)
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
  const a = await instance(t, prefix, redisUrl)
  const b = await instance(t, prefix, redisUrl)
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
  await a.app.drizzle.publish('todos', 'after restart')
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
