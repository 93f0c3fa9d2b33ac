// Helpers of the soak (bench/soak.js) shared by its children: the paced publisher, the latency
// histogram, and the soak's topic names. Plain ESM, no dependencies.
import { now } from './common.js'

/** The soak's declared topic pattern and the name of topic `i`. */
export const TOPIC_PATTERN = 'room/:id'
export const topicName = (i) => `room/${i}`

/** Padding that brings a publication's JSON to about 100 bytes, like the main bench's. */
const PAD = 'x'.repeat(60)

/**
 * Publishes `rate` publications per second, round robin over `topics` topics, paced on a 5 ms timer
 * (each tick sends what is due since the start, so the rate holds on average without bursts of more
 * than a tick's share). Each publication is `{ n, t, pad }`: `n` counts that topic's publications from
 * 1 (a fresh history gives publication n the offset n), `t` is `now()` at sending (the machine's
 * monotonic clock, shared by every process here) for the delivery latency. `publish(topic, data)`
 * returns a promise; at most `maxInFlight` may be outstanding, past that a tick sends nothing and the
 * publisher falls behind (reported as `behind`, never hidden).
 */
export function pacedPublisher ({ rate, topics, publish, maxInFlight = Math.max(1000, rate) }) {
  const counts = new Uint32Array(topics)
  let sent = 0
  let next = 0
  let inFlight = 0
  let errors = 0
  let lastError
  let skippedTicks = 0
  let t0 = 0
  let timer
  const stats = () => ({
    sent,
    errors,
    lastError,
    inFlight,
    skippedTicks,
    seconds: t0 === 0 ? 0 : (now() - t0) / 1000,
    behind: t0 === 0 ? 0 : Math.max(0, Math.floor(rate * (now() - t0) / 1000) - sent),
    cpu: process.cpuUsage(),
    t: now()
  })
  function tick () {
    const due = Math.floor(rate * (now() - t0) / 1000) - sent
    for (let i = 0; i < due; i++) {
      if (inFlight >= maxInFlight) { skippedTicks++; return }
      const topic = next
      next = (next + 1) % topics
      const n = ++counts[topic]
      sent++
      inFlight++
      publish(topicName(topic), { n, t: now(), pad: PAD }).then(
        () => { inFlight-- },
        (err) => { inFlight--; errors++; lastError = String(err && err.message ? err.message : err) }
      )
    }
  }
  return {
    start () {
      t0 = now()
      timer = setInterval(tick, 5)
      return stats()
    },
    /** Stops and waits (at most 10 s) for the publications in flight to settle. */
    async stop () {
      clearInterval(timer)
      const deadline = now() + 10000
      while (stats().inFlight > 0 && now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
      return { ...stats(), counts: Array.from(counts) }
    },
    stats
  }
}

// ---- latency histogram --------------------------------------------------------------------------
// Fixed buckets: 0.1 ms wide up to 1 s, then 10 ms wide up to 120 s (the last bucket takes the rest).
// 22,000 Float64 counters; a histogram crosses IPC as its non-empty buckets, [index, count] pairs.

const FINE = 10_000
const COARSE = 11_900
export const BUCKETS = FINE + COARSE

export function newHistogram () {
  return new Float64Array(BUCKETS)
}

export function bucketOf (ms) {
  if (!(ms > 0)) return 0
  if (ms < 1000) return Math.floor(ms * 10)
  return Math.min(BUCKETS - 1, FINE + Math.floor((ms - 1000) / 10))
}

/** The upper bound (ms) of a bucket. */
export function bucketMs (i) {
  return i < FINE ? (i + 1) / 10 : 1000 + (i - FINE + 1) * 10
}

export function record (hist, ms) {
  hist[bucketOf(ms)]++
}

export function sparse (hist) {
  const out = []
  for (let i = 0; i < hist.length; i++) if (hist[i] !== 0) out.push([i, hist[i]])
  return out
}

export function addSparse (hist, pairs) {
  for (const [i, n] of pairs) hist[i] += n
}

/** { count, p50, p99, p999, max } in ms (bucket upper bounds). */
export function summarize (hist) {
  let count = 0
  for (let i = 0; i < hist.length; i++) count += hist[i]
  const result = { count, p50: NaN, p99: NaN, p999: NaN, max: NaN }
  if (count === 0) return result
  const targets = [['p50', 0.5], ['p99', 0.99], ['p999', 0.999]]
  let seen = 0
  let k = 0
  for (let i = 0; i < hist.length; i++) {
    if (hist[i] === 0) continue
    seen += hist[i]
    while (k < targets.length && seen >= Math.ceil(targets[k][1] * count)) result[targets[k++][0]] = bucketMs(i)
    result.max = bucketMs(i)
  }
  return result
}
