import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import drizzle from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { build, connect, listen, type TestClient } from './helpers/client.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'
import { canReach, waitFor } from './helpers/redis.js'

// Traces (DESIGN section 12, README "Observability") with the real OpenTelemetry SDK: a
// BasicTracerProvider exporting to memory, two instances on the shared Redis. No mock anywhere.

const REDIS_URL = 'redis://127.0.0.1:6379'
const skipRedis = await canReach(REDIS_URL) ? false : 'Redis is not reachable on 127.0.0.1:6379'

// An app made ready before any SDK exists looks for one once, at ready, and finds none: it never traces.
const beforeSdk = Fastify()
await beforeSdk.register(drizzle, { heartbeatInterval: 0 })
beforeSdk.drizzle.resource('todos', { get: async () => ({ ok: true }) })
await beforeSdk.ready()

const exporter = new InMemorySpanExporter()
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
assert.ok(trace.setGlobalTracerProvider(provider))

function newTraceparent (sampled = true): { traceId: string, spanId: string, traceparent: string } {
  const traceId = randomBytes(16).toString('hex')
  const spanId = randomBytes(8).toString('hex')
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-${sampled ? '01' : '00'}` }
}

function spans (predicate: (span: ReadableSpan) => boolean): ReadableSpan[] {
  return exporter.getFinishedSpans().filter(predicate)
}

async function oneSpan (what: string, predicate: (span: ReadableSpan) => boolean): Promise<ReadableSpan> {
  await waitFor(what, () => spans(predicate).length > 0)
  const found = spans(predicate)
  assert.equal(found.length, 1, `one ${what}`)
  return found[0] as ReadableSpan
}

function resources (app: FastifyInstance): void {
  app.drizzle.topic('rooms/:id', { history: { size: 100, ttl: 60_000 } })
  app.drizzle.resource('todos', {
    get: async () => ({ ok: true }),
    crash: async () => { throw new Error('database down') },
    create: async (message, ctx) => {
      ctx.log.info('creating')
      await ctx.publish('todos', message.data, { event: 'created' })
      return message.data
    },
    watch: async (_m, ctx) => { await ctx.subscribe('todos'); return true },
    // A history topic: its publications get their position from the broker, traced as any other.
    say: async (message, ctx) => { await ctx.publish('rooms/1', message.data); return true },
    // What the app's own instrumentation would see: the active span, and the trace a span it starts joins.
    peek: async () => {
      const own = trace.getTracer('app').startSpan('app.work')
      own.end()
      return { active: trace.getActiveSpan() !== undefined, traceId: own.spanContext().traceId }
    }
  })
}

/** Two instances on one Redis prefix; a client of b watches `todos`; a raw subscriber records what the broker carries. */
async function twoInstances (t: TestContext, logs: LogEntry[] = []) {
  const prefix = `test:tracing:${randomUUID()}:`
  const a = await build(t, { broker: redisBroker({ url: REDIS_URL, prefix }) }, resources, { logger: undefined, loggerInstance: recordingLogger(logs) })
  const b = await build(t, { broker: redisBroker({ url: REDIS_URL, prefix }) }, resources)
  const onA = await connect(t, await listen(a))
  const onB = await connect(t, await listen(b))
  await onB.request('todos', 'watch')
  const raw = new Redis(REDIS_URL)
  t.after(() => raw.disconnect())
  const carried: Array<Record<string, unknown>> = []
  raw.on('message', (_channel: string, message: string) => carried.push(JSON.parse(message)))
  await raw.subscribe(`${prefix}todos`)
  const probe = new Redis(REDIS_URL)
  t.after(() => probe.disconnect())
  await waitFor('b and the raw client subscribed', async () => {
    const [, count] = await probe.pubsub('NUMSUB', `${prefix}todos`) as [string, number]
    return Number(count) >= 2
  }, 10_000)
  return { prefix, a, b, onA, onB, raw: probe, carried }
}

async function created (client: TestClient, data: Record<string, unknown>, traceparent?: string): Promise<void> {
  const requestId = randomUUID()
  client.send({ resource: 'todos', action: 'create', data, request_id: requestId, ...(traceparent === undefined ? {} : { traceparent }) })
  await client.reply(requestId)
}

test('a frame\'s traceparent: the action span continues it, the publication carries its span through Redis, and the delivering instance links to it', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  const logs: LogEntry[] = []
  const { onA, onB, carried } = await twoInstances(t, logs)
  const { traceId, spanId, traceparent } = newTraceparent()
  await created(onA, { title: 'milk' }, traceparent)
  await onB.waitFor(f => f.topic === 'todos' && f.data.title === 'milk')

  const action = await oneSpan('action span', s => s.name === 'todos/create' && s.spanContext().traceId === traceId)
  assert.equal(action.kind, SpanKind.SERVER)
  assert.equal(action.parentSpanContext?.spanId, spanId, 'child of the frame\'s span')
  assert.equal(action.parentSpanContext?.isRemote, true)
  assert.equal(action.attributes['rpc.system'], 'fastify-drizzle')
  assert.equal(action.attributes['rpc.service'], 'todos')
  assert.equal(action.attributes['rpc.method'], 'create')
  assert.equal(action.attributes['drizzle.status_code'], 200)
  assert.equal(action.status.code, SpanStatusCode.UNSET)

  const publish = await oneSpan('publish span', s => s.name === 'publish' && s.spanContext().traceId === traceId)
  assert.equal(publish.kind, SpanKind.PRODUCER)
  assert.equal(publish.parentSpanContext?.spanId, action.spanContext().spanId, 'made in the action')
  assert.equal(publish.attributes['messaging.system'], 'redis')
  assert.equal(publish.attributes['messaging.destination.name'], 'todos')
  const sent = `00-${traceId}-${publish.spanContext().spanId}-01`
  await waitFor('the raw subscriber to get the message', () => carried.length > 0)
  assert.deepEqual(carried[0], { data: { title: 'milk' }, event: 'created', origin: carried[0]?.origin, traceparent: sent })

  const process = await oneSpan('delivery span', s => s.name === 'process' && s.links.some(l => l.context.spanId === publish.spanContext().spanId))
  assert.equal(process.kind, SpanKind.CONSUMER)
  assert.equal(process.links[0]?.context.traceId, traceId)
  assert.notEqual(process.spanContext().traceId, traceId, 'a trace of its own, linked')
  assert.equal(process.parentSpanContext, undefined)
  assert.equal(process.attributes['messaging.destination.name'], 'todos')
  assert.equal(process.attributes['messaging.operation.type'], 'process')
  assert.equal(process.attributes['drizzle.deliveries'], 1)
  // The instance that published delivered locally: it makes no delivery span of its own.
  assert.equal(spans(s => s.name === 'process' && s.links.some(l => l.context.traceId === traceId)).length, 1)

  // Log lines of the action carry its trace.
  const ids = { trace_id: traceId, span_id: action.spanContext().spanId, trace_flags: '01' }
  const completed = logs.find(e => e.msg === 'action completed' && e.obj.action === 'create')
  assert.deepEqual({ trace_id: completed?.obj.trace_id, span_id: completed?.obj.span_id, trace_flags: completed?.obj.trace_flags }, ids)
})

test('without a traceparent an action starts a trace; an outside publisher without one is delivered with no delivery span', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  const { prefix, onA, onB, raw } = await twoInstances(t)
  exporter.reset()
  await onA.request('todos', 'get')
  const action = await oneSpan('action span', s => s.name === 'todos/get')
  assert.equal(action.parentSpanContext, undefined)
  await raw.publish(`${prefix}todos`, JSON.stringify({ data: 'plain' }))
  // A malformed traceparent is ignored, never a reason to drop the publication.
  await raw.publish(`${prefix}todos`, JSON.stringify({ data: 'odd', traceparent: 'not-a-trace' }))
  await onB.waitFor(f => f.topic === 'todos' && f.data === 'odd')
  assert.ok(onB.publications('todos').some(f => f.data === 'plain'))
  assert.equal(spans(s => s.name === 'process').length, 0)
})

test('an unsampled traceparent: nothing recorded, nothing carried', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  const { onA, onB, carried } = await twoInstances(t)
  exporter.reset()
  const { traceparent } = newTraceparent(false)
  await created(onA, { title: 'quiet' }, traceparent)
  await onB.waitFor(f => f.topic === 'todos' && f.data.title === 'quiet')
  await waitFor('the raw subscriber to get the message', () => carried.length > 0)
  assert.equal('traceparent' in (carried[0] as object), false)
  assert.equal(exporter.getFinishedSpans().length, 0)
})

test('without a context manager nothing can be made active: the handler sees no active span, as OpenTelemetry\'s no-op manager gives', async (t) => {
  // This file registers no context manager (test/tracing-context.test.ts does): the plugin then skips
  // activating the span, which `context.with` could not have done either. The action is still traced.
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  exporter.reset()
  const { traceparent, traceId } = newTraceparent()
  const requestId = randomUUID()
  client.send({ resource: 'todos', action: 'peek', request_id: requestId, traceparent })
  const { data } = await client.reply(requestId)
  assert.equal(data.active, false)
  assert.notEqual(data.traceId, traceId, 'the app\'s own span starts a trace of its own')
  const action = await oneSpan('action span', s => s.name === 'todos/peek')
  assert.equal(action.spanContext().traceId, traceId)
})

test('history topics are traced as others (memory broker): publish span, its traceparent handed back with the position, a linked delivery span', async (t) => {
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  await client.request('$topic', 'subscribe', { topic: 'rooms/1' })
  exporter.reset()
  const { traceId, spanId, traceparent } = newTraceparent()
  await app.drizzle.publish('rooms/1', { n: 1 }, { traceparent })
  await client.waitFor(f => f.topic === 'rooms/1' && f.offset === 1)
  const publish = await oneSpan('publish span', s => s.name === 'publish')
  assert.equal(publish.spanContext().traceId, traceId)
  assert.equal(publish.parentSpanContext?.spanId, spanId)
  assert.equal(publish.attributes['messaging.destination.template'], 'rooms/:id')
  // The memory broker hands the publication back to be delivered in offset order: that delivery is linked.
  const process = await oneSpan('delivery span', s => s.name === 'process')
  assert.deepEqual(process.links.map(l => l.context.spanId), [publish.spanContext().spanId])
  assert.equal(process.attributes['drizzle.deliveries'], 1)

  // Made in an action: the action's span is the parent.
  const requestId = randomUUID()
  client.send({ resource: 'todos', action: 'say', data: { n: 2 }, request_id: requestId, traceparent })
  await client.reply(requestId)
  const action = await oneSpan('action span', s => s.name === 'todos/say')
  const second = await oneSpan('second publish span', s => s.name === 'publish' && s.parentSpanContext?.spanId === action.spanContext().spanId)
  assert.equal(second.spanContext().traceId, traceId)
})

test('history topics through Redis: the FCALL message carries the publish span\'s traceparent, kept in the stream, and the other instance links to it', { skip: skipRedis, timeout: 30_000 }, async (t) => {
  const prefix = `test:tracing:${randomUUID()}:`
  const a = await build(t, { broker: redisBroker({ url: REDIS_URL, prefix }) }, resources)
  const b = await build(t, { broker: redisBroker({ url: REDIS_URL, prefix }) }, resources)
  const onA = await connect(t, await listen(a))
  const onB = await connect(t, await listen(b))
  await onB.request('$topic', 'subscribe', { topic: 'rooms/1' })
  const raw = new Redis(REDIS_URL)
  t.after(() => raw.disconnect())
  exporter.reset()
  const { traceId, traceparent } = newTraceparent()
  const requestId = randomUUID()
  onA.send({ resource: 'todos', action: 'say', data: { text: 'hi' }, request_id: requestId, traceparent })
  await onA.reply(requestId)
  await onB.waitFor(f => f.topic === 'rooms/1' && f.data.text === 'hi')
  const action = await oneSpan('action span', s => s.name === 'todos/say' && s.spanContext().traceId === traceId)
  const publish = await oneSpan('publish span', s => s.name === 'publish' && s.spanContext().traceId === traceId)
  assert.equal(publish.parentSpanContext?.spanId, action.spanContext().spanId)
  assert.equal(publish.attributes['messaging.system'], 'redis')
  const sent = `00-${traceId}-${publish.spanContext().spanId}-01`
  // What drizzle_publish stored (and published): the message as given, its position appended.
  const entries = await raw.xrange(`${prefix}rooms/1:~stream`, '-', '+') as Array<[string, string[]]>
  assert.equal(entries.length, 1)
  const stored = JSON.parse(entries[0]?.[1][1] as string)
  assert.deepEqual({ ...stored, epoch: 'e' }, { data: { text: 'hi' }, traceparent: sent, offset: 1, epoch: 'e' })
  // b delivers it, linked to the publish span; a has no subscriber of rooms/1, so no broker subscription, no span.
  const process = await oneSpan('delivery span', s => s.name === 'process' && s.links.some(l => l.context.spanId === publish.spanContext().spanId))
  assert.equal(process.attributes['messaging.destination.name'], 'rooms/1')
  assert.equal(process.attributes['drizzle.deliveries'], 1)
})

test('a publication that cannot be serialized rejects, and its publish span ends with the error', async (t) => {
  // No history topic declared: the plain path serializes at once, before anything is delivered.
  const app = await build(t, {})
  exporter.reset()
  const { traceId, traceparent } = newTraceparent()
  await assert.rejects(app.drizzle.publish('todos', { n: 1n }, { traceparent }), TypeError)
  const publish = await oneSpan('publish span', s => s.name === 'publish')
  assert.equal(publish.spanContext().traceId, traceId)
  assert.equal(publish.status.code, SpanStatusCode.ERROR)
})

test('a failing action: 5xx marks the span as an error, with error.type', async (t) => {
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  exporter.reset()
  assert.equal((await client.request('todos', 'crash')).statusCode, 500)
  const action = await oneSpan('action span', s => s.name === 'todos/crash')
  assert.equal(action.status.code, SpanStatusCode.ERROR)
  assert.equal(action.attributes['error.type'], 'INTERNAL_ERROR')
  assert.equal(action.attributes['drizzle.status_code'], 500)
})

test('app.drizzle.publish with an explicit traceparent (e.g. from a job) parents its publish span on it', async (t) => {
  const app = await build(t, {}, resources)
  exporter.reset()
  const { traceId, spanId, traceparent } = newTraceparent()
  await app.drizzle.publish('todos', { n: 1 }, { traceparent })
  const publish = await oneSpan('publish span', s => s.name === 'publish')
  assert.equal(publish.spanContext().traceId, traceId)
  assert.equal(publish.parentSpanContext?.spanId, spanId)
  assert.equal(publish.attributes['messaging.system'], 'memory')
})

test('an app that became ready before the SDK was registered never traces, and `tracing: false` turns tracing off', async (t) => {
  t.after(() => beforeSdk.close())
  const off = await build(t, { tracing: false }, resources)
  exporter.reset()
  for (const app of [beforeSdk, off]) {
    const client = await connect(t, await listen(app))
    await client.request('todos', 'get')
    await app.drizzle.publish('todos', 1)
  }
  assert.equal(exporter.getFinishedSpans().length, 0)
})
