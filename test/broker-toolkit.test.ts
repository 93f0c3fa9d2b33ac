import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import fc from 'fast-check'
import { redisBroker, type RedisBrokerOptions } from '../lib/brokers/redis.js'
import { amqpBroker, type AmqpBrokerOptions } from '../lib/brokers/amqp.js'
import type { Broker } from '../lib/brokers/types.js'
import { backoffDelay } from '../lib/brokers/backoff.js'
import { backoffDelay as clientBackoffDelay } from '../lib/client/backoff.js'
import { MAX_TOPIC_LENGTH, checkTopic as brokerTopicRule } from '../lib/brokers/topic.js'
import { ConnectionState, TimeoutError, withTimeout } from '../lib/brokers/toolkit.js'
import { readOptions, positiveInteger, withDefault } from '../lib/brokers/options.js'
import { checkTopic as pluginTopicRule } from '../lib/topics.js'
import { MAX_NAME_LENGTH } from '../lib/protocol.js'
import { recordingLogger } from './helpers/logger.js'

// None of these tests connects anywhere: brokers open connections only at attach or at the first
// publication that gets past the checks, and every call below is refused by a check or needs none.

// Each broker with the longest topic it takes: the plugin's bound, or AMQP's 255-byte routing key.
const brokers: Array<[string, (options?: Record<string, unknown>) => Broker, string]> = [
  ['redis', (options) => redisBroker(options as RedisBrokerOptions), 'x'.repeat(MAX_TOPIC_LENGTH)],
  ['amqp', (options) => amqpBroker(options as AmqpBrokerOptions), 'x'.repeat(255)]
]

function codeOf (err: unknown): unknown {
  return (err as { code?: unknown }).code
}

// ---------------------------------------------------------------------------------------------
// Backoff

test('backoff: exponential ceiling from baseDelay, capped at maxDelay, full jitter from 0', () => {
  const top = (): number => 1 - Number.EPSILON
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(attempt, 100, 2000, top)), [99, 199, 399, 799, 1599, 1999, 1999])
  assert.deepEqual([0, 1, 5, 50].map((attempt) => backoffDelay(attempt, 100, 2000, () => 0)), [0, 0, 0, 0])
  assert.equal(backoffDelay(3, 100, 2000, () => 0.5), 400)
})

test('backoff: odd attempts stay within the first and the last window', () => {
  const top = (): number => 1 - Number.EPSILON
  assert.equal(backoffDelay(-3, 100, 5000, top), 99)
  assert.equal(backoffDelay(Number.NaN, 100, 5000, top), 99)
  assert.equal(backoffDelay(Number.POSITIVE_INFINITY, 100, 5000, top), 4999)
  assert.equal(backoffDelay(1e9, 100, 5000, top), 4999)
  assert.equal(backoffDelay(2.7, 100, 5000, top), 399)
})

test('backoff: every delay is a whole number in [0, min(maxDelay, baseDelay * 2^attempt))', () => {
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 10_000 }),
    fc.integer({ min: 1, max: 10_000 }),
    fc.integer({ min: 1, max: 600_000 }),
    fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    (attempt, baseDelay, maxDelay, draw) => {
      const delay = backoffDelay(attempt, baseDelay, maxDelay, () => draw)
      const ceiling = Math.min(maxDelay, baseDelay * 2 ** Math.min(attempt, 30))
      return Number.isInteger(delay) && delay >= 0 && delay < ceiling
    }
  ), { numRuns: 2000 })
})

test('backoff: the client\'s copy (its bundle may import only lib/client/) draws the same delays', () => {
  fc.assert(fc.property(
    fc.oneof(fc.integer({ min: -5, max: 100 }), fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, 2.7)),
    fc.integer({ min: 1, max: 10_000 }),
    fc.integer({ min: 1, max: 600_000 }),
    fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    (attempt, baseDelay, maxDelay, draw) =>
      clientBackoffDelay(attempt, baseDelay, maxDelay, () => draw) === backoffDelay(attempt, baseDelay, maxDelay, () => draw)
  ), { numRuns: 2000 })
})

test('backoff: with Math.random the delays spread over the whole window', () => {
  const delays = Array.from({ length: 2000 }, () => backoffDelay(4, 100, 5000))
  assert.ok(delays.every((d) => d >= 0 && d < 1600))
  assert.ok(Math.min(...delays) < 200, 'some delays near 0 (full jitter, not half)')
  assert.ok(Math.max(...delays) > 1400, 'some delays near the ceiling')
})

test('backoff is a leaf module the browser client can import: no imports at all', () => {
  const source = readFileSync(new URL('../lib/brokers/backoff.ts', import.meta.url), 'utf8')
  assert.doesNotMatch(source, /^\s*(import|export\s+[^\n]*\bfrom\b)/m)
  assert.doesNotMatch(source, /\brequire\s*\(|\bimport\s*\(/)
})

// ---------------------------------------------------------------------------------------------
// The topic rule

const badTopics: unknown[] = ['', 'x'.repeat(MAX_TOPIC_LENGTH + 1), 'é'.repeat(MAX_TOPIC_LENGTH + 1), 42, null, undefined, {}, ['todos'], true]

function refusal (check: () => unknown): string {
  try {
    check()
  } catch (err) {
    assert.equal(codeOf(err), 'FST_DRIZZLE_INVALID_TOPIC')
    return (err as Error).message
  }
  return assert.fail('the topic was accepted')
}

test('the brokers\' topic rule is the plugin\'s: same bound, same refusals, same messages', () => {
  assert.equal(MAX_TOPIC_LENGTH, MAX_NAME_LENGTH)
  for (const topic of badTopics) {
    assert.equal(refusal(() => brokerTopicRule(topic)), refusal(() => pluginTopicRule(topic)), `for ${String(topic)}`)
  }
  for (const topic of ['a', 'todos/42', 'x'.repeat(MAX_TOPIC_LENGTH)]) {
    assert.doesNotThrow(() => brokerTopicRule(topic))
    assert.doesNotThrow(() => pluginTopicRule(topic))
  }
})

for (const [name, create, longest] of brokers) {
  test(`${name} broker: publish and subscribe refuse every topic the plugin refuses, with the plugin's message`, async (t) => {
    const broker = create()
    t.after(() => broker.close())
    for (const topic of badTopics) {
      const expected = refusal(() => pluginTopicRule(topic))
      await assert.rejects(broker.publish(topic as string, 1), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: expected })
      await assert.rejects(broker.subscribe(topic as string), { code: 'FST_DRIZZLE_INVALID_TOPIC', message: expected })
    }
    // Accepted topics before attach are only recorded: nothing connects.
    await broker.subscribe('todos')
    await broker.subscribe(longest)
    await broker.unsubscribe('todos')
  })

  test(`${name} broker: a non-string event is refused before anything is sent`, async (t) => {
    const broker = create()
    t.after(() => broker.close())
    await assert.rejects(broker.publish('todos', 1, { event: 5 as unknown as string }), (err: Error) => {
      assert.equal(codeOf(err), 'FST_DRIZZLE_INVALID_OPTION')
      assert.match(err.message, /"event": expected a string, received number \(5\)/)
      return true
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Options

for (const [name, create] of brokers) {
  test(`${name} broker: an unknown option key is refused with a coded error naming the key`, () => {
    for (const key of ['comandTimeout', 'reconnectDelay', 'urls', '__proto__']) {
      const options = JSON.parse(`{${JSON.stringify(key)}: 5}`) as Record<string, unknown>
      assert.throws(() => create(options), (err: Error) => {
        assert.equal(codeOf(err), 'FST_DRIZZLE_INVALID_OPTION')
        assert.match(err.message, new RegExp(`^Invalid option "${key}": unknown option; known options are url, .*received number \\(5\\)$`))
        return true
      })
    }
    // Known keys given as undefined mean "the default", as in the plugin.
    assert.equal(create({ url: undefined, log: undefined }).name, name)
  })

  test(`${name} broker: option errors read like the plugin's (expected ..., received ...)`, () => {
    const cases: Array<[unknown, RegExp]> = [
      [null, /^Invalid option "options": expected an object, received null$/],
      [['url'], /^Invalid option "options": expected an object, received an array/],
      [{ maxMessageBytes: 0 }, /^Invalid option "maxMessageBytes": expected a positive integer, received number \(0\)$/],
      [{ maxMessageBytes: null }, /^Invalid option "maxMessageBytes": expected a positive integer, received null$/],
      [{ log: console.log }, /^Invalid option "log": expected a logger with error, warn, info and debug methods, received a function/],
      [{ url: 'http://user:secret@localhost:1' }, /^Invalid option "url": expected an? \w+:\/\/ or \w+:\/\/ URL, received a string \("http:\/\/user:\*\*\*@localhost:1\/"\)$/]
    ]
    for (const [options, message] of cases) {
      assert.throws(() => create(options as Record<string, unknown>), (err: Error) => {
        assert.equal(codeOf(err), 'FST_DRIZZLE_INVALID_OPTION')
        assert.match(err.message, message)
        return true
      })
    }
  })
}

test('readOptions fills in defaults and checks each given value', () => {
  const checks = { size: withDefault(10, positiveInteger()), timeout: withDefault(5, positiveInteger('milliseconds')) }
  assert.deepEqual(readOptions(undefined, checks), { size: 10, timeout: 5 })
  assert.deepEqual(readOptions({ size: 3 }, checks), { size: 3, timeout: 5 })
  assert.throws(() => readOptions({ timeout: 1.5 }, checks), /"timeout": expected a positive integer of milliseconds, received number \(1.5\)/)
  assert.throws(() => readOptions({ size: 1, other: 'x' }, checks), /"other": unknown option; known options are size, timeout, received a string \("x"\)/)
})

// ---------------------------------------------------------------------------------------------
// withTimeout

function activeTimers (): number {
  return process.getActiveResourcesInfo().filter((resource) => resource === 'Timeout').length
}

test('withTimeout settles as the promise does within the time, and leaves no timer', async () => {
  const before = activeTimers()
  assert.equal(await withTimeout(Promise.resolve(7), 1000, 'Server'), 7)
  await assert.rejects(withTimeout(Promise.reject(new Error('refused')), 1000, 'Server'), /^Error: refused$/)
  assert.equal(activeTimers(), before)
})

test('withTimeout rejects with a TimeoutError naming what did not answer, and leaves no timer', async () => {
  const before = activeTimers()
  const started = Date.now()
  await assert.rejects(withTimeout(new Promise(() => {}), 30, 'Server'), (err: unknown) => {
    assert.ok(err instanceof TimeoutError)
    assert.equal(err.message, 'Server did not answer within 30 ms')
    return true
  })
  assert.ok(Date.now() - started >= 25)
  assert.equal(activeTimers(), before)
  // A late rejection of the promise that lost the race is not unhandled.
  let rejectLate: (err: Error) => void = () => {}
  await assert.rejects(withTimeout(new Promise((resolve, reject) => { rejectLate = reject }), 5, 'Server'), TimeoutError)
  rejectLate(new Error('too late'))
  await new Promise((resolve) => setImmediate(resolve))
})

// ---------------------------------------------------------------------------------------------
// Connection state

test('connection state: an outage is logged once at error, its further failures at debug, its end once at info', () => {
  const log = recordingLogger()
  const state = new ConnectionState('Redis', () => log, { broker: 'redis' })
  assert.equal(state.status, 'idle')
  state.connecting()
  assert.equal(state.status, 'connecting')
  state.lost(new Error('ECONNREFUSED'), 'subscriber')
  state.lost(new Error('ECONNREFUSED'), 'publisher')
  state.lost(new Error('ECONNREFUSED again'), 'subscriber')
  assert.equal(state.status, 'reconnecting')
  assert.equal(state.reason, 'ECONNREFUSED again')
  assert.deepEqual(log.entries.map((e) => `${e.level}: ${e.msg ?? ''}`), [
    'error: cannot connect to Redis; publications fail until it is back, reconnecting',
    'debug: cannot connect to Redis, still retrying',
    'debug: cannot connect to Redis, still retrying'
  ])
  assert.equal(log.entries[0]?.obj.broker, 'redis')
  assert.equal(log.entries[0]?.obj.role, 'subscriber')

  state.up('subscriber')
  assert.equal(state.status, 'reconnecting', 'the publisher is still down')
  state.up('publisher')
  assert.equal(state.status, 'open')
  assert.equal(log.entries.filter((e) => e.level === 'info').length, 1)
  assert.equal(log.entries.at(-1)?.msg, 'Redis connection restored')

  state.lost(new Error('reset'))
  assert.equal(log.entries.at(-1)?.msg, 'Redis connection lost; publications fail until it is back, reconnecting')
  assert.equal(log.entries.filter((e) => e.level === 'error').length, 2)

  state.close()
  state.lost(new Error('after close'))
  state.up()
  assert.equal(state.status, 'closed')
  assert.equal(log.entries.length, 5, 'nothing is logged once closed')
})
