// Join storm (issue #16): N connections on two instances (one Redis) subscribe to one room within
// about a second. Side by side, in interleaved order: a plain topic, presence with `events: false`,
// and presence with `$join`/`$leave` frames. Measures the subscribe replies (window, p50, p99), the
// time until both instances list every member (convergence), the presence frames each subscriber
// received, and the CPU the process spent (servers and clients share it: compare modes, not figures).
//
//   node --import tsx bench/presence.js [--conns=1000] [--spread=1000] [--reps=1]
//
// Not part of `npm run bench` (it needs Redis and no other implementation has the feature).
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import drizzle from '../lib/index.ts'
import { redisBroker } from '../lib/brokers/redis.ts'
import { now, quantile } from './common.js'

const arg = (name, fallback) => Number(process.argv.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const CONNS = arg('conns', 1000)
const SPREAD_MS = arg('spread', 1000)
const REPS = arg('reps', 1)
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const ROOM = { plain: 'plain/storm', quiet: 'quiet/storm', events: 'rooms/storm' }

async function instance (prefix) {
  const app = Fastify()
  await app.register(drizzle, {
    broker: redisBroker({ url: REDIS_URL, prefix }),
    heartbeatInterval: 0,
    rateLimit: false,
    maxConnections: CONNS + 10,
    identify: (request) => request.headers['x-user'] ?? null
  })
  app.drizzle.topic('plain/:id')
  app.drizzle.topic('quiet/:id', { presence: { events: false } })
  app.drizzle.topic('rooms/:id', { presence: true })
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: address.replace('http', 'ws') + '/ws' }
}

/** One storm: connect every client (not measured), then subscribe them all, spread over SPREAD_MS. */
async function storm (mode) {
  const prefix = `bench:presence:${randomUUID()}:`
  const instances = [await instance(prefix), await instance(prefix)]
  const topic = ROOM[mode]
  const clients = []
  for (let i = 0; i < CONNS; i++) {
    const ws = new WebSocket(instances[i % 2].url, { headers: { 'x-user': `u${i}` } })
    const client = { ws, frames: 0, sent: 0, replied: 0 }
    ws.on('message', raw => {
      const frame = JSON.parse(raw)
      if (frame.request_id === 1) client.replied = now()
      else if (frame.event === '$join') client.frames++
    })
    clients.push(client)
    await once(ws, 'open')
  }
  const cpu = process.cpuUsage()
  const started = now()
  await Promise.all(clients.map((client, i) => new Promise(resolve => setTimeout(() => {
    client.sent = now()
    client.ws.send(JSON.stringify({ resource: '$topic', action: 'subscribe', data: { topic }, request_id: 1 }))
    resolve()
  }, (i * SPREAD_MS) / CONNS))))
  while (clients.some(c => c.replied === 0)) await new Promise(resolve => setTimeout(resolve, 5))
  const replied = now()
  let converged = NaN
  if (mode !== 'plain') {
    for (;;) {
      const counts = await Promise.all(instances.map(x => x.app.drizzle.presence(topic).then(m => m.length)))
      if (counts.every(n => n === CONNS)) break
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    converged = now() - started
  }
  // Frames still in flight: wait until no $join arrived for 300 ms.
  let total = -1
  let settledAt = now()
  while (now() - settledAt < 300) {
    const t = clients.reduce((sum, c) => sum + c.frames, 0)
    if (t !== total) { total = t; settledAt = now() }
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  const framesDone = mode === 'events' ? settledAt - started : NaN
  const usage = process.cpuUsage(cpu)
  const latencies = clients.map(c => c.replied - c.sent).sort((a, b) => a - b)
  for (const c of clients) c.ws.terminate()
  await Promise.all(instances.map(x => x.app.close()))
  const redis = new Redis(REDIS_URL)
  const leftover = (await redis.keys(`${prefix}*`)).length
  redis.disconnect()
  return {
    mode,
    conns: CONNS,
    window: Math.round(replied - started),
    p50: +quantile(latencies, 0.5).toFixed(1),
    p99: +quantile(latencies, 0.99).toFixed(1),
    converged: Math.round(converged),
    framesSettled: Math.round(framesDone),
    framesPerSubscriber: +(total / CONNS).toFixed(1),
    cpuMs: Math.round((usage.user + usage.system) / 1000),
    leftoverKeys: leftover
  }
}

const results = []
const modes = ['plain', 'quiet', 'events']
for (let rep = 0; rep < REPS; rep++) {
  // Interleaved, rotated each repetition, so a noisy machine slows every mode alike.
  for (let i = 0; i < modes.length; i++) results.push(await storm(modes[(i + rep) % modes.length]))
}
console.table(results)
console.log(JSON.stringify({ bench: 'presence-join-storm', spreadMs: SPREAD_MS, results }))
