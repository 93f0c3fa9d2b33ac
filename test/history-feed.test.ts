import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyBaseLogger } from 'fastify'
import type { HistoryRead } from '../lib/brokers/types.js'
import { Feed } from '../lib/history-feed.js'
import type { Subscriber } from '../lib/topics.js'
import { payloadOf } from '../lib/frames.js'
import { waitFor } from './helpers/redis.js'

// A feed whose read of history failed (its broker too slow or away) reads again by itself, with a
// backoff (found by the soak, bench/soak.js): it used to wait for the topic's next publication, so
// a topic that went quiet right after a gap kept its subscribers short of its last publications for
// good, and a busy topic read once per publication while the broker was already too slow.

const silent = { warn () {}, error () {}, info () {}, debug () {} } as unknown as FastifyBaseLogger

test('a stalled feed catches up by itself once the broker answers again, without a new publication, reading with a backoff', async () => {
  const stored = [1, 2, 3].map(offset => ({ offset, data: { n: offset } }))
  let reads = 0
  let failing = 3
  const got: number[] = []
  const subscriber: Subscriber = {
    topics: new Set(['t']),
    sendPublication (frame) { got.push(JSON.parse(payloadOf(frame).toString()).offset); return true }
  }
  const feed = new Feed('t', { size: 100, ttl: 60_000 }, {
    log: silent,
    subscribers: () => new Set([subscriber]),
    delivered: () => {},
    follow: async () => {},
    history: {
      publish: () => Promise.reject(new Error('unused')),
      position: async () => ({ offset: 0, epoch: 'e' }),
      async read (_topic, after): Promise<HistoryRead> {
        reads++
        if (failing-- > 0) throw new Error('Redis did not answer within 1000 ms')
        return { epoch: 'e', offset: 3, entries: stored.filter(e => e.offset > after) }
      }
    }
  })
  await feed.ready
  feed.accept({ offset: 1, epoch: 'e', data: { n: 1 }, event: undefined })
  // Offset 3 reveals that 2 is missing: the read fails, and the topic then stays quiet.
  feed.accept({ offset: 3, epoch: 'e', data: { n: 3 }, event: undefined })
  // A publication arriving while stalled does not read again at once (the backoff does).
  feed.accept({ offset: 4, epoch: 'e', data: { n: 4 }, event: undefined })
  assert.equal(reads, 1)
  await waitFor('the stalled feed caught up', () => got.length === 4, 5000)
  assert.deepEqual(got, [1, 2, 3, 4])
  // Three failures: reads at 0, 250, 750 (backoff 250, 500) and 1,750 ms (1,000), then live again.
  assert.equal(reads, 4)
  assert.equal(feed.state, 'live')
})
