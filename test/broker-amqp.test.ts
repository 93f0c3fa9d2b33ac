import { test } from 'node:test'
import type { TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import amqplib from 'amqplib'
import { amqpBroker } from '../lib/brokers/amqp.js'
import type { AmqpBrokerOptions } from '../lib/brokers/amqp.js'
import type { Broker } from '../lib/brokers/types.js'
import {
  RABBIT_URL,
  canStartPrivateRabbit,
  deleteExchanges,
  fakeSink,
  freePort,
  privateRabbit,
  rabbitSkipReason,
  rawPublish,
  uniqueExchange,
  waitFor
} from './helpers/rabbit.js'
import type { FakeSink } from './helpers/rabbit.js'
import { python, pythonMissing } from './helpers/python.js'
import { recordingLogger } from './helpers/logger.js'
import { build, inject } from './helpers/client.js'

const skip = await rabbitSkipReason()
const WORKER = fileURLToPath(new URL('./fixtures/amqp-worker.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** A broker attached to a fake sink on `exchange`, closed after the test. */
async function attached (t: TestContext, exchange: string, options: AmqpBrokerOptions = {}): Promise<{ broker: Broker, sink: FakeSink }> {
  const broker = amqpBroker({ exchange, ...options })
  const sink = fakeSink()
  t.after(() => broker.close())
  await broker.attach(sink)
  return { broker, sink }
}

/** A fresh exchange, deleted after the test. */
function exchangeFor (t: TestContext, label: string, url = RABBIT_URL): string {
  const exchange = uniqueExchange(label)
  t.after(() => deleteExchanges([exchange], url).catch(() => {}))
  return exchange
}

/**
 * Publishes a sentinel after the messages under test and waits for it: a queue keeps the order of
 * one publisher's messages, so once the sentinel is in, everything published before it has been
 * handled. This checks "not delivered" without sleeping.
 */
async function flush (exchange: string, topic: string, ...sinks: FakeSink[]): Promise<void> {
  const marker = `sentinel-${Math.random()}`
  await rawPublish(exchange, topic, JSON.stringify({ data: marker }))
  for (const sink of sinks) {
    await waitFor(() => sink.deliveries.some((d) => d.data === marker), 'the sentinel')
    sink.deliveries.splice(sink.deliveries.findIndex((d) => d.data === marker), 1)
  }
}

function warnings (sink: FakeSink): string[] {
  return sink.entries
    .filter((e) => e.level === 'warn')
    .map((e) => (e.obj as { reason?: string }).reason ?? '')
}

test('options are validated with coded errors that say what was received', () => {
  const cases: Array<[unknown, RegExp]> = [
    [null, /"options": expected an object, received null/],
    [{ url: 'http://example.com' }, /"url": expected an amqp:\/\/ or amqps:\/\/ URL/],
    [{ url: 42 }, /"url".*received number \(42\)/],
    [{ exchange: '' }, /"exchange": expected a non-empty string/],
    [{ exchange: 'x'.repeat(256) }, /"exchange"/],
    [{ log: {} }, /"log": expected a logger with error, warn, info and debug methods/],
    [{ maxMessageBytes: -1 }, /"maxMessageBytes": expected a positive integer, received number \(-1\)/],
    [{ publishTimeout: 1.5 }, /"publishTimeout"/],
    [{ reconnectMinDelay: 1000, reconnectMaxDelay: 10 }, /"reconnectMaxDelay": expected a number of milliseconds >= reconnectMinDelay/]
  ]
  for (const [options, message] of cases) {
    assert.throws(() => amqpBroker(options as AmqpBrokerOptions), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_DRIZZLE_INVALID_OPTION')
      assert.match(err.message, message)
      return true
    })
  }
  // The password never appears in an error.
  assert.throws(() => amqpBroker({ url: 'http://u:secret@host' }), (err: Error) => !err.message.includes('secret'))
  assert.equal(amqpBroker().name, 'amqp')
  assert.equal(amqpBroker({ log: console }).name, 'amqp')
})

test('a publication from one instance reaches the others once, and not its own sink', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'pair')
  const a = await attached(t, exchange)
  const b = await attached(t, exchange)
  await a.broker.subscribe('todos')
  await b.broker.subscribe('todos')

  const payloads: unknown[] = [{ id: 1, tags: ['x'] }, [1, 'two', null], 'a string', 42, null, true]
  for (const data of payloads) await a.broker.publish('todos', data, { event: 'created' })
  await b.broker.publish('todos', { from: 'b' })

  await waitFor(() => b.sink.deliveries.length === payloads.length, 'B to receive every kind of JSON')
  assert.deepEqual(b.sink.deliveries, payloads.map((data) => ({ topic: 'todos', data, event: 'created' })))
  await waitFor(() => a.sink.deliveries.length === 1, 'A to receive B\'s publication')
  assert.deepEqual(a.sink.deliveries, [{ topic: 'todos', data: { from: 'b' }, event: undefined }])

  // Nothing else arrives: own publications are skipped, each one is delivered once.
  await flush(exchange, 'todos', a.sink, b.sink)
  assert.equal(a.sink.deliveries.length, 1)
  assert.equal(b.sink.deliveries.length, payloads.length)
  // An undefined payload travels as null, as the wire format says.
  await a.broker.publish('todos', undefined)
  await waitFor(() => b.sink.deliveries.length === payloads.length + 1, 'the undefined payload')
  assert.equal(b.sink.deliveries.at(-1)?.data, null)
})

test('a foreign publisher (plain JSON without origin, as pika sends it) is delivered', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'foreign')
  const { broker, sink } = await attached(t, exchange)
  await broker.subscribe('todos')

  await rawPublish(exchange, 'todos', '{"data": {"id": 1}, "event": "created"}')
  await rawPublish(exchange, 'todos', '{"data": [1, 2]}')
  await waitFor(() => sink.deliveries.length === 2, 'two foreign messages')
  assert.deepEqual(sink.deliveries, [
    { topic: 'todos', data: { id: 1 }, event: 'created' },
    { topic: 'todos', data: [1, 2], event: undefined }
  ])

  await t.test('from Python with pika', async (t) => {
    const missing = await pythonMissing('pika')
    if (missing !== undefined) {
      t.skip(missing)
      return
    }
    const script = [
      'import json, pika, sys',
      'c = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))',
      'c.channel().basic_publish(exchange=sys.argv[2], routing_key="todos", body=json.dumps({"data": {"py": True}}))',
      'c.close()'
    ].join('\n')
    await python(script, [`${RABBIT_URL}/%2F`, exchange])
    await waitFor(() => sink.deliveries.some((d) => JSON.stringify(d.data) === '{"py":true}'), 'the pika message')
  })
})

test('malformed messages are logged and dropped; the process and later messages are fine', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'garbage')
  const { broker, sink } = await attached(t, exchange, { maxMessageBytes: 1024 })
  await broker.subscribe('todos')

  const garbage: Array<string | Buffer> = [
    'not json',
    '[]',
    '{"nodata":1}',
    '{"data":1,"event":5}',
    '"just a string"',
    Buffer.from([0x7b, 0x22, 0x64, 0x61, 0x74, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), // {"data":"<ff fe>"}
    JSON.stringify({ data: 'x'.repeat(2000) })
  ]
  for (const body of garbage) await rawPublish(exchange, 'todos', body)
  // A hostile but well-formed message: the __proto__ key is removed, never merged into a prototype.
  await rawPublish(exchange, 'todos', '{"__proto__":{"polluted":1},"data":{"__proto__":{"polluted":2},"ok":true}}')
  await rawPublish(exchange, 'todos', '{"data":{"id":7}}')

  await waitFor(() => sink.deliveries.length === 2, 'the two well-formed messages')
  assert.deepEqual(sink.deliveries.map((d) => d.data), [{ ok: true }, { id: 7 }])
  assert.equal(Object.hasOwn(sink.deliveries[0]?.data as object, '__proto__'), false)
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined)
  assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false)

  const reasons = warnings(sink)
  assert.equal(reasons.length, garbage.length)
  for (const expected of [/not JSON/, /not a JSON object/, /no "data"/, /"event" is not a string/, /not a JSON object/, /UTF-8/, /exceeds the limit of 1024/]) {
    assert.ok(reasons.some((r) => expected.test(r)), `a warning matching ${expected}`)
  }
  // The log line carries the topic and the size, never the body.
  const big = sink.entries.find((e) => /exceeds/.test((e.obj as { reason?: string }).reason ?? ''))
  assert.deepEqual(Object.keys(big?.obj as object).sort(), ['broker', 'bytes', 'reason', 'topic'])
  assert.ok(!JSON.stringify(sink.entries).includes('x'.repeat(100)))
})

test('a sink that throws is logged and does not stop later deliveries', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'throws')
  const broker = amqpBroker({ exchange })
  t.after(() => broker.close())
  const log = recordingLogger()
  const received: unknown[] = []
  await broker.attach({
    log,
    deliver (_topic, data) {
      received.push(data)
      if (data === 'boom') throw new Error('sink failed')
    }
  })
  await broker.subscribe('todos')
  await rawPublish(exchange, 'todos', '{"data":"boom"}')
  await rawPublish(exchange, 'todos', '{"data":"after"}')
  await waitFor(() => received.length === 2, 'both messages')
  assert.ok(log.entries.some((e) => e.level === 'error' && e.msg === 'Delivering a broker message failed'))
})

test('only subscribed topics are delivered, unsubscribe stops delivery, exchanges are isolated', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'topics')
  const other = exchangeFor(t, 'other')
  const { broker, sink } = await attached(t, exchange)
  const neighbour = await attached(t, other)
  await broker.subscribe('a')
  await neighbour.broker.subscribe('a')
  // Subscribing twice is harmless (the plugin reference-counts, but a direct user may not).
  await broker.subscribe('b')
  await broker.subscribe('b')

  await rawPublish(exchange, 'a', '{"data":"a1"}')
  await rawPublish(exchange, 'b', '{"data":"b1"}')
  await rawPublish(exchange, 'c', '{"data":"c1"}')
  await rawPublish(other, 'a', '{"data":"other-a"}')
  await waitFor(() => sink.deliveries.length === 2, 'a1 and b1')
  await flush(exchange, 'a', sink)
  assert.deepEqual(sink.deliveries.map((d) => `${d.topic}:${String(d.data)}`), ['a:a1', 'b:b1'])
  await waitFor(() => neighbour.sink.deliveries.length === 1, 'the other exchange\'s message')
  assert.deepEqual(neighbour.sink.deliveries.map((d) => d.data), ['other-a'])

  await broker.unsubscribe('b')
  await broker.unsubscribe('never-subscribed')
  await rawPublish(exchange, 'b', '{"data":"b2"}')
  await flush(exchange, 'a', sink)
  assert.deepEqual(sink.deliveries.map((d) => d.data), ['a1', 'b1'])
})

test('limits: routing key length, event type, message size, bytes awaiting confirmation', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'long')
  const { broker } = await attached(t, exchange, { maxPendingBytes: 200 })
  const long = 'é'.repeat(128) // 256 bytes
  await assert.rejects(broker.subscribe(long), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await assert.rejects(broker.publish(long, 1), { code: 'FST_DRIZZLE_INVALID_TOPIC' })
  await assert.rejects(broker.publish('ok', 1, { event: 5 as unknown as string }), { code: 'FST_DRIZZLE_INVALID_OPTION' })
  await assert.rejects(broker.publish('ok', 'x'.repeat(2 * 1024 * 1024)), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE', message: /exceeds maxMessageBytes/ })
  await broker.publish('é'.repeat(127), 1)
  // Unconfirmed publications are bounded: beyond maxPendingBytes, publish refuses at once.
  const results = await Promise.allSettled([broker.publish('ok', 'y'.repeat(150)), broker.publish('ok', 'y'.repeat(150))])
  assert.equal(results[0]?.status, 'fulfilled')
  assert.equal(results[1]?.status, 'rejected')
  assert.match(String((results[1] as PromiseRejectedResult).reason.message), /await confirmation/)
})

test('a standalone worker in a child process publishes and exits on its own', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'worker')
  const { broker, sink } = await attached(t, exchange)
  await broker.subscribe('jobs')

  const child = spawn(process.execPath, ['--import', 'tsx', WORKER, RABBIT_URL, exchange, 'jobs', '{"done":true}'], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const killer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  t.after(() => { clearTimeout(killer); child.kill('SIGKILL') })
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => {
    child.once('exit', (code, signal) => resolve([code, signal]))
  })
  assert.equal(signal, null, 'the worker was killed: it did not exit on its own')
  assert.equal(code, 0, stderr)

  await waitFor(() => sink.deliveries.length === 1, 'the worker\'s publication')
  assert.deepEqual(sink.deliveries, [{ topic: 'jobs', data: { done: true }, event: 'from-worker' }])
})

test('close: idempotent, quick, and later publications reject with BROKER_CLOSED', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'close')
  const { broker } = await attached(t, exchange)
  await broker.subscribe('todos')
  await broker.publish('todos', 1)
  const started = Date.now()
  await Promise.all([broker.close(), broker.close()])
  await broker.close()
  assert.ok(Date.now() - started < 1000)
  await assert.rejects(broker.publish('todos', 1), { code: 'FST_DRIZZLE_BROKER_CLOSED' })
  await assert.rejects(broker.attach(fakeSink()), { code: 'FST_DRIZZLE_BROKER_CLOSED' })
  await broker.subscribe('todos') // no-op after close, never throws during shutdown
  await broker.unsubscribe('todos')

  // A broker never connected closes at once too.
  const unused = amqpBroker({ exchange })
  await unused.close()
  await assert.rejects(unused.publish('todos', 1), { code: 'FST_DRIZZLE_BROKER_CLOSED' })
})

test('a channel error (exchange declared with another type) is logged and recovered from', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'precondition')
  // Someone declared our exchange as fanout: asserting it as direct fails with PRECONDITION_FAILED.
  const connection = await amqplib.connect(RABBIT_URL)
  t.after(() => connection.close().catch(() => {}))
  const channel = await connection.createChannel()
  await channel.assertExchange(exchange, 'fanout', { durable: true })

  const { broker, sink } = await attached(t, exchange, { reconnectMinDelay: 20, reconnectMaxDelay: 100 })
  await broker.subscribe('todos')
  await assert.rejects(broker.publish('todos', 1), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  const errors = () => sink.entries.filter((e) => e.level === 'error')
  assert.equal(errors().length, 1)
  assert.match(String((errors()[0]?.obj as { err?: Error }).err?.message), /PRECONDITION_FAILED/)

  // Once the operator fixes it, the broker declares the exchange itself and binds its queue again.
  await channel.deleteExchange(exchange)
  await waitFor(() => sink.entries.some((e) => e.level === 'info' && e.msg === 'RabbitMQ connection restored'), 'recovery')
  assert.equal(errors().length, 1, 'the outage is logged once, not once per attempt')
  await rawPublish(exchange, 'todos', '{"data":"fixed"}')
  await waitFor(() => sink.deliveries.length === 1, 'delivery after recovery')
})

const restartSkip = skip !== false
  ? skip
  : (await canStartPrivateRabbit()) || process.env.CI !== undefined
      ? false
      : 'rabbitmq-server is not installed, so no private node can be started to restart'

test('outages of a private RabbitMQ node: absent at start, restarted mid-run', { skip: restartSkip, timeout: 60_000 }, async (t) => {
  const rabbit = await privateRabbit()
  t.after(() => rabbit.destroy())
  const fast = { url: rabbit.url, reconnectMinDelay: 50, reconnectMaxDelay: 300 }
  const exchange = uniqueExchange('restart')

  // 1. RabbitMQ absent: attach resolves (the server can start), publish fails fast, subscribe is recorded.
  const sink = fakeSink()
  const broker = amqpBroker({ ...fast, exchange })
  t.after(() => broker.close())
  await broker.attach(sink)
  await broker.subscribe('todos')
  const refusedAt = Date.now()
  await assert.rejects(broker.publish('todos', 'lost'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  assert.ok(Date.now() - refusedAt < 500, 'publish during an outage rejects at once')
  const errors = () => sink.entries.filter((e) => e.level === 'error')
  const restored = () => sink.entries.filter((e) => e.level === 'info' && e.msg === 'RabbitMQ connection restored')
  assert.equal(errors().length, 1)
  assert.ok(!JSON.stringify(errors()[0]?.obj).includes('guest:guest'), 'the password is not logged')

  // 2. The node comes up: the broker connects, declares exchange and queue, applies the subscription.
  await rabbit.start()
  await waitFor(() => restored().length === 1, 'the first connection', 10_000)
  assert.equal(errors().length, 1, 'failed attempts are logged once')
  await rawPublish(exchange, 'todos', '{"data":"first"}', rabbit.url)
  await waitFor(() => sink.deliveries.length === 1, 'delivery on the new node')

  // 3. Restart mid-run: publications are refused while it is down, never queued.
  await broker.subscribe('gone')
  await rabbit.stopApp()
  await waitFor(() => errors().length === 2, 'the connection loss to be noticed')
  await assert.rejects(broker.publish('todos', 'lost'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  await broker.subscribe('late') // recorded during the outage, applied on reconnect
  await broker.unsubscribe('gone') // forgotten during the outage, not bound again
  await rabbit.startApp()
  await waitFor(() => restored().length === 2, 'reconnection after the restart', 10_000)
  assert.equal(errors().length, 2)

  // 4. A fresh queue with the right bindings: a fresh publisher and another instance reach it.
  await rawPublish(exchange, 'gone', '{"data":"gone"}', rabbit.url)
  await rawPublish(exchange, 'todos', '{"data":"second"}', rabbit.url)
  await rawPublish(exchange, 'late', '{"data":"late"}', rabbit.url)
  const other = amqpBroker({ ...fast, exchange })
  t.after(() => other.close())
  await other.publish('todos', 'from-other')
  await waitFor(() => sink.deliveries.length === 4, 'deliveries after the restart')
  assert.deepEqual(sink.deliveries.map((d) => d.data), ['first', 'second', 'late', 'from-other'])
  await broker.publish('todos', 'works-again')

  // An operator deletes our queue: RabbitMQ cancels the consumer and the broker starts over.
  const bindings = await rabbit.ctl('list_bindings', '-q', '--no-table-headers', 'source_name', 'destination_name')
  const queue = bindings.split('\n').map((line) => line.split('\t')).find(([source]) => source === exchange)?.[1]
  assert.ok(queue, `our queue among the bindings:\n${bindings}`)
  await rabbit.ctl('delete_queue', queue)
  await waitFor(() => restored().length === 3, 'a new queue after the consumer was cancelled')
  await rawPublish(exchange, 'todos', '{"data":"third"}', rabbit.url)
  await waitFor(() => sink.deliveries.length === 5, 'delivery on the new queue')

  // A memory alarm makes RabbitMQ block publishers: the publication in flight times out, later
  // ones are refused at once, and publishing resumes when the alarm clears.
  const blockedBroker = amqpBroker({ ...fast, exchange, publishTimeout: 300 })
  t.after(() => blockedBroker.close())
  await blockedBroker.publish('todos', 'before-alarm')
  await rabbit.ctl('set_vm_memory_high_watermark', '0')
  await assert.rejects(blockedBroker.publish('todos', 'stuck'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE', message: /did not confirm within 300 ms|blocks publishers/ })
  await assert.rejects(blockedBroker.publish('todos', 'refused'), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE', message: /blocks publishers/ })
  await rabbit.ctl('set_vm_memory_high_watermark', '0.4')
  await waitFor(async () => blockedBroker.publish('todos', 'unblocked').then(() => true, () => false), 'publishing after the alarm', 10_000)
  await blockedBroker.close()
  sink.deliveries.length = 0

  // 5. close() is quick even with the server gone, and leaves nothing running.
  await rabbit.stopApp()
  await waitFor(() => errors().length === 4, 'the last loss')
  const closing = Date.now()
  await broker.close()
  await other.close()
  assert.ok(Date.now() - closing < 1000)
})

test('standalone publish with RabbitMQ absent rejects promptly and close() is quick', async (t) => {
  const port = await freePort() // nothing listens there
  const log = recordingLogger()
  const broker = amqpBroker({ url: `amqp://guest:secret@127.0.0.1:${port}`, log })
  t.after(() => broker.close())
  const started = Date.now()
  await assert.rejects(broker.publish('todos', 1), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'FST_DRIZZLE_BROKER_UNAVAILABLE')
    assert.match(err.message, /ECONNREFUSED/)
    return true
  })
  await assert.rejects(broker.publish('todos', 1), { code: 'FST_DRIZZLE_BROKER_UNAVAILABLE' })
  assert.equal(log.entries.filter((e) => e.level === 'error').length, 1)
  assert.ok(!JSON.stringify(log.entries.map((e) => e.obj)).includes('secret'))
  await broker.close()
  assert.ok(Date.now() - started < 1000)
})

test('the plugin refuses, where it enters, a topic RabbitMQ cannot carry: never subscribed: true', { skip }, async (t) => {
  const exchange = exchangeFor(t, 'entry')
  const app = await build(t, { broker: amqpBroker({ exchange }) }, a => {
    a.drizzle.topic('rooms/:id')
    a.drizzle.resource('chat', { async join (message, ctx) { return await ctx.subscribe((message.data as { topic: string }).topic) } })
  })
  await app.ready()
  const client = await inject(t, app)
  const topic = 'rooms/' + 'é'.repeat(126) // 132 characters, 258 bytes of UTF-8
  const refused = await client.request('$topic', 'subscribe', { topic })
  assert.equal(refused.code, 'VALIDATION_ERROR')
  assert.equal(refused.statusCode, 400)
  assert.deepEqual(refused.details, [{ path: '/data/topic', message: 'expected at most 255 bytes of UTF-8, the AMQP routing key limit' }])
  assert.equal(app.drizzle.subscriberCount(topic), 0)
  await assert.rejects(app.drizzle.publish(topic, 1), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: /255 bytes/ })
  // A handler's ctx.subscribe throws the server API's error; uncaught, the client sees it as its own mistake.
  const joined = await client.request('chat', 'join', { topic })
  assert.equal(joined.code, 'VALIDATION_ERROR')
  assert.match(joined.error, /^Invalid topic: expected at most 255 bytes of UTF-8/)
  const fits = 'rooms/' + 'é'.repeat(124) // 254 bytes
  assert.deepEqual((await client.request('$topic', 'subscribe', { topic: fits })).data, { topic: fits, subscribed: true })
})
