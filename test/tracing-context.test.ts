import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes, randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { context, trace } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import { build, connect, listen, type TestClient } from './helpers/client.js'
import { waitFor } from './helpers/redis.js'

// Traces with a context manager registered (as every OpenTelemetry Node SDK setup has one): the
// action's span is the active one while its handler runs, so the app's own spans nest in it, and an
// unsampled action passes its unsampled context on to them. test/tracing.test.ts covers the rest,
// without a context manager.

const manager = new AsyncLocalStorageContextManager().enable()
assert.ok(context.setGlobalContextManager(manager))
const exporter = new InMemorySpanExporter()
// The default sampler: parent-based, so the app's spans follow the action's decision.
assert.ok(trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })))

interface Seen { traceId: string, spanId: string, traceFlags: number }
const seen = (sc: { traceId: string, spanId: string, traceFlags: number } | undefined): Seen | undefined =>
  sc === undefined ? undefined : { traceId: sc.traceId, spanId: sc.spanId, traceFlags: sc.traceFlags }

function resources (app: FastifyInstance): void {
  app.drizzle.resource('todos', {
    // What the app's own instrumentation (a database client) sees and makes inside a handler.
    lookup: async (_m, ctx) => {
      await new Promise(resolve => setImmediate(resolve))
      const active = seen(trace.getActiveSpan()?.spanContext())
      const db = trace.getTracer('app').startSpan('db.query')
      const made = { active, db: seen(db.spanContext()), recording: db.isRecording() }
      db.end()
      await ctx.publish('todos', { looked: true })
      return made
    }
  })
}

function newTraceparent (sampled: boolean): { traceId: string, spanId: string, traceparent: string } {
  const traceId = randomBytes(16).toString('hex')
  const spanId = randomBytes(8).toString('hex')
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-${sampled ? '01' : '00'}` }
}

async function lookup (client: TestClient, traceparent?: string): Promise<{ active?: Seen, db: Seen, recording: boolean }> {
  const requestId = randomUUID()
  client.send({ resource: 'todos', action: 'lookup', request_id: requestId, ...(traceparent === undefined ? {} : { traceparent }) })
  return (await client.reply(requestId)).data
}

test('the action span is active in its handler: the app\'s own spans are its children', async (t) => {
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  exporter.reset()
  const { traceId, spanId, traceparent } = newTraceparent(true)
  const made = await lookup(client, traceparent)
  await waitFor('the action span', () => exporter.getFinishedSpans().some(s => s.name === 'todos/lookup'))
  const action = exporter.getFinishedSpans().find(s => s.name === 'todos/lookup')
  assert.equal(action?.parentSpanContext?.spanId, spanId)
  assert.deepEqual(made.active, seen(action?.spanContext()), 'the handler sees the action span as active')
  assert.equal(made.recording, true)
  const db = exporter.getFinishedSpans().find(s => s.name === 'db.query')
  assert.equal(db?.spanContext().traceId, traceId)
  assert.equal(db?.parentSpanContext?.spanId, action?.spanContext().spanId)
  const publish = exporter.getFinishedSpans().find(s => s.name === 'publish')
  assert.equal(publish?.parentSpanContext?.spanId, action?.spanContext().spanId)
})

test('an unsampled traceparent: the handler\'s own spans inherit the unsampled trace, nothing is recorded', async (t) => {
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  exporter.reset()
  const { traceId, spanId, traceparent } = newTraceparent(false)
  const made = await lookup(client, traceparent)
  // The active span is the action's own (unsampled, not recorded), in the frame's trace.
  assert.equal(made.active?.traceId, traceId)
  assert.notEqual(made.active?.spanId, spanId)
  assert.equal(made.active?.traceFlags, 0)
  assert.deepEqual({ traceId: made.db.traceId, traceFlags: made.db.traceFlags, recording: made.recording }, { traceId, traceFlags: 0, recording: false })
  assert.equal(exporter.getFinishedSpans().length, 0)
})

test('without a traceparent the action starts a trace, and the app\'s spans join it', async (t) => {
  const app = await build(t, {}, resources)
  const client = await connect(t, await listen(app))
  exporter.reset()
  const made = await lookup(client)
  await waitFor('the db span', () => exporter.getFinishedSpans().some(s => s.name === 'db.query'))
  const action = exporter.getFinishedSpans().find(s => s.name === 'todos/lookup')
  assert.equal(action?.parentSpanContext, undefined)
  assert.deepEqual(made.active, seen(action?.spanContext()))
  assert.equal(exporter.getFinishedSpans().find(s => s.name === 'db.query')?.parentSpanContext?.spanId, action?.spanContext().spanId)
})
