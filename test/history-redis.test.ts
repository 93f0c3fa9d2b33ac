import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import drizzle, { type Broker, type Position } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import WebSocket from 'ws'
import { DrizzleClient, type RecoveryResult } from '../lib/client/index.js'
import { connect, listen, nextId, type Frame, type TestClient } from './helpers/client.js'
import { recordingLogger } from './helpers/logger.js'
import { REDIS_URL, canReach, freePort, killServer, startRedisServer, waitFor } from './helpers/redis.js'

// Topic history on Redis, two instances with clients over real sockets (README "History and
// recovery"). Every test has its own prefix; tests that kill connections or Redis itself run their
// own redis-server.

const redisUp = await canReach(REDIS_URL)
if (!redisUp && process.env.CI !== undefined) throw new Error(`Redis is not reachable at ${REDIS_URL} in CI`)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: REDIS HISTORY TESTS SKIPPED`
const run = promisify(execFile)
const timeout = 60_000

interface Node { app: FastifyInstance, url: string, broker: Broker }

async function node (t: TestContext, url: string, prefix: string, options: { logger?: ReturnType<typeof recordingLogger>, port?: number } = {}): Promise<Node> {
  const app = Fastify({ loggerInstance: options.logger }) as unknown as FastifyInstance
  const broker = redisBroker({ url, prefix })
  await app.register(drizzle, { broker, heartbeatInterval: 0, closeGracePeriod: 100, rateLimit: false })
  app.drizzle.topic('rooms/:id', { history: { size: 5000, ttl: 120_000 } })
  app.drizzle.topic('small/:id', { history: { size: 5, ttl: 120_000 } })
  app.drizzle.resource('rooms', {
    load: async (message, ctx) => ({ position: await ctx.position(String((message.data as { topic: string }).topic)) })
  })
  t.after(() => app.close())
  if (options.port === undefined) return { app, broker, url: await listen(app) }
  await app.listen({ port: options.port, host: '127.0.0.1' })
  return { app, broker, url: `ws://127.0.0.1:${options.port}/ws` }
}

const prefixOf = (): string => `test:history:${randomUUID()}:`

async function subscribe (client: TestClient, topic: string, since?: Position): Promise<Frame> {
  return client.request('$topic', 'subscribe', since === undefined ? { topic } : { topic, since }, nextId())
}

function after (client: TestClient, reply: Frame, topic: string): Frame[] {
  return client.frames.slice(client.frames.indexOf(reply) + 1).filter(f => f.topic === topic)
}

const range = (from: number, count: number): number[] => Array.from({ length: count }, (_, i) => from + i)

async function publishMany (app: FastifyInstance, topic: string, from: number, count: number): Promise<void> {
  for (const n of range(from, count)) await app.drizzle.publish(topic, { n })
}

/** Asserts a client got offsets `from`.. `to` exactly once each, in order, after `reply`. */
function assertExactly (client: TestClient, reply: Frame, topic: string, from: number, to: number): void {
  const got = after(client, reply, topic)
  assert.deepEqual(got.map(f => f.offset), range(from, to - from + 1))
  assert.deepEqual(got.map(f => f.data.n), range(from, to - from + 1))
}

test('redis: a client away while 50 publications are made on the other instance gets those 50 in order, then live ones', { skip, timeout }, async t => {
  const prefix = prefixOf()
  const a = await node(t, REDIS_URL, prefix)
  const b = await node(t, REDIS_URL, prefix)
  const first = await connect(t, a.url)
  const reply = await subscribe(first, 'rooms/1')
  assert.equal(reply.data.offset, 0)
  await publishMany(b.app, 'rooms/1', 1, 3)
  await waitFor('3 publications on a', () => first.publications('rooms/1').length === 3)
  first.terminate()
  await publishMany(b.app, 'rooms/1', 4, 50)
  const second = await connect(t, a.url)
  const resumed = await subscribe(second, 'rooms/1', { offset: 3, epoch: reply.data.epoch })
  assert.deepEqual(resumed.data, { topic: 'rooms/1', subscribed: true, offset: 53, epoch: reply.data.epoch, recovered: true })
  await publishMany(b.app, 'rooms/1', 54, 3)
  await waitFor('the 50 and the live ones', () => after(second, resumed, 'rooms/1').length === 53)
  assertExactly(second, resumed, 'rooms/1', 4, 56)
  // A subscriber on the publishing instance gets the same positions.
  const onB = await connect(t, b.url)
  const fromB = await subscribe(onB, 'rooms/1', { offset: 50, epoch: reply.data.epoch })
  await waitFor('the replay on b', () => after(onB, fromB, 'rooms/1').length === 6)
  assertExactly(onB, fromB, 'rooms/1', 51, 56)
})

test('redis: since older than size, or of another epoch, answers recovered: false and replays nothing', { skip, timeout }, async t => {
  const prefix = prefixOf()
  const a = await node(t, REDIS_URL, prefix)
  const b = await node(t, REDIS_URL, prefix)
  await publishMany(b.app, 'small/1', 1, 12)
  const { epoch } = await a.app.drizzle.position('small/1')
  assert.deepEqual(await b.app.drizzle.position('small/1'), { offset: 12, epoch }, 'both instances see one position')
  const client = await connect(t, a.url)
  const old = await subscribe(client, 'small/1', { offset: 6, epoch })
  assert.deepEqual(old.data, { topic: 'small/1', subscribed: true, offset: 12, epoch, recovered: false })
  const foreign = await subscribe(client, 'small/1', { offset: 11, epoch: 'x' + epoch })
  assert.equal(foreign.data.recovered, false)
  const edge = await subscribe(client, 'small/1', { offset: 7, epoch })
  assert.equal(edge.data.recovered, true)
  await waitFor('the replay', () => after(client, edge, 'small/1').length === 5)
  assertExactly(client, edge, 'small/1', 8, 12)
  assert.equal(after(client, old, 'small/1').length, 5, 'only the recoverable one replayed')
})

test('redis: outside publishers: FCALL drizzle_publish gets a position; a plain PUBLISH is delivered live and logged once', { skip, timeout }, async t => {
  const prefix = prefixOf()
  const logger = recordingLogger()
  const a = await node(t, REDIS_URL, prefix, { logger })
  const client = await connect(t, a.url)
  const reply = await subscribe(client, 'rooms/5')
  const cli = ['-h', '127.0.0.1', '-p', '6379']
  const { stdout } = await run('redis-cli', [...cli, 'FCALL', 'drizzle_publish', '1', `${prefix}rooms/5`, '{"data":{"n":1},"event":"cli"}'], { timeout: 5000 })
  assert.match(stdout, /^1\n/)
  assert.deepEqual(await client.waitFor(f => f.topic === 'rooms/5'), { topic: 'rooms/5', data: { n: 1 }, event: 'cli', offset: 1 })
  const refused = await run('redis-cli', [...cli, 'FCALL', 'drizzle_publish', '1', `${prefix}rooms/5`, 'not json'], { timeout: 5000 })
  assert.match(refused.stdout, /must be a JSON object/)
  for (const n of [2, 3]) await run('redis-cli', [...cli, 'PUBLISH', `${prefix}rooms/5`, JSON.stringify({ data: { plain: n } })], { timeout: 5000 })
  await a.app.drizzle.publish('rooms/5', { n: 2 })
  await waitFor('the plain publications and the next positioned one', () => client.publications('rooms/5').length === 4)
  assert.deepEqual(after(client, reply, 'rooms/5').slice(1), [
    { topic: 'rooms/5', data: { plain: 2 } }, { topic: 'rooms/5', data: { plain: 3 } }, { topic: 'rooms/5', data: { n: 2 }, offset: 2 }
  ])
  assert.equal(logger.entries.filter(e => e.level === 'warn' && e.obj.topic === 'rooms/5' && /without a position/.test(e.msg ?? '')).length, 1)
})

test('redis: load-then-subscribe while another instance publishes continuously yields every later publication once', { skip, timeout }, async t => {
  const prefix = prefixOf()
  const a = await node(t, REDIS_URL, prefix)
  const b = await node(t, REDIS_URL, prefix)
  const client = await connect(t, a.url)
  const state = { publishing: true, n: 0 }
  const publisher = (async () => { while (state.publishing) await b.app.drizzle.publish('rooms/9', { n: ++state.n }) })()
  await waitFor('publishing', () => state.n > 20)
  const position = (await client.request('rooms', 'load', { topic: 'rooms/9' })).data.position as Position
  await waitFor('more publications', () => state.n > position.offset + 30)
  const reply = await subscribe(client, 'rooms/9', position)
  assert.equal(reply.data.recovered, true)
  await waitFor('more publications', () => state.n > reply.data.offset + 30)
  state.publishing = false
  await publisher
  await waitFor('every publication', () => client.publications('rooms/9').at(-1)?.offset === state.n, 10_000)
  assertExactly(client, reply, 'rooms/9', position.offset + 1, state.n)
})

/** A Redis of our own: killing its connections or itself touches nobody else's tests. */
async function privateRedis (t: TestContext): Promise<{ url: string, port: number, restart: () => Promise<void> }> {
  const port = await freePort()
  let server = await startRedisServer(port)
  t.after(() => killServer(server))
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    restart: async () => {
      await killServer(server)
      server = await startRedisServer(port)
    }
  }
}

/** Connections in subscriber mode on that Redis: one per instance when both are subscribed. */
async function pubsubClients (admin: Redis): Promise<number> {
  const list = String(await admin.call('CLIENT', 'LIST', 'TYPE', 'pubsub'))
  return list.split('\n').filter(line => line.trim() !== '').length
}

test('redis: the subscriber connection killed during a burst of 1,000: every subscriber still gets all 1,000, once, in order', { skip, timeout }, async t => {
  const redis = await privateRedis(t)
  const prefix = prefixOf()
  const a = await node(t, redis.url, prefix)
  const b = await node(t, redis.url, prefix)
  const clients = [await connect(t, a.url), await connect(t, a.url), await connect(t, b.url)]
  const replies = []
  for (const c of clients) replies.push(await subscribe(c, 'rooms/1'))
  const admin = new Redis(redis.url)
  t.after(() => admin.disconnect())
  let kills = 0
  const burst = (async () => {
    for (const n of range(1, 1000)) {
      await b.app.drizzle.publish('rooms/1', { n })
      // Every subscriber connection, a's and b's, is closed twice in the middle of the burst. Each
      // kill waits for both to be connected again: ioredis reconnects after a delay of its own, and
      // a kill that finds one still away would close nothing (no timing guess).
      if (n === 300 || n === 600) {
        await waitFor('both subscriber connections', async () => await pubsubClients(admin) >= 2, 10_000)
        kills += Number(await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub'))
      }
    }
  })()
  await burst
  assert.equal(kills, 4, 'each instance\'s subscriber connection killed twice')
  for (const [i, c] of clients.entries()) {
    await waitFor(`all 1,000 on client ${i}`, () => c.publications('rooms/1').at(-1)?.offset === 1000, 20_000)
    assertExactly(c, replies[i] as Frame, 'rooms/1', 1, 1000)
  }
})

test('redis: a Redis restart changes the epoch; a since of the old one answers recovered: false', { skip, timeout }, async t => {
  const redis = await privateRedis(t)
  const prefix = prefixOf()
  const a = await node(t, redis.url, prefix)
  const client = await connect(t, a.url)
  const reply = await subscribe(client, 'rooms/2')
  await publishMany(a.app, 'rooms/2', 1, 3)
  await waitFor('3 publications', () => client.publications('rooms/2').length === 3)
  await redis.restart()
  // Publications fail while the broker reconnects, then go through in the new epoch.
  await waitFor('a publication after the restart', async () => a.app.drizzle.publish('rooms/2', { n: 1 }).then(() => true, () => false), 20_000)
  const position = await a.app.drizzle.position('rooms/2')
  assert.notEqual(position.epoch, reply.data.epoch)
  assert.equal(position.offset, 1)
  const again = await connect(t, a.url)
  const resumed = await subscribe(again, 'rooms/2', { offset: 3, epoch: reply.data.epoch })
  assert.deepEqual(resumed.data, { topic: 'rooms/2', subscribed: true, offset: 1, epoch: position.epoch, recovered: false })
  // The client that stayed sees the offsets start again (a gap, for it: it re-subscribes since).
  await waitFor('the first publication of the new epoch', () => client.publications('rooms/2').some(f => f.offset === 1 && f.data.n === 1), 10_000)
})

test('redis: the typed client recovers across a server restart: every publication once, recovered: true', { skip, timeout }, async t => {
  const prefix = prefixOf()
  const port = await freePort()
  const first = await node(t, REDIS_URL, prefix, { port })
  const other = await node(t, REDIS_URL, prefix)
  const client = new DrizzleClient(first.url, { WebSocket, timeout: 5000, reconnect: { baseDelay: 20, maxDelay: 100 } })
  t.after(() => client.close())
  const offsets: number[] = []
  const recoveries: RecoveryResult[] = []
  const stop = client.subscribe('rooms/3', (data, frame) => { offsets.push(frame.offset as number); assert.equal((data as { n: number }).n, frame.offset) }, { onRecovery: r => recoveries.push(r) })
  // Publications count from the position the reply gives.
  await stop.ready
  await publishMany(other.app, 'rooms/3', 1, 3)
  await waitFor('3 publications', () => offsets.length === 3)
  await first.app.close()
  await publishMany(other.app, 'rooms/3', 4, 20)
  await node(t, REDIS_URL, prefix, { port })
  await waitFor('recovered after the restart', () => offsets.length === 23, 20_000)
  await publishMany(other.app, 'rooms/3', 24, 2)
  await waitFor('live again', () => offsets.length === 25)
  assert.deepEqual(offsets, range(1, 25))
  assert.deepEqual(recoveries.map(r => r.recovered), [true])
})
