import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { promisify } from 'node:util'
import type { FastifyInstance } from 'fastify'
import Type from 'typebox'
import { Redis } from 'ioredis'
import { redisBroker } from '../lib/brokers/redis.js'
import { build, inject, listen, connect } from './helpers/client.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'
import { REDIS_URL, canReach, waitFor } from './helpers/redis.js'

// Typed publications (DESIGN section 11): a declared topic's schema is enforced on publish and on
// receipt from the broker.

const Score = Type.Object({ home: Type.Integer(), away: Type.Integer() })

function declare (app: FastifyInstance): void {
  app.drizzle.topic('scores/:match', { schema: Score })
  app.drizzle.topic('chat')
  app.drizzle.resource('game', {
    async goal (message, ctx) { await ctx.publish('scores/final', message.data); return { ok: true } }
  })
}

test('publishing data that fails a topic\'s schema rejects with FST_DRIZZLE_INVALID_PUBLICATION and delivers nothing', async t => {
  const app = await build(t, {}, declare)
  const fan = await inject(t, app)
  await fan.request('$topic', 'subscribe', { topic: 'scores/final' }, 1)
  await fan.request('$topic', 'subscribe', { topic: 'chat' }, 2)
  await assert.rejects(() => app.drizzle.publish('scores/final', { home: 'one', away: 0 }), (err: any) => {
    assert.equal(err.code, 'FST_DRIZZLE_INVALID_PUBLICATION')
    assert.equal(err.pattern, 'scores/:match')
    assert.deepEqual(err.details.map((d: { path: string }) => d.path), ['/data/home'])
    assert.match(err.message, /scores\/final/)
    return true
  })
  // Several topics at once: one failing schema stops the publication to all of them.
  await assert.rejects(() => app.drizzle.publish(['chat', 'scores/final'], { away: 1 }), { code: 'FST_DRIZZLE_INVALID_PUBLICATION' })
  // Topics without a schema and data that passes are delivered; they are the first frames to arrive.
  await app.drizzle.publish('scores/final', { home: 1, away: 0 })
  await app.drizzle.publish('chat', 'anything goes')
  await fan.waitFor(f => f.topic === 'chat')
  assert.deepEqual(fan.publications(), [{ topic: 'scores/final', data: { home: 1, away: 0 } }, { topic: 'chat', data: 'anything goes' }])
})

test('ctx.publish of invalid data fails the action with INTERNAL_ERROR (a server bug) and is logged with its paths', async t => {
  const logs: LogEntry[] = []
  const app = await build(t, {}, declare, { loggerInstance: recordingLogger(logs) })
  const client = await inject(t, app)
  const reply = await client.request('game', 'goal', { home: 1 }, 1)
  assert.equal(reply.code, 'INTERNAL_ERROR')
  const logged = logs.find(e => e.level === 'error' && (e.obj.err as { code?: string } | undefined)?.code === 'FST_DRIZZLE_INVALID_PUBLICATION')
  assert.ok(logged !== undefined)
  assert.deepEqual(await client.request('game', 'goal', { home: 1, away: 2 }, 2), { data: { ok: true }, request_id: 2 })
})

test('a topic schema that is not a schema object is refused at declaration', async t => {
  await assert.rejects(() => build(t, {}, app => { app.drizzle.topic('bad', { schema: 'string' as never }) }), { code: 'FST_DRIZZLE_INVALID_SCHEMA' })
})

const redisUp = await canReach(REDIS_URL)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}`

test('invalid data published by an outside process (redis-cli) reaches nobody and is logged once at warn, without the payload', { skip }, async t => {
  const prefix = `test:typed:${randomUUID()}:`
  const logs: LogEntry[] = []
  const app = await build(t, { broker: redisBroker({ url: REDIS_URL, prefix }) }, declare, { loggerInstance: recordingLogger(logs) })
  const url = await listen(app)
  const fans = [await connect(t, url), await connect(t, url)]
  for (const fan of fans) await fan.request('$topic', 'subscribe', { topic: 'scores/final' }, 1)
  const probe = new Redis(REDIS_URL)
  t.after(() => probe.disconnect())
  await waitFor('the instance to subscribe in Redis', async () => ((await probe.pubsub('NUMSUB', `${prefix}scores/final`)) as Array<string | number>)[1] === 1)
  const cli = (body: string) => promisify(execFile)('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'PUBLISH', `${prefix}scores/final`, body], { timeout: 5000 })
  await cli('{"data":{"home":"SECRET-PAYLOAD","away":0}}')
  await cli('{"data":{"home":2,"away":1}}')
  // Redis delivers in the order it ran the commands: the valid one arriving first proves the other was dropped.
  for (const fan of fans) {
    await fan.waitFor(f => f.topic === 'scores/final')
    assert.deepEqual(fan.publications(), [{ topic: 'scores/final', data: { home: 2, away: 1 } }])
  }
  const warnings = logs.filter(e => e.level === 'warn' && e.msg?.includes('topic schema') === true)
  assert.equal(warnings.length, 1, 'one line per publication, not per subscriber')
  assert.equal(warnings[0]?.obj.topic, 'scores/final')
  assert.deepEqual((warnings[0]?.obj.details as Array<{ path: string }>).map(d => d.path), ['/data/home'])
  assert.ok(!JSON.stringify(warnings[0]).includes('SECRET-PAYLOAD'), 'the payload is not logged')
})
