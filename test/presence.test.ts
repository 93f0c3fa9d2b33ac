import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, fork, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { Writable } from 'node:stream'
import { promisify } from 'node:util'
import v8 from 'node:v8'
import vm from 'node:vm'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import drizzle, { memoryBroker, type Broker, type DrizzleOptions } from '../lib/index.js'
import { Parser } from '@asyncapi/parser'
import { redisBroker } from '../lib/brokers/redis.js'
import { DrizzleClient, type PresenceMember } from '../lib/client/index.js'
import { connect, listen, type Frame, type TestClient } from './helpers/client.js'
import { python, pythonMissing } from './helpers/python.js'
import { REDIS_URL, canReach, freePort, hasCommand, killServer, startRedisServer, waitFor } from './helpers/redis.js'

// Presence and users (README "Presence"), black-box over real sockets: one instance on the memory
// broker, then two (and killed ones) on the real Redis at 127.0.0.1:6379, each test under its own
// key prefix.

const run = promisify(execFile)
const redisUp = await canReach(REDIS_URL)
if (!redisUp && process.env.CI !== undefined) throw new Error(`Redis is not reachable at ${REDIS_URL} in CI`)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: REDIS PRESENCE TESTS SKIPPED`
if (skip !== false) console.warn(`\n*** ${skip} ***\n`)

const redis = redisUp ? new Redis(REDIS_URL) : undefined
test.after(() => redis?.disconnect())

interface App { app: FastifyInstance, url: string }

/** rooms/:id has presence with events, quiet/:id without events, plain/:id none; the user is the x-user header. */
async function presenceApp (t: TestContext, options: DrizzleOptions = {}): Promise<App> {
  const app = Fastify()
  await app.register(drizzle, {
    heartbeatInterval: 0,
    closeGracePeriod: 100,
    identify: (request) => request.headers['x-user'] ?? null,
    ...options
  })
  app.drizzle.topic('rooms/:id', { presence: true })
  app.drizzle.topic('quiet/:id', { presence: { events: false } })
  app.drizzle.topic('plain/:id')
  app.drizzle.resource('chat', {
    enter: async (message, ctx) => { await ctx.subscribe(`rooms/${(message.data as { room: string }).room}`); return true }
  })
  t.after(() => app.close())
  return { app, url: await listen(app) }
}

function as (t: TestContext, url: string, user?: string): Promise<TestClient> {
  return connect(t, url, user === undefined ? {} : { headers: { 'x-user': user } })
}

const subscribe = (c: TestClient, topic: string) => c.request('$topic', 'subscribe', { topic })
const presenceGet = (c: TestClient, topic: string) => c.request('$presence', 'get', { topic })
const presenceEvents = (c: TestClient, topic: string) => c.frames.filter(f => f.topic === topic && (f.event === '$join' || f.event === '$leave'))
const byConnection = (members: Array<{ connection: string }>) => [...members].sort((x, y) => x.connection < y.connection ? -1 : 1)

// ---- one instance, memory broker ----------------------------------------------------------------

test('memory: members, then $join after the subscribe reply and $leave on unsubscribe and close, once each', async t => {
  const { app, url } = await presenceApp(t)
  const ann = await as(t, url, 'ann')
  const bob = await as(t, url, 'bob')
  const anon = await as(t, url)
  const reply = await subscribe(ann, 'rooms/1')
  assert.deepEqual(reply.data, { topic: 'rooms/1', subscribed: true })
  // The joiner gets its own $join, and only after its reply.
  const annJoin = await ann.waitFor(f => f.event === '$join')
  assert.ok(ann.frames.indexOf(reply) < ann.frames.indexOf(annJoin))
  const annMember = annJoin.data
  assert.equal(annMember.user, 'ann')
  assert.match(annMember.connection, /^[0-9a-f-]{36}$/)
  await subscribe(bob, 'rooms/1')
  await subscribe(anon, 'rooms/1')
  const members = (await presenceGet(bob, 'rooms/1')).data
  assert.equal(members.topic, 'rooms/1')
  assert.deepEqual(members.members.map((m: Frame) => m.user).sort(), ['ann', 'bob', null])
  assert.deepEqual(byConnection(await app.drizzle.presence('rooms/1')), byConnection(members.members))
  // Members already present are not replayed as joins: bob sees his own and anon's.
  await bob.waitFor(f => f.event === '$join' && f.data.user === null)
  assert.deepEqual(presenceEvents(bob, 'rooms/1').map(f => [f.event, f.data.user]), [['$join', 'bob'], ['$join', null]])
  // Subscribing again is no new join.
  await subscribe(bob, 'rooms/1')
  await bob.request('$topic', 'unsubscribe', { topic: 'rooms/1' })
  const bobLeave = await ann.waitFor(f => f.event === '$leave')
  assert.equal(bobLeave.data.user, 'bob')
  anon.terminate()
  await ann.waitFor(f => f.event === '$leave' && f.data.user === null)
  await app.drizzle.publish('rooms/1', 'marker')
  await ann.waitFor(f => f.data === 'marker')
  assert.deepEqual(presenceEvents(ann, 'rooms/1').map(f => [f.event, f.data.user]),
    [['$join', 'ann'], ['$join', 'bob'], ['$join', null], ['$leave', 'bob'], ['$leave', null]])
  assert.deepEqual((await presenceGet(ann, 'rooms/1')).data.members, [annMember])
  assert.equal(presenceEvents(bob, 'rooms/1').length, 2, 'nothing after bob left')
  // A handler's ctx.subscribe joins too.
  await bob.request('chat', 'enter', { room: '1' })
  await ann.waitFor(f => f.event === '$join' && f.data.user === 'bob')
  assert.equal((await app.drizzle.presence('rooms/1')).length, 2)
})

test('memory: FORBIDDEN before subscribing, TOPIC_NOT_FOUND without presence, events: false keeps members without frames', async t => {
  const { app, url } = await presenceApp(t)
  const ann = await as(t, url, 'ann')
  const bob = await as(t, url, 'bob')
  const forbidden = await presenceGet(ann, 'rooms/2')
  assert.equal(forbidden.code, 'FORBIDDEN')
  assert.equal(forbidden.statusCode, 403)
  await subscribe(ann, 'plain/2')
  for (const topic of ['plain/2', 'nowhere', '__all__']) {
    const refused = await presenceGet(ann, topic)
    assert.equal(refused.code, 'TOPIC_NOT_FOUND', topic)
    assert.equal(refused.statusCode, 404)
  }
  await assert.rejects(app.drizzle.presence('plain/2'), { code: 'TOPIC_NOT_FOUND' })
  await assert.rejects(app.drizzle.presence(42 as never), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await subscribe(ann, 'quiet/2')
  await subscribe(bob, 'quiet/2')
  assert.equal((await presenceGet(ann, 'quiet/2')).data.members.length, 2)
  await bob.request('$topic', 'unsubscribe', { topic: 'quiet/2' })
  assert.equal((await presenceGet(ann, 'quiet/2')).data.members.length, 1)
  await app.drizzle.publish('quiet/2', 'marker')
  await ann.waitFor(f => f.data === 'marker')
  assert.equal(presenceEvents(ann, 'quiet/2').length, 0, 'no $join/$leave with events: false')
})

test('memory: hostile presence requests and user ids are refused or harmless', async t => {
  const { app, url } = await presenceApp(t)
  const c = await as(t, url, 'x')
  const bad: unknown[] = [undefined, {}, { topic: 1 }, { topic: '' }, { topic: 'x'.repeat(300) }, { topic: 'rooms/\ud800' }, [], { topic: ['rooms/1'] }]
  for (const data of bad) {
    const r = await c.request('$presence', 'get', data)
    assert.equal(r.code, 'VALIDATION_ERROR', JSON.stringify(data))
  }
  for (const action of ['set', '__proto__', 'constructor', 'toString']) {
    assert.equal((await c.request('$presence', action, { topic: 'rooms/1' })).code, 'ACTION_NOT_FOUND', action)
  }
  for (const topic of ['__proto__', 'constructor', 'rooms/__proto__/x', 'rooms']) {
    assert.equal((await presenceGet(c, topic)).code, 'TOPIC_NOT_FOUND', topic)
  }
  assert.equal((await presenceGet(c, 'rooms/__proto__')).code, 'FORBIDDEN')
  // Users' own topics are never a client's to subscribe.
  for (const topic of ['$user/x', '$disconnect/x']) assert.equal((await subscribe(c, topic)).code, 'TOPIC_NOT_FOUND', topic)
  // Prototype names as users and rooms are ordinary strings.
  const proto = await as(t, url, '__proto__')
  const ctor = await as(t, url, 'constructor')
  await subscribe(proto, 'rooms/__proto__')
  await subscribe(ctor, 'rooms/__proto__')
  assert.deepEqual((await presenceGet(ctor, 'rooms/__proto__')).data.members.map((m: Frame) => m.user).sort(), ['__proto__', 'constructor'])
  await app.drizzle.publishToUser('__proto__', 'to proto')
  assert.deepEqual(await proto.waitFor(f => f.topic === '$user'), { topic: '$user', data: 'to proto' })
  assert.equal(ctor.frames.filter(f => f.topic === '$user').length, 0)
  assert.equal(({} as Record<string, unknown>).polluted, undefined)
  // A user id that cannot be one (huge, lone surrogate) refuses the upgrade; the server goes on.
  for (const user of ['u'.repeat(201), 'u'.repeat(10_000)]) {
    const ws = new WebSocket(url, { headers: { 'x-user': user } })
    ws.on('error', () => {})
    const [, res] = await once(ws, 'unexpected-response') as [unknown, { statusCode: number }]
    assert.equal(res.statusCode, 500, 'refused')
    ws.terminate()
  }
  await assert.rejects(app.drizzle.publishToUser('u'.repeat(201), 1), { code: 'FST_DRIZZLE_INVALID_USER' })
  await assert.rejects(app.drizzle.publishToUser(null as never, 1), { code: 'FST_DRIZZLE_INVALID_USER' })
  await assert.rejects(app.drizzle.publishToUser('a\ud800', 1), { code: 'FST_DRIZZLE_INVALID_USER' })
  await assert.rejects(app.drizzle.disconnectUser({} as never), { code: 'FST_DRIZZLE_INVALID_USER' })
  await assert.rejects(app.drizzle.disconnectUser('x', { code: 1006 }), { code: 'FST_DRIZZLE_INVALID_OPTION' })
  await assert.rejects(app.drizzle.disconnectUser('x', { reason: 'r'.repeat(200) }), { code: 'FST_DRIZZLE_INVALID_OPTION' })
  await assert.rejects(app.drizzle.publishToUser('x', 1, { event: 5 as never }), { code: 'FST_DRIZZLE_INVALID_OPTION' })
  assert.equal((await c.request('$topic', 'subscribe', { topic: 'rooms/ok' })).data.subscribed, true, 'still serving')
})

test('a bad presence option fails at declaration with FST_DRIZZLE_INVALID_TOPIC', async t => {
  const app = Fastify()
  t.after(() => app.close())
  await app.register(drizzle)
  for (const presence of ['yes', null, [], { event: false }, { events: 'no' }]) {
    assert.throws(() => app.drizzle.topic(`bad/${JSON.stringify(presence)}`, { presence } as never), { code: 'FST_DRIZZLE_INVALID_TOPIC' }, JSON.stringify(presence))
  }
  app.drizzle.topic('off', { presence: false })
  await app.ready()
  await assert.rejects(app.drizzle.presence('off'), { code: 'TOPIC_NOT_FOUND' })
})

test('identify: runs after the app\'s hooks; a throw refuses the upgrade; numbers become strings; none gives null', async t => {
  const app = Fastify()
  app.decorateRequest('account', null)
  app.addHook('preHandler', async (request) => { (request as unknown as { account: unknown }).account = request.headers['x-account'] })
  await app.register(drizzle, {
    heartbeatInterval: 0,
    identify: async (request) => {
      const account = (request as unknown as { account?: string }).account
      if (account === 'banned') throw Object.assign(new Error('banned'), { statusCode: 401 })
      return account === '7' ? 7 : account
    }
  })
  app.drizzle.resource('me', { who: (_m, ctx) => ({ user: ctx.connection.user }) })
  t.after(() => app.close())
  const url = await listen(app)
  const seven = await connect(t, url, { headers: { 'x-account': '7' } })
  assert.deepEqual((await seven.request('me', 'who')).data, { user: '7' })
  const none = await connect(t, url)
  assert.deepEqual((await none.request('me', 'who')).data, { user: null })
  const ws = new WebSocket(url, { headers: { 'x-account': 'banned' } })
  ws.on('error', () => {})
  const [, res] = await once(ws, 'unexpected-response') as [unknown, { statusCode: number }]
  assert.equal(res.statusCode, 401)
  ws.terminate()
  await assert.rejects(async () => { await Fastify().register(drizzle, { identify: 'x' as never }) }, { code: 'FST_DRIZZLE_INVALID_OPTION' })
})

test('memory: publishToUser reaches every connection of the user and nobody else; disconnectUser closes them with the code', async t => {
  const { app, url } = await presenceApp(t)
  const [a1, a2, b] = [await as(t, url, 'a'), await as(t, url, 'a'), await as(t, url, 'b')]
  await app.drizzle.publishToUser('a', { n: 1 }, { event: 'note' })
  for (const c of [a1, a2]) assert.deepEqual(await c.waitFor(f => f.topic === '$user'), { topic: '$user', data: { n: 1 }, event: 'note' })
  await app.drizzle.disconnectUser('a', { code: 4001, reason: 'logout' })
  assert.deepEqual(await Promise.all([a1.closed, a2.closed]), [4001, 4001])
  await app.drizzle.disconnectUser('b')
  assert.equal(await b.closed, 4000)
  assert.equal(b.frames.length, 0)
  await app.drizzle.publishToUser('nobody-here', 1)
})

test('client: presence(topic), join and leave events on a subscription, never given to data listeners', async t => {
  const { url } = await presenceApp(t)
  const clientAs = (user: string) => {
    const client = new DrizzleClient(() => new WebSocket(url, { headers: { 'x-user': user } }), { reconnect: false })
    t.after(() => client.close())
    return client
  }
  const ann = clientAs('ann')
  const bob = clientAs('bob')
  const data: unknown[] = []
  const joins: PresenceMember[] = []
  const leaves: PresenceMember[] = []
  const sub = ann.subscribe('rooms/c', d => data.push(d))
  sub.on('join', member => joins.push(member))
  const offLeave = sub.on('leave', member => leaves.push(member))
  await sub.ready
  await waitFor('ann\'s own $join', () => joins.length === 1)
  const stopBob = bob.subscribe('rooms/c', () => {})
  await stopBob.ready
  await waitFor('bob\'s $join', () => joins.length === 2)
  assert.deepEqual(joins.map(m => m.user), ['ann', 'bob'])
  assert.deepEqual((await ann.presence('rooms/c')).map(m => m.user).sort(), ['ann', 'bob'])
  stopBob()
  await waitFor('bob\'s $leave', () => leaves.length === 1)
  assert.equal(leaves[0]?.user, 'bob')
  assert.deepEqual(data, [], 'presence frames are not data')
  offLeave()
  const carl = clientAs('carl')
  const stopCarl = carl.subscribe('rooms/c', () => {})
  await stopCarl.ready
  await waitFor('carl\'s $join', () => joins.length === 3)
  stopCarl()
  await assert.rejects(bob.presence('rooms/c'), { code: 'FORBIDDEN' })
  await assert.rejects(bob.presence('plain/c'), { code: 'TOPIC_NOT_FOUND' })
  await waitFor('carl gone', async () => (await ann.presence('rooms/c')).length === 1)
  assert.equal(leaves.length, 1, 'a removed leave listener is not called')
})

test('AsyncAPI: $presence.get, the $join/$leave messages of presence topics with events, and the $user channel', async t => {
  const { app } = await presenceApp(t)
  const doc = app.drizzle.asyncapi({ serverUrl: 'ws://127.0.0.1:3000' }) as any
  const diagnostics = await new Parser().validate(JSON.stringify(doc))
  assert.deepEqual(diagnostics.filter(d => d.severity === 0), [], 'a valid AsyncAPI 3.0 document')
  const channel = (title: string) => Object.values(doc.channels as Record<string, any>).find(c => c.title === title)
  assert.deepEqual(Object.keys(channel('rooms/:id').messages).sort(), ['join', 'leave', 'publication'])
  assert.equal(channel('rooms/:id').messages.join.payload.properties.event.const, '$join')
  assert.deepEqual(Object.keys(channel('quiet/:id').messages), ['publication'], 'events: false has no join/leave')
  assert.deepEqual(Object.keys(channel('plain/:id').messages), ['publication'])
  assert.ok(channel('$user') !== undefined, 'the $user channel, with identify')
  const get = Object.values(doc.operations as Record<string, any>).find(o => o.title === '$presence.get')
  assert.ok(get !== undefined)
  const send = Object.values(doc.operations as Record<string, any>).find(o => o.title === 'publish rooms/:id')
  assert.equal(send.messages.length, 3)
})

// ---- Redis: two instances ----------------------------------------------------------------------

function prefixFor (): string {
  return `test:presence:${randomUUID()}:`
}

async function redisKeys (prefix: string): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await (redis as Redis).scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    cursor = next
    keys.push(...batch)
  } while (cursor !== '0')
  return keys.sort()
}

/** Two instances on one Redis prefix. */
async function pair (t: TestContext, prefix = prefixFor(), presenceTtl?: number) {
  const broker = (): Broker => redisBroker({ url: REDIS_URL, prefix, presenceTtl })
  const a = await presenceApp(t, { broker: broker() })
  const b = await presenceApp(t, { broker: broker() })
  return { prefix, a, b }
}

/**
 * Publishes a marker from each instance and waits for both on every client: Redis delivers what one
 * connection sent in order, so every presence event either instance sent before is in by then.
 */
async function settle (apps: App[], topic: string, clients: TestClient[]): Promise<void> {
  const markers = apps.map(() => randomUUID())
  await Promise.all(apps.map((x, i) => x.app.drizzle.publish(topic, markers[i])))
  for (const c of clients) for (const m of markers) await c.waitFor(f => f.data === m, 5000)
}

test('redis: members of both instances are listed on either within 1 s; $join and $leave reach every subscriber once', { skip, timeout: 30_000 }, async t => {
  const { a, b } = await pair(t)
  const [a1, a2, b1, b2] = [await as(t, a.url, 'a1'), await as(t, a.url, 'a2'), await as(t, b.url, 'b1'), await as(t, b.url, 'b2')]
  const everyone = [a1, a2, b1, b2]
  const started = Date.now()
  for (const c of everyone) await subscribe(c, 'rooms/r')
  for (const c of everyone) {
    const members = (await presenceGet(c, 'rooms/r')).data.members as Frame[]
    assert.deepEqual(members.map(m => m.user).sort(), ['a1', 'a2', 'b1', 'b2'])
  }
  assert.ok(Date.now() - started < 1000, `listed everywhere within 1 s (took ${Date.now() - started} ms)`)
  assert.deepEqual(byConnection(await a.app.drizzle.presence('rooms/r')), byConnection(await b.app.drizzle.presence('rooms/r')))
  await a2.request('$topic', 'unsubscribe', { topic: 'rooms/r' })
  b2.terminate()
  await waitFor('b2 gone from presence', async () => (await a.app.drizzle.presence('rooms/r')).length === 2)
  const stayed = [a1, b1]
  await settle([a, b], 'rooms/r', stayed)
  for (const c of stayed) {
    const events = presenceEvents(c, 'rooms/r').map(f => `${f.event as string} ${f.data.user as string}`)
    // Each subscriber sees the joins of those who came after it, and every leave, once each.
    const joinsSeen = ['a1', 'a2', 'b1', 'b2'].slice(['a1', 'a2', 'b1', 'b2'].indexOf(c === a1 ? 'a1' : 'b1'))
    assert.deepEqual(events.filter(e => e.startsWith('$join')).sort(), joinsSeen.map(u => `$join ${u}`), `joins seen by ${c === a1 ? 'a1' : 'b1'}`)
    assert.deepEqual(events.filter(e => e.startsWith('$leave')).sort(), ['$leave a2', '$leave b2'])
  }
  // The refusals are the same on Redis.
  assert.equal((await presenceGet(a2, 'rooms/r')).code, 'FORBIDDEN')
  assert.equal((await presenceGet(a1, 'plain/r')).code, 'TOPIC_NOT_FOUND')
})

test('redis: publishToUser and disconnectUser reach all three connections of a user on two instances, and nobody else, from outside too', { skip, timeout: 30_000 }, async t => {
  const { prefix, a, b } = await pair(t)
  const mine = [await as(t, a.url, '42'), await as(t, a.url, '42'), await as(t, b.url, '42')]
  const others = [await as(t, a.url, '43'), await as(t, b.url), await as(t, b.url, '4')]
  const channel = (topic: string) => prefix + topic
  // Both instances subscribed Redis to the user's topics once its first connection opened.
  await waitFor('user channels subscribed on both instances', async () => {
    const counts = await (redis as Redis).pubsub('NUMSUB', channel('$user/42'), channel('$disconnect/42')) as Array<string | number>
    return Number(counts[1]) === 2 && Number(counts[3]) === 2
  })
  await a.app.drizzle.publishToUser('42', { n: 1 }, { event: 'note' })
  await b.app.drizzle.publishToUser(42, { n: 2 })
  await (redis as Redis).publish(channel('$user/42'), '{"data":{"n":3},"event":"outside"}')
  await run('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'PUBLISH', channel('$user/42'), '{"data":{"n":4},"event":"cli"}'], { timeout: 5000 })
  // A Python job, as PROTOCOL.md shows it (skipped loudly where python3-redis is missing, outside CI).
  const noPython = await pythonMissing('redis')
  if (noPython === undefined) {
    await python('import json, sys, redis\nredis.Redis(host="127.0.0.1", port=6379).publish(sys.argv[1], json.dumps({"data": {"n": 5}, "event": "py"}))', [channel('$user/42')])
  }
  const expected = noPython === undefined ? [1, 2, 3, 4, 5] : [1, 2, 3, 4]
  for (const c of mine) {
    await c.waitFor(f => f.data?.n === expected.at(-1))
    const got = c.frames.filter(f => f.topic === '$user')
    assert.deepEqual(got.map(f => f.data.n).sort(), expected, 'each exactly once')
    assert.deepEqual(got.find(f => f.data.n === 1), { topic: '$user', data: { n: 1 }, event: 'note' })
  }
  // A marker to every connection proves the others got nothing before it.
  await a.app.drizzle.publish('__all__', 'end')
  for (const c of others) {
    await c.waitFor(f => f.data === 'end')
    assert.equal(c.frames.filter(f => f.topic === '$user').length, 0)
  }
  await b.app.drizzle.disconnectUser('42', { code: 4001, reason: 'banned' })
  assert.deepEqual(await Promise.all(mine.map(c => c.closed)), [4001, 4001, 4001])
  // From an outside publisher: a fresh set of connections, closed by one PUBLISH.
  const again = [await as(t, a.url, '42'), await as(t, b.url, '42'), await as(t, b.url, '42')]
  await waitFor('user channels subscribed again', async () => {
    const counts = await (redis as Redis).pubsub('NUMSUB', channel('$disconnect/42')) as Array<string | number>
    return Number(counts[1]) === 2
  })
  await (redis as Redis).publish(channel('$disconnect/42'), '{"data":{"code":4003,"reason":"revoked"}}')
  assert.deepEqual(await Promise.all(again.map(c => c.closed)), [4003, 4003, 4003])
  const defaults = [await as(t, a.url, '42'), await as(t, b.url, '42')]
  await waitFor('user channels subscribed a third time', async () => {
    const counts = await (redis as Redis).pubsub('NUMSUB', channel('$disconnect/42')) as Array<string | number>
    return Number(counts[1]) === 2
  })
  // Garbage code and reason from outside: disconnected all the same, with the default code.
  await (redis as Redis).publish(channel('$disconnect/42'), '{"data":{"code":"x","reason":7}}')
  assert.deepEqual(await Promise.all(defaults.map(c => c.closed)), [4000, 4000])
  for (const c of others) assert.equal(c.closeCode, undefined, 'the others stay connected')
})

// ---- Redis: instances that die without closing -------------------------------------------------

/** Forks a fixture with env; resolves with the child once it sent `ready` (a message type). */
async function start (fixture: string, env: Record<string, string>, ready: string, t: TestContext): Promise<{ child: ChildProcess, message: Record<string, unknown> }> {
  const child = fork(fileURLToPath(new URL(`./fixtures/${fixture}`, import.meta.url)), [], {
    execArgv: ['--import', 'tsx'], env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  t.after(() => { killNow(child) })
  const message = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${fixture} sent no "${ready}" within 30 s`)), 30_000)
    child.on('message', (m: Record<string, unknown>) => { if (m.type === ready) { clearTimeout(timer); resolve(m) } })
    child.once('exit', code => { clearTimeout(timer); reject(new Error(`${fixture} exited (${code})`)) })
  })
  return { child, message }
}

function killNow (child: ChildProcess): void {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
}

async function sigkill (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
}

/** The presence keys under a prefix, by kind: instances (ZSET), members (one HASH per topic), topics (one SET per instance). */
async function presenceKeys (prefix: string) {
  const keys = await redisKeys(prefix)
  return {
    all: keys,
    instances: await (redis as Redis).zcard(`${prefix}$presence:instances`),
    topicSets: keys.filter(k => k.startsWith(`${prefix}$presence:topics:`)).length,
    members: async (topic: string) => await (redis as Redis).hlen(`${prefix}$presence:members:${topic}`)
  }
}

test('redis: the members of an instance killed with SIGKILL disappear within presenceTtl, with one $leave each; nothing of it stays', { skip, timeout: 60_000 }, async t => {
  const prefix = prefixFor()
  const ttl = 1000
  const a = await presenceApp(t, { broker: redisBroker({ url: REDIS_URL, prefix, presenceTtl: ttl }) })
  const watcher = await as(t, a.url, 'watcher')
  await subscribe(watcher, 'rooms/k')
  const { child, message } = await start('presence-instance.ts', { PREFIX: prefix, PRESENCE_TTL: String(ttl) }, 'listening', t)
  const doomed = [await as(t, message.url as string, 'd1'), await as(t, message.url as string, 'd2')]
  for (const c of doomed) {
    c.ws.on('error', () => {}) // the reset when the process dies
    await subscribe(c, 'rooms/k')
  }
  for (const user of ['d1', 'd2']) await watcher.waitFor(f => f.event === '$join' && f.data.user === user)
  assert.equal((await a.app.drizzle.presence('rooms/k')).length, 3)

  const killedAt = Date.now()
  await sigkill(child)
  await waitFor('the killed instance\'s members gone from presence', async () => (await a.app.drizzle.presence('rooms/k')).length === 1, ttl + 5000)
  const gone = Date.now() - killedAt
  for (const user of ['d1', 'd2']) await watcher.waitFor(f => f.event === '$leave' && f.data.user === user, (4 * ttl) / 3 + 5000)
  const left = Date.now() - killedAt
  t.diagnostic(`presenceTtl ${ttl} ms: members gone after ${gone} ms, $leave after ${left} ms`)
  assert.ok(gone <= ttl + 500, `gone within presenceTtl (+ scheduling slack): ${gone} ms`)
  await settle([a], 'rooms/k', [watcher])
  for (const user of ['d1', 'd2']) assert.equal(watcher.frames.filter(f => f.event === '$leave' && f.data.user === user).length, 1, `one $leave for ${user}`)
  const keys = await presenceKeys(prefix)
  assert.equal(keys.instances, 1, 'only the live instance is listed')
  assert.equal(keys.topicSets, 1)
  assert.equal(await keys.members('rooms/k'), 1)
})

test('redis: no zombie after many kill/restart cycles of an instance, killed at any moment of its joins', { skip, timeout: 600_000 }, async t => {
  // 25 in the suite (each cycle starts a process: ~2 s here); PRESENCE_KILL_CYCLES=100 for the full count.
  const cycles = Number(process.env.PRESENCE_KILL_CYCLES ?? 25)
  const parallel = 4
  const prefix = prefixFor()
  const ttl = 1000
  const a = await presenceApp(t, { broker: redisBroker({ url: REDIS_URL, prefix, presenceTtl: ttl }) })
  const watcher = await as(t, a.url, 'watcher')
  await subscribe(watcher, 'rooms/z')
  const began = Date.now()
  const cycle = async (n: number): Promise<void> => {
    const env = { PREFIX: prefix, PRESENCE_TTL: String(ttl), TOPIC: 'rooms/z', MEMBERS: '3' }
    if (n % 2 === 0) {
      // Killed once its members are in.
      const { child } = await start('presence-member.ts', env, 'joined', t)
      await sigkill(child)
    } else {
      // Killed at a moment of its start-up or of its joins, whatever it had written by then.
      const child = fork(fileURLToPath(new URL('./fixtures/presence-member.ts', import.meta.url)), [], {
        execArgv: ['--import', 'tsx'], env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'ignore', 'ipc']
      })
      t.after(() => { killNow(child) })
      await Promise.race([once(child, 'message'), new Promise(resolve => setTimeout(resolve, 300 + (n * 37) % 900))])
      await sigkill(child)
    }
  }
  for (let n = 0; n < cycles; n += parallel) await Promise.all(Array.from({ length: Math.min(parallel, cycles - n) }, (_, i) => cycle(n + i)))
  const killed = Date.now()
  await waitFor('only the live member listed', async () => (await a.app.drizzle.presence('rooms/z')).length === 1, (4 * ttl) / 3 + 5000)
  await waitFor('only the live instance\'s keys left', async () => {
    const keys = await presenceKeys(prefix)
    return keys.instances === 1 && keys.topicSets === 1 && await keys.members('rooms/z') === 1
  }, (4 * ttl) / 3 + 5000)
  await settle([a], 'rooms/z', [watcher])
  // Every member whose $join was published got exactly one $leave, and no $leave came without a join.
  const count = new Map<string, { join: number, leave: number }>()
  for (const f of presenceEvents(watcher, 'rooms/z')) {
    const c = count.get(f.data.connection) ?? { join: 0, leave: 0 }
    if (f.event === '$join') c.join++
    else c.leave++
    count.set(f.data.connection, c)
  }
  const joined = [...count.values()].filter(c => c.join > 0).length
  for (const [connection, c] of count) {
    if (connection === (await a.app.drizzle.presence('rooms/z'))[0]?.connection) continue
    assert.deepEqual(c, { join: 1, leave: 1 }, `one $join and one $leave for ${connection}`)
  }
  t.diagnostic(`${cycles} cycles in ${killed - began} ms; ${joined} members joined and left; clean ${Date.now() - killed} ms after the last kill`)
  assert.ok(joined >= cycles, 'the instances did join before being killed')
})

test('redis: joins and leaves made while Redis was away are applied when it is back, even empty: no zombie, no one missing', { skip: skip || (await hasCommand('redis-server') ? false : 'redis-server is not installed'), timeout: 60_000 }, async t => {
  const port = await freePort()
  let server = await startRedisServer(port)
  t.after(() => killServer(server))
  const url = `redis://127.0.0.1:${port}`
  const prefix = prefixFor()
  const a = await presenceApp(t, { broker: redisBroker({ url, prefix, presenceTtl: 900 }) })
  const b = await presenceApp(t, { broker: redisBroker({ url, prefix, presenceTtl: 900 }) })
  const [a1, a2, b1] = [await as(t, a.url, 'a1'), await as(t, a.url, 'a2'), await as(t, b.url, 'b1')]
  for (const c of [a1, a2, b1]) await subscribe(c, 'rooms/o')
  const users = async (x: App) => (await x.app.drizzle.presence('rooms/o')).map(m => m.user).sort()
  assert.deepEqual(await users(a), ['a1', 'a2', 'b1'])
  await killServer(server)
  a2.terminate()
  await waitFor('a2 closed on the server', () => a.app.drizzle.subscriberCount('rooms/o') === 1)
  const b2 = await as(t, b.url, 'b2')
  assert.equal((await subscribe(b2, 'rooms/o')).data.subscribed, true, 'subscribing works during the outage')
  await assert.rejects(a.app.drizzle.presence('rooms/o'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  server = await startRedisServer(port)
  await waitFor('presence rebuilt on the restarted (empty) Redis', async () => {
    const [ua, ub] = await Promise.all([users(a), users(b)]).catch(() => [[], []])
    return JSON.stringify(ua) === JSON.stringify(['a1', 'b1', 'b2']) && JSON.stringify(ub) === JSON.stringify(ua)
  }, 15_000)
})

// ---- shutdown ---------------------------------------------------------------------------------------

const REMOVAL_FAILED = 'presence: could not remove a member now; it expires with this instance'
const SHUTDOWN_SUMMARY = /^presence: could not remove \d+ members? at shutdown; they expire with this instance$/

/** An app whose log lines (pino's JSON, through a destination stream) are kept in `lines`. */
async function loggedApp (t: TestContext, options: DrizzleOptions): Promise<App & { lines: Array<Record<string, any>> }> {
  const lines: Array<Record<string, any>> = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line))
      done()
    }
  })
  const app = Fastify({ logger: { level: 'warn', stream } })
  await app.register(drizzle, { heartbeatInterval: 0, closeGracePeriod: 5000, ...options })
  app.drizzle.topic('rooms/:id', { presence: true })
  t.after(() => app.close())
  return { app, url: await listen(app), lines }
}

async function members (t: TestContext, url: string, count: number, topic: string): Promise<TestClient[]> {
  const clients: TestClient[] = []
  for (let i = 0; i < count; i++) clients.push(await connect(t, url))
  await Promise.all(clients.map(c => subscribe(c, topic)))
  return clients
}

test('shutdown: members leave before the broker closes, even when their removal is slow', async t => {
  // A broker of the app's own whose removals take a while and fail once it is closed, as a real one
  // going away does: closing it under removals still running would fail every one of them.
  const inner = memoryBroker()
  const presence = inner.presence as NonNullable<Broker['presence']>
  let closed = false
  let removed = 0
  const broker: Broker = {
    ...inner,
    presence: {
      ...presence,
      async leave (topic, member, announce) {
        await new Promise(resolve => setTimeout(resolve, 50))
        if (closed) throw new Error('broker closed')
        await presence.leave(topic, member, announce)
        removed++
      }
    },
    async close () { closed = true; await inner.close() }
  }
  const { app, url, lines } = await loggedApp(t, { broker })
  await members(t, url, 30, 'rooms/d')
  await app.close()
  assert.equal(removed, 30, 'every member was removed before the broker closed')
  assert.deepEqual(lines.filter(l => String(l.msg).startsWith('presence:')), [])
})

test('redis: at shutdown with Redis away, the members not removed are one warning with their count; a failure before it is one line as always', { skip: await hasCommand('redis-server') ? false : 'redis-server is not installed', timeout: 60_000 }, async t => {
  const port = await freePort()
  const server = await startRedisServer(port)
  t.after(() => killServer(server))
  const { app, url, lines } = await loggedApp(t, { broker: redisBroker({ url: `redis://127.0.0.1:${port}`, prefix: prefixFor(), commandTimeout: 200 }) })
  const count = 40
  const clients = await members(t, url, count, 'rooms/s')
  assert.equal((await app.drizzle.presence('rooms/s')).length, count)
  await killServer(server)
  const perMember = () => lines.filter(l => l.msg === REMOVAL_FAILED)
  // Outside shutdown, a removal that failed is news of its own, with its topic.
  await (clients[0] as TestClient).request('$topic', 'unsubscribe', { topic: 'rooms/s' })
  await waitFor('the failed removal logged', () => perMember().length === 1, 10_000)
  assert.equal(perMember()[0]?.topic, 'rooms/s')
  await app.close()
  assert.equal(perMember().length, 1, 'shutdown logged no line per member')
  const summaries = lines.filter(l => SHUTDOWN_SUMMARY.test(String(l.msg)))
  assert.equal(summaries.length, 1, 'one line for the batch')
  assert.equal(summaries[0]?.level, 40, 'at warn')
  assert.equal(summaries[0]?.members, count - 1, 'the members not removed, counted')
})

// ---- bounded memory -------------------------------------------------------------------------------

/** global.gc, exposed at run time when the file was not started with --expose-gc. */
function exposeGc (): () => void {
  const existing = (globalThis as { gc?: () => void }).gc
  if (typeof existing === 'function') return existing
  v8.setFlagsFromString('--expose-gc')
  return vm.runInNewContext('gc') as () => void
}

test('redis: 20,000 connect/subscribe/close cycles leave the heap and the Redis keys at their baseline', { skip, timeout: 600_000 }, async t => {
  const gc = exposeGc()
  const total = Number(process.env.PRESENCE_SOAK_CYCLES ?? 20_000)
  const concurrency = 100
  const prefix = prefixFor()
  const a = await presenceApp(t, { broker: redisBroker({ url: REDIS_URL, prefix }), maxConnections: 1000 })
  const keeper = await as(t, a.url, 'keeper')
  await subscribe(keeper, 'rooms/soak')
  const cycleOnce = async (n: number): Promise<void> => {
    const ws = new WebSocket(a.url, { headers: { 'x-user': `u${n % 500}` } })
    await once(ws, 'open')
    const done = new Promise<void>((resolve, reject) => {
      ws.on('message', (raw: Buffer) => {
        const frame = JSON.parse(raw.toString()) as Frame
        if (frame.request_id === 1) frame.data?.subscribed === true ? resolve() : reject(new Error(JSON.stringify(frame)))
      })
    })
    ws.send(JSON.stringify({ resource: '$topic', action: 'subscribe', data: { topic: n % 2 === 0 ? 'rooms/soak' : `rooms/soak-${n % 100}` }, request_id: 1 }))
    await done
    // Terminated: the server sees the close at once, as when a browser tab dies.
    const closed = once(ws, 'close')
    ws.terminate()
    await closed
  }
  const runCycles = async (from: number, to: number): Promise<void> => {
    let next = from
    await Promise.all(Array.from({ length: concurrency }, async () => {
      while (next < to) await cycleOnce(next++)
    }))
  }
  const settled = async (): Promise<number> => {
    await waitFor('every cycle\'s connection closed and left', async () =>
      a.app.drizzle.connections.size === 1 && (await a.app.drizzle.presence('rooms/soak')).length === 1, 10_000)
    // Leaves are sent without waiting: the keeper's marker after them on the same Redis connection says they ran.
    await settle([a], 'rooms/soak', [keeper])
    keeper.frames.length = 0
    for (let i = 0; i < 3; i++) gc()
    return process.memoryUsage().heapUsed
  }
  await runCycles(0, 1000) // warm-up: code paths compiled, pools filled
  const baseline = await settled()
  const keysBefore = await redisKeys(prefix)
  const began = Date.now()
  await runCycles(1000, 1000 + total)
  const elapsed = Date.now() - began
  const after = await settled()
  const keysAfter = await redisKeys(prefix)
  t.diagnostic(`${total} cycles in ${elapsed} ms; heap ${(baseline / 1048576).toFixed(1)} -> ${(after / 1048576).toFixed(1)} MiB; keys ${keysBefore.length} -> ${keysAfter.length}`)
  assert.deepEqual(keysAfter, keysBefore, 'the same Redis keys as before the cycles')
  assert.equal(await (redis as Redis).hlen(`${prefix}$presence:members:rooms/soak`), 1)
  assert.ok(after - baseline < 8 * 1048576, `heap grew by ${((after - baseline) / 1048576).toFixed(1)} MiB`)
})
