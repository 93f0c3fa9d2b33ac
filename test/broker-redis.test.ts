import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { redisBroker, type RedisBrokerOptions } from '../lib/brokers/redis.js'
import { canReach, freePort, hasCommand, killServer, sleep, startRedisServer, waitFor } from './helpers/redis.js'
import type { Broker, BrokerSink } from '../lib/brokers/types.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'

// Every test talks to 127.0.0.1 only: the shared Redis on 6379, or a redis-server it starts itself.
const REDIS_URL = 'redis://127.0.0.1:6379'
const FIXTURE = fileURLToPath(new URL('./fixtures/redis-standalone-publisher.ts', import.meta.url))

const redisUp = await canReach(REDIS_URL)
const redisServerBinary = await hasCommand('redis-server')
const redisCliBinary = await hasCommand('redis-cli')

// Without Redis these tests prove nothing: skip loudly on a workstation; in CI the test below fails.
const skipReason = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: REDIS BROKER TESTS SKIPPED`
if (skipReason) console.warn(`\n*** ${skipReason} ***\n`)
const needsRedis = { skip: skipReason, timeout: 10_000 }
const needsRedisServer = {
  skip: redisServerBinary ? false : 'redis-server is not installed: restart tests skipped',
  timeout: 15_000
}

if (!redisUp && process.env.CI) {
  test('Redis is reachable in CI', () => {
    assert.fail(`Redis is not reachable at ${REDIS_URL}`)
  })
}

// ---------------------------------------------------------------------------------------------
// Helpers

interface Delivery { topic: string, data: unknown, event: string | undefined }

interface Recorder {
  sink: BrokerSink
  deliveries: Delivery[]
  logs: LogEntry[]
}

function recorder (deliver?: (delivery: Delivery) => void): Recorder {
  const deliveries: Delivery[] = []
  const logs: LogEntry[] = []
  const sink: BrokerSink = {
    deliver (topic, data, event) {
      deliveries.push({ topic, data, event })
      deliver?.({ topic, data, event })
    },
    log: recordingLogger(logs)
  }
  return { sink, deliveries, logs }
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object'
}

function uniquePrefix (): string {
  return `test:${randomUUID()}:`
}

/** A broker closed when the test ends, attached to a fresh recorder unless told otherwise. */
async function attachedBroker (t: TestContext, options: RedisBrokerOptions, rec = recorder()): Promise<Broker & Recorder> {
  const broker = redisBroker(options)
  t.after(() => broker.close())
  await broker.attach(rec.sink)
  return Object.assign(broker, rec)
}

/** A plain ioredis client that publishes like any outside process would. */
function rawClient (t: TestContext, url = REDIS_URL): Redis {
  // A low disconnectTimeout: ioredis arms that timer even when disconnecting an already closed socket.
  const client = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true, disconnectTimeout: 50 })
  client.on('error', () => {})
  t.after(() => client.disconnect())
  return client
}

async function rejectsWithCode (promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(isRecord(err), 'rejects with an object')
    assert.equal(err.code, code)
    return true
  })
}

// Redis sends a publisher's messages to a subscriber in order, so once a marker published after
// some message has arrived, that message would have arrived too if it was going to.
async function publishMarker (client: Redis, channel: string, ...recs: Recorder[]): Promise<void> {
  const marker = randomUUID()
  await client.publish(channel, JSON.stringify({ data: { marker } }))
  const arrived = (rec: Recorder): boolean => rec.deliveries.some((d) => isRecord(d.data) && d.data.marker === marker)
  await waitFor('the marker', () => recs.every(arrived))
}

// ---------------------------------------------------------------------------------------------
// Delivery between processes

test('a publication reaches the other broker once, never its own publisher, with data of every JSON kind', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const a = await attachedBroker(t, { url: REDIS_URL, prefix })
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  await a.subscribe('todos')
  await b.subscribe('todos')

  const sent: Array<{ data: unknown, event?: string }> = [
    { data: { id: 1, title: 'milk', tags: ['a'] }, event: 'created' },
    { data: [1, 'two', null] },
    { data: 'a string' },
    { data: 42.5, event: 'number' },
    { data: null },
    { data: true },
    { data: { nested: { deep: [{}] } }, event: 'Ünïcödé ✓' }
  ]
  for (const { data, event } of sent) await a.publish('todos', data, event === undefined ? {} : { event })

  await waitFor('every publication', () => b.deliveries.length >= sent.length)
  const raw = rawClient(t)
  await publishMarker(raw, `${prefix}todos`, a, b)

  assert.deepEqual(b.deliveries.slice(0, sent.length), sent.map(({ data, event }) => ({ topic: 'todos', data, event })))
  assert.equal(b.deliveries.length, sent.length + 1, 'each publication arrives once')
  assert.equal(a.deliveries.length, 1, 'the publisher gets only the outside marker, not its own publications')
})

test('messages published by redis-cli and by a Python-style job are delivered', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  await b.subscribe('todos')

  if (redisCliBinary) {
    await new Promise<void>((resolve, reject) => {
      execFile('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'PUBLISH', `${prefix}todos`, '{"data":{"id":1}}'], { timeout: 5000 },
        (err) => err === null ? resolve() : reject(err))
    })
    await waitFor('the redis-cli message', () => b.deliveries.length === 1)
    assert.deepEqual(b.deliveries[0], { topic: 'todos', data: { id: 1 }, event: undefined })
  } else {
    t.diagnostic('redis-cli is not installed: its part of this test was skipped')
  }

  // What redis.Redis().publish(channel, json.dumps({...})) sends from Python: spaces after separators.
  const raw = rawClient(t)
  await raw.publish(`${prefix}todos`, '{"data": {"id": 1, "title": "caf\\u00e9"}, "event": "created"}')
  await waitFor('the Python-style message', () => b.deliveries.some((d) => d.event === 'created'))
  assert.deepEqual(b.deliveries.at(-1), { topic: 'todos', data: { id: 1, title: 'café' }, event: 'created' })
})

test('invalid messages are dropped and logged, and valid ones still arrive', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  await b.subscribe('todos')
  const channel = `${prefix}todos`
  const garbage: Array<string | Buffer> = [
    'not json',
    '',
    '[]',
    '"a string"',
    'null',
    '{"nodata":1}',
    '{"data":1,"event":5}',
    '{"data":1,"origin":7}',
    Buffer.from([0x7b, 0x22, 0x64, 0x61, 0x74, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), // {"data":"<invalid UTF-8>"}
    JSON.stringify({ data: 'x'.repeat(2 * 1024 * 1024) })
  ]
  const raw = rawClient(t)
  for (const message of garbage) await raw.publish(channel, message)
  await raw.publish(channel, '{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}},"data":{"ok":1}}')
  await publishMarker(raw, channel, b)

  const warnings = b.logs.filter((entry) => entry.level === 'warn')
  assert.equal(warnings.length, garbage.length, 'one warning per invalid message')
  for (const warning of warnings) {
    assert.equal(warning.obj.channel, channel)
    assert.equal(typeof warning.obj.reason, 'string')
    assert.ok(JSON.stringify(warning.obj).length < 1000, 'the payload itself is never logged')
  }
  assert.ok(warnings.some((w) => String(w.obj.reason).includes('exceeds')), 'the 2 MB message is refused for its size')
  assert.ok(warnings.some((w) => String(w.obj.reason).includes('UTF-8')), 'invalid UTF-8 is refused')

  assert.equal(b.deliveries.length, 2, 'only the __proto__ message (stripped) and the marker are delivered')
  assert.deepEqual(b.deliveries[0], { topic: 'todos', data: { ok: 1 }, event: undefined })
  assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false)
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
})

test('a sink that throws is logged and later messages still arrive', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const rec = recorder((delivery) => {
    if (delivery.data === 'boom') throw new Error('sink exploded')
  })
  const b = await attachedBroker(t, { url: REDIS_URL, prefix }, rec)
  await b.subscribe('todos')
  const raw = rawClient(t)
  await raw.publish(`${prefix}todos`, '{"data":"boom"}')
  await publishMarker(raw, `${prefix}todos`, b)
  const errors = b.logs.filter((entry) => entry.level === 'error')
  assert.equal(errors.length, 1)
  assert.equal((errors[0]?.obj.err as Error).message, 'sink exploded')
})

// ---------------------------------------------------------------------------------------------
// Subscriptions

test('only subscribed topics of its own prefix are delivered, and unsubscribing stops them', needsRedis, async (t) => {
  const base = uniquePrefix()
  const prefix = `${base}one:`
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  const other = await attachedBroker(t, { url: REDIS_URL, prefix: `${base}two:` })
  await b.subscribe('todos')
  await other.subscribe('todos')
  const raw = rawClient(t)

  await raw.publish(`${prefix}notes`, '{"data":"not subscribed"}')
  await raw.publish(`${base}two:todos`, '{"data":"other prefix"}')
  await raw.publish(`${base}todos`, '{"data":"no prefix"}')
  await raw.publish('todos', '{"data":"bare topic"}')
  await other.publish('todos', 'from the other app')
  await raw.publish(`${prefix}todos`, '{"data":"wanted"}')
  await publishMarker(raw, `${prefix}todos`, b)
  assert.deepEqual(b.deliveries.map((d) => d.data).slice(0, -1), ['wanted'])

  await b.unsubscribe('todos')
  await b.subscribe('notes')
  await raw.publish(`${prefix}todos`, '{"data":"after unsubscribe"}')
  await publishMarker(raw, `${prefix}notes`, b)
  assert.equal(b.deliveries.length, 3, 'nothing arrives on the unsubscribed topic')
  assert.ok(other.deliveries.some((d) => d.data === 'other prefix'))
})

test('topics subscribed before attach are applied at attach', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const broker = redisBroker({ url: REDIS_URL, prefix })
  t.after(() => broker.close())
  await broker.subscribe('early')
  const rec = recorder()
  await broker.attach(rec.sink)
  await waitFor('the subscription', async () => {
    const counts = await rawClient(t).pubsub('NUMSUB', `${prefix}early`) as [string, number]
    return Number(counts[1]) === 1
  })
  await publishMarker(rawClient(t), `${prefix}early`, rec)
})

// ---------------------------------------------------------------------------------------------
// Standalone use and ownership

test('a standalone worker in a child process publishes, closes and exits on its own', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  await b.subscribe('todos')

  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE], {
    env: { ...process.env, REDIS_URL, PREFIX: prefix },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 8000)
  const [code, signal] = await once(child, 'exit') as [number | null, string | null]
  clearTimeout(timer)
  assert.equal(signal, null, `the worker did not exit on its own: ${stderr}`)
  assert.equal(code, 0, stderr)

  await waitFor('the worker publication', () => b.deliveries.length === 1)
  assert.deepEqual(b.deliveries[0], { topic: 'todos', data: { from: 'worker' }, event: 'created' })
})

test('a client passed in is used to publish and is never closed', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const client = new Redis(REDIS_URL)
  t.after(() => client.disconnect())
  const b = await attachedBroker(t, { url: REDIS_URL, prefix })
  await b.subscribe('todos')
  const a = await attachedBroker(t, { client, prefix })
  await a.subscribe('todos')

  await a.publish('todos', { via: 'client' })
  await waitFor('the publication', () => b.deliveries.length === 1)
  await b.publish('todos', { to: 'duplicate' })
  await waitFor('delivery through the duplicated subscriber', () => a.deliveries.length === 1)

  await a.close()
  await a.close()
  assert.equal(client.status, 'ready')
  assert.equal(await client.ping(), 'PONG')
})

test('close() is idempotent and publish afterwards rejects with FST_DRIZZLE_BROKER_CLOSED', needsRedis, async (t) => {
  const broker = redisBroker({ url: REDIS_URL, prefix: uniquePrefix() })
  await broker.publish('todos', 1)
  await Promise.all([broker.close(), broker.close()])
  await broker.close()
  await rejectsWithCode(broker.publish('todos', 1), 'FST_DRIZZLE_BROKER_CLOSED')
  await rejectsWithCode(broker.attach(recorder().sink), 'FST_DRIZZLE_BROKER_CLOSED')
  await broker.subscribe('todos')
  await broker.unsubscribe('todos')
})

test('publish refuses a message over maxMessageBytes, and a receiver drops one over its own limit', needsRedis, async (t) => {
  const prefix = uniquePrefix()
  const b = await attachedBroker(t, { url: REDIS_URL, prefix, maxMessageBytes: 100 })
  await b.subscribe('todos')
  const a = redisBroker({ url: REDIS_URL, prefix, maxMessageBytes: 200 })
  t.after(() => a.close())
  await rejectsWithCode(a.publish('todos', 'x'.repeat(300)), 'FST_DRIZZLE_BROKER_UNAVAILABLE')
  await a.publish('todos', 'y'.repeat(120))
  await publishMarker(rawClient(t), `${prefix}todos`, b)
  assert.equal(b.deliveries.length, 1)
  assert.equal(b.logs.filter((entry) => entry.level === 'warn').length, 1)
})

test('bad options throw FST_DRIZZLE_INVALID_OPTION naming what was received', () => {
  const cases: Array<[unknown, RegExp]> = [
    [{ url: 'http://localhost' }, /"url".*http:\/\/localhost/],
    [{ url: 42 }, /"url".*number \(42\)/],
    [{ url: REDIS_URL, client: new Redis({ lazyConnect: true }) }, /"url".*not both/],
    [{ client: {} }, /"client"/],
    [{ prefix: 1 }, /"prefix"/],
    [{ log: console.log }, /"log".*function/],
    [{ maxMessageBytes: 0 }, /"maxMessageBytes"/],
    [{ commandTimeout: 1.5 }, /"commandTimeout"/],
    ['redis://x', /"options"/]
  ]
  for (const [options, message] of cases) {
    assert.throws(() => redisBroker(options as RedisBrokerOptions), (err: unknown) => {
      assert.ok(err instanceof Error)
      assert.equal((err as Error & { code: string }).code, 'FST_DRIZZLE_INVALID_OPTION')
      assert.match(err.message, message)
      return true
    })
  }
})

// ---------------------------------------------------------------------------------------------
// Outages, against a redis-server of our own

test('Redis restarted mid-run: publish fails fast, then the broker reconnects and resubscribes', needsRedisServer, async (t) => {
  const port = await freePort()
  const url = `redis://127.0.0.1:${port}`
  let server = await startRedisServer(port)
  t.after(() => killServer(server))
  const prefix = uniquePrefix()
  const b = await attachedBroker(t, { url, prefix })
  await b.subscribe('todos')
  await publishMarker(rawClient(t, url), `${prefix}todos`, b)

  await killServer(server)
  const started = Date.now()
  await rejectsWithCode(b.publish('todos', 'during the outage'), 'FST_DRIZZLE_BROKER_UNAVAILABLE')
  assert.ok(Date.now() - started < 2000, 'publish rejects within 2 s')
  const subscribing = Date.now()
  await b.subscribe('later') // recorded while Redis is away, applied on reconnect
  await b.unsubscribe('todos')
  await b.subscribe('todos')
  assert.ok(Date.now() - subscribing < 1500, 'subscribe does not hang while Redis is away')

  server = await startRedisServer(port)
  await waitFor('resubscription after the restart', async () => {
    const before = b.deliveries.length
    const raw = rawClient(t, url)
    await raw.publish(`${prefix}todos`, '{"data":"after restart"}').catch(() => 0)
    raw.disconnect()
    await sleep(100)
    return b.deliveries.length > before
  }, 8000)
  await publishMarker(rawClient(t, url), `${prefix}later`, b)

  const watcher = rawClient(t, url)
  await watcher.subscribe(`${prefix}todos`)
  const received = once(watcher, 'message')
  await waitFor('publish to work again', () => b.publish('todos', 'back').then(() => true, () => false))
  const [, message] = await received as [string, string]
  assert.equal(JSON.parse(message).data, 'back')

  const errors = b.logs.filter((entry) => entry.level === 'error')
  assert.equal(errors.length, 1, 'the outage is logged once')
  await waitFor('the recovery log', () => b.logs.some((entry) => entry.level === 'info'))
})

test('a broker created while Redis is absent keeps retrying and works once Redis appears', needsRedisServer, async (t) => {
  const port = await freePort()
  const url = `redis://127.0.0.1:${port}`
  const prefix = uniquePrefix()
  const started = Date.now()
  const b = await attachedBroker(t, { url, prefix })
  await b.subscribe('todos')
  await rejectsWithCode(b.publish('todos', 'nobody home'), 'FST_DRIZZLE_BROKER_UNAVAILABLE')
  assert.ok(Date.now() - started < 3000, 'attach, subscribe and publish do not hang')

  await sleep(300) // a few failed attempts, still logged once
  const server = await startRedisServer(port)
  t.after(() => killServer(server))
  await waitFor('the delayed subscription', async () => {
    const before = b.deliveries.length
    const raw = rawClient(t, url)
    await raw.publish(`${prefix}todos`, '{"data":"hello"}').catch(() => 0)
    raw.disconnect()
    await sleep(100)
    return b.deliveries.length > before
  }, 8000)
  await waitFor('publish to work', () => b.publish('todos', 'ok').then(() => true, () => false))
  assert.equal(b.logs.filter((entry) => entry.level === 'error').length, 1)
})

test('close() resolves quickly while Redis is down', needsRedisServer, async (t) => {
  const port = await freePort()
  const b = redisBroker({ url: `redis://127.0.0.1:${port}`, prefix: uniquePrefix() })
  await b.attach(recorder().sink)
  await b.subscribe('todos')
  const started = Date.now()
  await b.close()
  assert.ok(Date.now() - started < 1000)
  await rejectsWithCode(b.publish('todos', 1), 'FST_DRIZZLE_BROKER_CLOSED')
})

test('a burst of publications waiting for a connection shares one wait: no MaxListenersExceededWarning', async (t) => {
  // A server that accepts TCP and never answers keeps the connection in its handshake.
  const silent = createServer(() => {})
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.after(() => silent.close())
  const port = (silent.address() as { port: number }).port
  const warnings: Error[] = []
  const onWarning = (warning: Error): void => { warnings.push(warning) }
  process.on('warning', onWarning)
  t.after(() => process.off('warning', onWarning))

  const b = redisBroker({ url: `redis://127.0.0.1:${port}`, prefix: uniquePrefix(), commandTimeout: 300 })
  t.after(() => b.close())
  const started = Date.now()
  const results = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => b.publish('todos', i)))
  assert.ok(Date.now() - started < 2000, 'every publication is answered within about commandTimeout')
  for (const result of results) {
    assert.equal(result.status, 'rejected')
    assert.equal((result as PromiseRejectedResult).reason.code, 'FST_DRIZZLE_BROKER_UNAVAILABLE')
  }
  await new Promise((resolve) => setImmediate(resolve)) // warnings are emitted on the next tick
  assert.deepEqual(warnings.map((w) => w.name), [])
})
