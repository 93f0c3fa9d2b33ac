import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type WebSocket from 'ws'
import { createError } from '@fastify/error'
import Type from 'typebox'
import { Redis } from 'ioredis'
import { Registry, register as defaultRegistry } from 'prom-client'
import Fastify, { type FastifyInstance } from 'fastify'
import drizzle, { type DrizzleOptions, type Position } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { resolveOptions } from '../lib/options.js'
import { build, connect, listen, type TestClient } from './helpers/client.js'
import { canReach, freePort, hasCommand, killServer, startRedisServer, waitFor } from './helpers/redis.js'
import { parseExposition, sample } from './helpers/scrape.js'

// Metrics (DESIGN section 12, README "Observability"): real traffic over real sockets, then the values
// Prometheus would read from a scrape of the registry.

const REDIS_URL = 'redis://127.0.0.1:6379'
const redisUp = await canReach(REDIS_URL)
const redisServer = await hasCommand('redis-server')
const skipRedis = redisUp ? false : 'Redis is not reachable on 127.0.0.1:6379'
const skipPrivateRedis = redisServer ? false : 'redis-server is not installed'

const run = promisify(execFile)
const Teapot = createError('TEAPOT', 'I am a teapot', 418)

async function scrape (registry: Registry) {
  return parseExposition(await registry.metrics())
}

/** Waits until the shared Redis reports a subscriber on the channel: the instance's broker subscribed. */
async function untilChannel (redis: Redis, channel: string): Promise<void> {
  await waitFor(`a subscriber on ${channel}`, async () => {
    const [, count] = await redis.pubsub('NUMSUB', channel) as [string, number]
    return Number(count) >= 1
  }, 10_000)
}

function pauseReading (client: TestClient): void {
  (client.ws as unknown as { _socket: { pause (): void } })._socket.pause()
}

function resources (app: FastifyInstance): void {
  app.drizzle.resource('todos', {
    get: async () => ({ ok: true }),
    crash: async () => { throw new Error('database down') },
    teapot: async () => { throw new Teapot() },
    create: {
      schema: { data: Type.Object({ title: Type.String() }) },
      handler: async (message, ctx) => { await ctx.publish('todos', message.data, { event: 'created' }); return message.data }
    },
    watch: async (_m, ctx) => { await ctx.subscribe('todos'); return true }
  })
  app.drizzle.topic('rooms/:id')
  app.drizzle.topic('lobby')
}

test('a scrape after real traffic: connections, subscriptions, actions ok and failing, publications local and from Redis, deliveries, a slow consumer', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  const registry = new Registry()
  const prefix = `test:metrics:${randomUUID()}:`
  const redis = new Redis(REDIS_URL)
  t.after(() => redis.disconnect())
  const app = await build(t, { metrics: { registry }, broker: redisBroker({ url: REDIS_URL, prefix }), maxBufferedBytes: 64 * 1024 }, resources)
  const url = await listen(app)
  const a = await connect(t, url)
  const b = await connect(t, url)

  // Actions: 2 ok, a 500, a 418 thrown by the handler, a 400 from the schema, unknown names (404) and a non-JSON frame (400).
  await a.request('todos', 'get')
  await a.request('todos', 'get')
  assert.equal((await a.request('todos', 'crash')).statusCode, 500)
  assert.equal((await a.request('todos', 'teapot')).statusCode, 418)
  assert.equal((await a.request('todos', 'create', { title: 42 })).statusCode, 400)
  assert.equal((await a.request('todos', 'nope')).code, 'ACTION_NOT_FOUND')
  assert.equal((await a.request('client-chosen-name', 'x')).code, 'RESOURCE_NOT_FOUND')
  a.send('not json')
  await a.waitFor(f => f.code === 'VALIDATION_ERROR' && f.request_id === null)
  // Subscriptions: a to `todos` (handler), b to `rooms/1` and `lobby` (two declared topics, one series).
  assert.equal((await a.request('todos', 'watch')).data, true)
  await b.request('$topic', 'subscribe', { topic: 'rooms/1' })
  await b.request('$topic', 'subscribe', { topic: 'lobby' })
  // Publications: one from an action, one from the server, one by another process through Redis.
  await b.request('todos', 'create', { title: 'milk' })
  await app.drizzle.publish('rooms/1', { n: 1 })
  await untilChannel(redis, `${prefix}todos`)
  await redis.publish(`${prefix}todos`, JSON.stringify({ data: 'from redis' }))
  await a.waitFor(f => f.topic === 'todos' && f.data === 'from redis')
  await b.waitFor(f => f.topic === 'rooms/1')

  let s = await scrape(registry)
  assert.equal(sample(s, 'drizzle_connections'), 2)
  assert.equal(sample(s, 'drizzle_subscriptions'), 3)
  assert.equal(sample(s, 'drizzle_actions_in_flight'), 0)
  assert.equal(sample(s, 'drizzle_broker_up'), 1)
  assert.equal(sample(s, 'drizzle_broker_outages_total'), 0)
  const actions = (resource: string, action: string, status: number) => sample(s, 'drizzle_actions_total', { resource, action, status: String(status) })
  assert.equal(actions('todos', 'get', 200), 2)
  assert.equal(actions('todos', 'crash', 500), 1)
  assert.equal(actions('todos', 'teapot', 418), 1)
  assert.equal(actions('todos', 'create', 400), 1)
  assert.equal(actions('todos', 'create', 200), 1)
  assert.equal(actions('todos', 'watch', 200), 1)
  assert.equal(actions('$topic', 'subscribe', 200), 2)
  // Names nobody declared never become labels: they share "(unknown)".
  assert.equal(actions('todos', '(unknown)', 404), 1)
  assert.equal(actions('(unknown)', '(unknown)', 404), 1)
  assert.equal(actions('(unknown)', '(unknown)', 400), 1)
  assert.equal(s.filter(x => x.name === 'drizzle_actions_total').length, 10, 'no other series')
  assert.equal(s.some(x => Object.values(x.labels).includes('client-chosen-name') || Object.values(x.labels).includes('nope')), false)
  // Durations: every action that ran, none for refusals.
  assert.equal(sample(s, 'drizzle_action_duration_seconds_count', { resource: 'todos', action: 'get' }), 2)
  assert.equal(sample(s, 'drizzle_action_duration_seconds_count', { resource: 'todos', action: 'create' }), 2)
  assert.equal(sample(s, 'drizzle_action_duration_seconds_count', { resource: '(unknown)', action: '(unknown)' }), undefined)
  const sum = sample(s, 'drizzle_action_duration_seconds_sum', { resource: 'todos', action: 'get' }) as number
  assert.ok(sum > 0 && sum < 1, `sum ${sum}`)
  assert.equal(sample(s, 'drizzle_action_duration_seconds_bucket', { resource: 'todos', action: 'get', le: '+Inf' }), 2)
  assert.equal(sample(s, 'drizzle_action_duration_seconds_count', { resource: '$topic', action: 'subscribe' }), 2)
  const buckets = s.filter(x => x.name === 'drizzle_action_duration_seconds_bucket' && x.labels.action === 'get').map(x => x.value)
  assert.deepEqual(buckets, [...buckets].sort((x, y) => x - y), 'cumulative buckets')
  assert.equal(buckets.length, 16)
  // prom-client's JSON view (used by AggregatorRegistry in clusters) reads the same series.
  const json = await registry.getMetricsAsJSON()
  assert.equal(json.find(m => m.name === 'drizzle_action_duration_seconds')?.type, 'histogram')
  assert.equal(sample(s, 'drizzle_publications_total', { source: 'local' }), 2)
  assert.equal(sample(s, 'drizzle_publications_total', { source: 'broker' }), 1)
  assert.equal(sample(s, 'drizzle_deliveries_total'), 3)
  // Frames: a sent 9, b 3; each got a reply, and 3 publications were written.
  assert.equal(sample(s, 'drizzle_messages_received_total'), 12)
  assert.equal(sample(s, 'drizzle_messages_sent_total'), 15)
  assert.equal(sample(s, 'drizzle_dropped_total', { reason: 'slow_consumer' }), 0)
  assert.equal(sample(s, 'drizzle_recoveries_total', { recovered: 'true' }), 0)

  // A consumer that stops reading is closed (slowConsumer "close"): one publication dropped, one socket closed.
  const slow = await connect(t, url)
  await slow.request('$topic', 'subscribe', { topic: 'rooms/9' })
  pauseReading(slow)
  const socket = ([...app.drizzle.connections].at(-1) as unknown as { socket: WebSocket }).socket
  const payload = { blob: 'y'.repeat(16 * 1024) }
  for (let i = 0; i < 4096 && socket.readyState === 1; i++) {
    await app.drizzle.publish('rooms/9', payload)
    if (i % 64 === 63) await new Promise(resolve => setImmediate(resolve))
  }
  assert.notEqual(socket.readyState, 1, 'the slow consumer was closed')
  s = await scrape(registry)
  assert.equal(sample(s, 'drizzle_dropped_total', { reason: 'slow_consumer' }), 1)
  assert.equal(sample(s, 'drizzle_dropped_total', { reason: 'slow_consumer_closed' }), 1)
  a.terminate()
  slow.terminate()
  await waitFor('the connection count to drop', async () => sample(await scrape(registry), 'drizzle_connections') === 1)
  assert.equal(sample(await scrape(registry), 'drizzle_subscriptions'), 2, 'only b\'s two are left')
})

/**
 * History topics. Recoveries: each `$topic/subscribe` with a `since` counts once, `true` when the replay
 * covered it, `false` when the position was too old or of another epoch; a subscribe without one does
 * not count. Publications: counted as local, as those of other topics, and their deliveries too.
 */
async function recoveries (t: TestContext, broker: DrizzleOptions['broker']): Promise<void> {
  const registry = new Registry()
  const app = await build(t, { metrics: { registry }, broker }, app => { app.drizzle.topic('rooms/:id', { history: { size: 3, ttl: 60_000 } }) })
  const client = await connect(t, await listen(app))
  const count = async (recovered: boolean) => sample(await scrape(registry), 'drizzle_recoveries_total', { recovered: String(recovered) })
  const resubscribe = async (since?: Position) => {
    await client.request('$topic', 'unsubscribe', { topic: 'rooms/1' })
    return (await client.request('$topic', 'subscribe', since === undefined ? { topic: 'rooms/1' } : { topic: 'rooms/1', since })).data
  }
  await client.request('$topic', 'subscribe', { topic: 'rooms/1' })
  for (let n = 1; n <= 2; n++) await app.drizzle.publish('rooms/1', { n })
  const { epoch } = await app.drizzle.position('rooms/1')
  assert.equal((await resubscribe({ offset: 1, epoch })).recovered, true)
  assert.equal((await resubscribe({ offset: 2, epoch })).recovered, true, 'nothing missed is recovered too')
  assert.equal(await count(true), 2)
  assert.equal(await count(false), 0)
  for (let n = 3; n <= 10; n++) await app.drizzle.publish('rooms/1', { n })
  assert.equal((await resubscribe({ offset: 2, epoch })).recovered, false, 'older than size')
  assert.equal((await resubscribe({ offset: 9, epoch: `${epoch}-other` })).recovered, false, 'another epoch')
  assert.equal((await resubscribe()).recovered, undefined)
  // A subscribe refused before history answers (a malformed since) is no recovery either.
  assert.equal((await client.request('$topic', 'subscribe', { topic: 'rooms/2', since: { offset: -1, epoch } })).statusCode, 400)
  assert.equal(await count(true), 2)
  assert.equal(await count(false), 2)
  // Publications to history topics are made here like any other: counted as local. Deliveries: the
  // client was subscribed for all 10 as they were published live (replays are not deliveries).
  await client.waitFor(f => f.topic === 'rooms/1' && f.offset === 10)
  const s = await scrape(registry)
  assert.equal(sample(s, 'drizzle_publications_total', { source: 'local' }), 10)
  assert.equal(sample(s, 'drizzle_deliveries_total'), 10)
}

test('history topics: drizzle_recoveries_total counts each since answered, by recovered; publications count as local (memory broker)', async (t) => {
  await recoveries(t, undefined)
})

test('history topics: drizzle_recoveries_total counts each since answered, by recovered; publications count as local (Redis)', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  await recoveries(t, redisBroker({ url: REDIS_URL, prefix: `test:metrics:${randomUUID()}:` }))
})

test('a broker outage: drizzle_broker_up goes to 0 and back, drizzle_broker_outages_total counts it once', { skip: skipPrivateRedis, timeout: 30_000 }, async (t) => {
  const port = await freePort()
  let server = await startRedisServer(port)
  t.after(() => killServer(server))
  const registry = new Registry()
  await build(t, { metrics: { registry, prefix: 'chat_' }, broker: redisBroker({ url: `redis://127.0.0.1:${port}` }) })
  const up = async () => sample(await scrape(registry), 'chat_broker_up')
  assert.equal(await up(), 1)
  await killServer(server)
  await waitFor('broker_up 0', async () => await up() === 0, 5000)
  assert.equal(sample(await scrape(registry), 'chat_broker_outages_total'), 1)
  server = await startRedisServer(port)
  await waitFor('broker_up 1 again', async () => await up() === 1, 10_000)
  const s = await scrape(registry)
  assert.equal(sample(s, 'chat_broker_outages_total'), 1)
  assert.equal(s.some(x => x.name.startsWith('drizzle_')), false, 'the prefix replaces drizzle_')
})

test('metrics are off by default, use prom-client\'s default registry with `true`, and leave it when the app closes', async (t) => {
  const app = await build(t, {}, resources)
  assert.equal((await defaultRegistry.metrics()).includes('drizzle_'), false)
  await app.close()

  const on = await build(t, { metrics: true }, resources)
  const client = await connect(t, await listen(on))
  await client.request('todos', 'get')
  const s = parseExposition(await defaultRegistry.metrics())
  assert.equal(sample(s, 'drizzle_actions_total', { resource: 'todos', action: 'get', status: '200' }), 1)
  assert.equal(sample(s, 'drizzle_broker_up'), 1, 'the in-memory broker is always up')
  client.terminate()
  await on.close()
  assert.equal((await defaultRegistry.metrics()).includes('drizzle_'), false)
})

test('actions over HTTP are counted too', async (t) => {
  const registry = new Registry()
  const app = await build(t, { metrics: { registry }, http: true }, resources)
  assert.equal((await app.inject({ method: 'POST', url: '/ws/todos/get' })).statusCode, 200)
  assert.equal((await app.inject({ method: 'POST', url: '/ws/todos/teapot' })).statusCode, 418)
  const s = await scrape(registry)
  assert.equal(sample(s, 'drizzle_actions_total', { resource: 'todos', action: 'get', status: '200' }), 1)
  assert.equal(sample(s, 'drizzle_actions_total', { resource: 'todos', action: 'teapot', status: '418' }), 1)
})

test('the metrics option is checked at registration', (t: TestContext) => {
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /"metrics": expected a boolean or \{ registry\?/],
    [{ registry: {} }, /"metrics.registry": expected a prom-client Registry/],
    [{ prefix: 'my-app' }, /"metrics.prefix": expected a Prometheus metric name prefix/],
    [{ buckets: [] }, /unknown key "buckets"/]
  ]
  for (const [metrics, message] of cases) {
    assert.throws(() => resolveOptions({ metrics }), (err: Error & { code: string }) => err.code === 'FST_DRIZZLE_INVALID_OPTION' && message.test(err.message))
  }
  assert.deepEqual(resolveOptions({ metrics: true }).metrics, { registry: undefined, prefix: 'drizzle_' })
  assert.equal(resolveOptions({}).metrics, false)
  assert.equal(resolveOptions({}).tracing, true)
  t.diagnostic('options checked')
})

test('without prom-client and @opentelemetry/api the plugin works, and `metrics: true` says what to install', { timeout: 30_000 }, async () => {
  const fixture = fileURLToPath(new URL('./fixtures/without-peers.ts', import.meta.url))
  const hide = new URL('./fixtures/hide-peers.mjs', import.meta.url).href
  const { stdout } = await run(process.execPath, ['--import', 'tsx', '--import', hide, fixture], { timeout: 25_000 })
  const result = JSON.parse(stdout.trim().split('\n').at(-1) as string)
  assert.equal(result.otel, 'hidden')
  assert.deepEqual(result.answer, { data: 'ok', request_id: 1 })
  assert.equal(result.refusal.code, 'FST_DRIZZLE_MISSING_DEPENDENCY')
  assert.match(result.refusal.message, /Option "metrics" needs the package "prom-client": install it \(npm install prom-client\)/)
})

test('the observability example serves the metrics at GET /metrics', async (t) => {
  const { buildObservedApp } = await import('../example/observability.js')
  const { app } = await buildObservedApp({ logger: false })
  t.after(() => app.close())
  const client = await connect(t, await listen(app))
  await client.request('todos', 'watch')
  const response = await app.inject('/metrics')
  assert.equal(response.statusCode, 200)
  assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/)
  const s = parseExposition(response.body)
  assert.equal(sample(s, 'drizzle_actions_total', { resource: 'todos', action: 'watch', status: '200' }), 1)
  assert.equal(sample(s, 'drizzle_subscriptions'), 1)
  assert.ok(s.some(x => x.name === 'process_cpu_user_seconds_total'), 'beside the process metrics')
})

test('a name the registry already holds fails the registration and leaves the registry as it was', async () => {
  const registry = new Registry()
  const { Gauge } = await import('prom-client')
  registry.registerMetric(new Gauge({ name: 'drizzle_deliveries_total', help: 'the app\'s own', registers: [] }))
  const app = Fastify()
  await assert.rejects(async () => { await app.register(drizzle, { metrics: { registry } }).ready() }, /A metric with the name drizzle_deliveries_total has already been registered/)
  assert.deepEqual(registry.getMetricsAsArray().map(m => m.name), ['drizzle_deliveries_total'])
  await app.close()
})
