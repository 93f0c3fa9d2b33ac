import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { amqpBroker } from '../lib/brokers/amqp.js'
import { cluster, clusterSuite, settle, type Backend } from './helpers/cluster.js'
import { python, pythonMissing } from './helpers/python.js'
import { RABBIT_URL, deleteExchanges, rabbitSkipReason, rawPublish, uniqueExchange } from './helpers/rabbit.js'

// Two Fastify instances on one real RabbitMQ (Bagou's setup), with clients over real sockets.

const skip = await rabbitSkipReason()
const WORKER = fileURLToPath(new URL('./fixtures/amqp-worker.ts', import.meta.url))
const exchanges: string[] = []
test.after(() => skip === false && exchanges.length > 0 ? deleteExchanges(exchanges) : undefined)

const backend: Backend = {
  skip,
  namespace: () => {
    const exchange = uniqueExchange('cluster')
    exchanges.push(exchange)
    return exchange
  },
  broker: exchange => amqpBroker({ url: RABBIT_URL, exchange }),
  publishRaw: (exchange, topic, body) => rawPublish(exchange, topic, body)
}

clusterSuite('amqp', backend)

test('amqp: a Celery-style task publishes with pika to every instance', { skip, timeout: 30_000 }, async t => {
  const { namespace: exchange, clients } = await cluster(t, backend)
  const missing = await pythonMissing('pika')
  if (missing !== undefined) return t.skip(missing)
  await python([
    'import json, sys, pika',
    'connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))',
    'channel = connection.channel()',
    'channel.basic_publish(exchange=sys.argv[2], routing_key="todos", body=json.dumps({"data": {"task": "done"}, "event": "celery"}))',
    'connection.close()'
  ].join('\n'), [`${RABBIT_URL}/%2F`, exchange])
  await settle(backend, exchange, Object.values(clients))
  for (const c of [clients.a1, clients.b1]) assert.deepEqual(c.publications('todos'), [{ topic: 'todos', data: { task: 'done' }, event: 'celery' }])
  for (const c of [clients.a2, clients.b2]) assert.equal(c.publications('todos').length, 0)
})

test('amqp: a worker with no Fastify publishes through a standalone broker and exits', { skip, timeout: 30_000 }, async t => {
  const { namespace: exchange, clients } = await cluster(t, backend)
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER, RABBIT_URL, exchange, 'rooms/1', '{"job":"nightly"}'], { stdio: 'ignore' })
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  const [code] = await once(child, 'exit')
  clearTimeout(timer)
  assert.equal(code, 0)
  for (const c of [clients.a2, clients.b2]) {
    assert.deepEqual(await c.waitFor(f => f.topic === 'rooms/1'), { topic: 'rooms/1', data: { job: 'nightly' }, event: 'from-worker' })
  }
})
