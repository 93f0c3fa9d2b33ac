import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { Writable } from 'node:stream'
import Fastify from 'fastify'
import Type from 'typebox'
import drizzle from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { connect, listen, type TestClient } from './helpers/client.js'
import { REDIS_URL, canReach } from './helpers/redis.js'

// A topic with presence AND history (or a schema), on two instances over Redis (found by the soak,
// bench/soak.js): the other instance's `$join`/`$leave` arrive from the broker without a position
// and with a member as data. They are presence frames, not publications: delivered as they are,
// neither checked against the topic's publication schema (which would drop them) nor taken for a
// plain PUBLISH to a history topic (which logged a misleading warning per topic).

const redisUp = await canReach(REDIS_URL)
if (!redisUp && process.env.CI !== undefined) throw new Error(`Redis is not reachable at ${REDIS_URL} in CI`)
const skip = redisUp ? false : `Redis is not reachable at ${REDIS_URL}: REDIS PRESENCE+HISTORY TESTS SKIPPED`

async function instance (t: TestContext, prefix: string, warnings: string[]): Promise<string> {
  const stream = new Writable({
    write (chunk: Buffer, _encoding, done) {
      const line = JSON.parse(chunk.toString()) as { level: number, msg: string }
      if (line.level >= 40) warnings.push(line.msg)
      done()
    }
  })
  const app = Fastify({ logger: { level: 'warn', stream } })
  await app.register(drizzle, {
    broker: redisBroker({ url: REDIS_URL, prefix }),
    heartbeatInterval: 0,
    closeGracePeriod: 100,
    identify: (request) => request.headers['x-user'] ?? null
  })
  app.drizzle.topic('logs/:id', { history: { size: 10 }, presence: true })
  app.drizzle.topic('typed/:id', { schema: Type.Object({ n: Type.Number() }), presence: true })
  t.after(() => app.close())
  return await listen(app)
}

const as = (t: TestContext, url: string, user: string): Promise<TestClient> => connect(t, url, { headers: { 'x-user': user } })

for (const topic of ['logs/1', 'typed/1']) {
  test(`redis: $join and $leave of the other instance reach subscribers of ${topic.split('/')[0]}/:id, without a warning`, { skip, timeout: 20_000 }, async t => {
    const prefix = `test:presence-history:${randomUUID()}:`
    const warnings: string[] = []
    const [a, b] = [await instance(t, prefix, warnings), await instance(t, prefix, warnings)]
    const ann = await as(t, a, 'ann')
    const bob = await as(t, b, 'bob')
    assert.equal((await ann.request('$topic', 'subscribe', { topic })).data.subscribed, true)
    await ann.waitFor(f => f.event === '$join' && f.data.user === 'ann')
    assert.equal((await bob.request('$topic', 'subscribe', { topic })).data.subscribed, true)
    const join = await ann.waitFor(f => f.event === '$join' && f.data.user === 'bob', 5000)
    assert.equal(join.topic, topic)
    assert.equal(join.offset, undefined, 'presence frames carry no offset')
    bob.terminate()
    await ann.waitFor(f => f.event === '$leave' && f.data.user === 'bob', 5000)
    assert.deepEqual(warnings, [])
  })
}
