// Server child: `node --expose-gc bench/server.js <impl> '<json options>'`. Listens on 127.0.0.1 (an
// ephemeral port), tells the orchestrator its port over IPC, then answers control commands: cpu,
// mem (after GC), publish (fan-out from this process), exit. Every implementation logs nothing.
//
//   drizzle   fastify-drizzle, built JS (lib/ compiled as dist/esm is, into node_modules/.cache/fastify-drizzle-bench), limits raised
//   bare      Fastify + @fastify/websocket doing the same JSON work by hand: the ceiling
//   floor     the same JSON work with frames read and written by hand on Node's socket: round trips only, not in default runs
//   socketio  Socket.IO 4 (WebSocket transport only), emit with ack, rooms, @socket.io/redis-adapter
//   nes       hapi 21 + @hapi/nes: client.request -> route, subscriptions
//   drizzle+metrics    drizzle with `metrics` on (its own prom-client registry)           } issue #18: the cost of
//   drizzle+otel-off   drizzle with an OpenTelemetry SDK registered, sampling off         } observability, side by
//   drizzle+notrace    drizzle with `tracing: false` (the plain drizzle has no SDK)       } side with plain drizzle
import { readdirSync, readFileSync } from 'node:fs'
import { ipcServer, now, publication, TOPIC } from './common.js'

const impl = process.argv[2]
const options = JSON.parse(process.argv[3] ?? '{}')

/** The app's "business logic": the same async function for everybody. */
async function echo (data) {
  return data
}

const servers = {
  'drizzle-history': () => servers.drizzle(),
  async drizzle (variant = {}, lib = '../node_modules/.cache/fastify-drizzle-bench/') {
    const { default: Fastify } = await import('fastify')
    const { default: drizzle } = await import(lib + 'index.js')
    let broker
    if (options.redis !== undefined) {
      const { redisBroker } = await import(lib + 'brokers/redis.js')
      broker = redisBroker({ url: options.redis.url, prefix: options.redis.prefix })
    }
    const app = Fastify({ logger: false })
    // Limits that would otherwise shape the results: one connection sends far more than the default
    // 10,000 requests/s, and the fan-out holds 10,000 sockets (the default maxConnections).
    await app.register(drizzle, { broker, rateLimit: false, maxInFlight: 100_000, maxConnections: 100_000, ...variant })
    app.drizzle.resource('bench', {
      async echo (message) { return echo(message.data) }
    })
    // `drizzle-history`: the same server, its topic keeping history (positions, a capped stream on Redis).
    app.drizzle.topic(TOPIC, impl === 'drizzle-history' ? { history: { size: 1000 } } : {})
    await app.listen({ host: '127.0.0.1', port: 0 })
    return {
      port: app.server.address().port,
      publish: (data) => app.drizzle.publish(TOPIC, data),
      connections: () => app.websocketServer.clients.size,
      close: () => app.close()
    }
  },

  async bare () {
    const { default: Fastify } = await import('fastify')
    const { default: websocket } = await import('@fastify/websocket')
    const app = Fastify({ logger: false })
    await app.register(websocket, { options: { maxPayload: 1024 * 1024, perMessageDeflate: false } })
    const resources = new Map([['bench', new Map([['echo', echo]])]])
    const subscribers = new Map() // topic -> Set<socket>
    const topicsOf = new WeakMap() // socket -> Set<topic>
    function error (socket, id, code, message) {
      socket.send(JSON.stringify({ request_id: id, code, error: message }))
    }
    app.get('/ws', { websocket: true }, (socket) => {
      topicsOf.set(socket, new Set())
      socket.on('message', (raw) => {
        let msg
        try { msg = JSON.parse(raw.toString()) } catch { error(socket, null, 'VALIDATION_ERROR', 'Expected Json encodable string'); return }
        if (msg === null || typeof msg !== 'object' || typeof msg.resource !== 'string' || typeof msg.action !== 'string' ||
          (typeof msg.request_id !== 'string' && typeof msg.request_id !== 'number')) {
          error(socket, null, 'VALIDATION_ERROR', 'bad envelope')
          return
        }
        const id = msg.request_id
        if (msg.resource === '$topic') {
          const topic = msg.data?.topic
          if (topic !== TOPIC) { error(socket, id, 'TOPIC_NOT_FOUND', 'no such topic'); return }
          let set = subscribers.get(topic)
          if (set === undefined) subscribers.set(topic, set = new Set())
          set.add(socket)
          topicsOf.get(socket).add(topic)
          socket.send(JSON.stringify({ data: { topic, subscribed: true }, request_id: id }))
          return
        }
        const fn = resources.get(msg.resource)?.get(msg.action)
        if (fn === undefined) { error(socket, id, 'ACTION_NOT_FOUND', 'no such action'); return }
        fn(msg.data).then(
          (data) => socket.send(JSON.stringify({ data: data ?? null, request_id: id })),
          () => error(socket, id, 'INTERNAL_ERROR', 'Unknown error')
        )
      })
      socket.on('close', () => {
        for (const topic of topicsOf.get(socket)) subscribers.get(topic)?.delete(socket)
      })
    })
    function deliver (topic, data) {
      const set = subscribers.get(topic)
      if (set === undefined) return
      const frame = JSON.stringify({ topic, data })
      for (const socket of set) if (socket.readyState === 1) socket.send(frame)
    }
    let redis
    if (options.redis !== undefined) {
      // The bare relay: subscribe, and on each message parse it and forward it to local sockets.
      const { Redis } = await import('ioredis')
      redis = new Redis(options.redis.url)
      const prefix = options.redis.prefix
      redis.on('message', (channel, message) => {
        let parsed
        try { parsed = JSON.parse(message) } catch { return }
        if (parsed === null || typeof parsed !== 'object') return
        deliver(channel.slice(prefix.length), parsed.data)
      })
      await redis.subscribe(prefix + TOPIC)
    }
    await app.listen({ host: '127.0.0.1', port: 0 })
    return {
      port: app.server.address().port,
      publish: (data) => deliver(TOPIC, data),
      connections: () => app.websocketServer.clients.size,
      close: async () => { await app.close(); redis?.disconnect() }
    }
  },

  /**
   * The least any Node server can spend on this protocol, for the round-trip scenarios only: Node's
   * http server for the upgrade, then every frame read and written by hand on the net.Socket (no ws,
   * no Fastify route, no streams past the socket's own), with the same JSON work as bare. Not a
   * WebSocket server anyone should run (no control frames, fragments or limits): it measures the floor
   * that the kernel, libuv and JSON leave, against which "x times bare" targets can be judged.
   */
  async floor () {
    const { createServer } = await import('node:http')
    const { createHash } = await import('node:crypto')
    const http = createServer((_req, res) => { res.statusCode = 404; res.end() })
    const reply = (socket, text) => {
      const payload = Buffer.from(text)
      const n = payload.length
      const head = n < 126 ? Buffer.from([0x81, n]) : Buffer.from([0x81, 126, n >> 8, n & 255])
      socket.write(Buffer.concat([head, payload]))
    }
    const onText = (socket, text) => {
      let msg
      try { msg = JSON.parse(text) } catch { reply(socket, '{"request_id":null,"code":"VALIDATION_ERROR"}'); return }
      if (msg === null || typeof msg !== 'object' || typeof msg.resource !== 'string' || typeof msg.action !== 'string' ||
        (typeof msg.request_id !== 'string' && typeof msg.request_id !== 'number') || msg.resource !== 'bench' || msg.action !== 'echo') {
        reply(socket, '{"request_id":null,"code":"VALIDATION_ERROR"}')
        return
      }
      const id = msg.request_id
      echo(msg.data).then((data) => reply(socket, JSON.stringify({ data: data ?? null, request_id: id })))
    }
    const sockets = new Set()
    http.on('upgrade', (req, socket) => {
      sockets.add(socket)
      socket.on('close', () => sockets.delete(socket))
      const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
      socket.setNoDelay(true)
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
      let held = Buffer.alloc(0)
      socket.on('data', (chunk) => {
        const buf = held.length === 0 ? chunk : Buffer.concat([held, chunk])
        let at = 0
        while (buf.length - at >= 6) {
          const opcode = buf[at] & 15
          let len = buf[at + 1] & 127
          let start = at + 2
          if (len === 126) { if (buf.length - at < 8) break; len = buf.readUInt16BE(at + 2); start = at + 4 }
          if (len === 127) { socket.destroy(); return }
          const end = start + 4 + len
          if (end > buf.length) break
          if (opcode === 8) { socket.end(); return }
          if (opcode === 1) {
            const mask = buf.subarray(start, start + 4)
            const payload = buf.subarray(start + 4, end)
            for (let i = 0; i < len; i++) payload[i] ^= mask[i & 3]
            onText(socket, payload.toString())
          }
          at = end
        }
        held = at === buf.length ? Buffer.alloc(0) : buf.subarray(at)
      })
      socket.on('error', () => {})
    })
    await new Promise(resolve => http.listen(0, '127.0.0.1', resolve))
    return {
      port: http.address().port,
      publish: () => { throw new Error('floor serves round trips only') },
      connections: () => sockets.size,
      close: async () => { for (const s of sockets) s.destroy(); await new Promise(resolve => http.close(resolve)) }
    }
  },

  async socketio () {
    const { createServer } = await import('node:http')
    const { Server } = await import('socket.io')
    const http = createServer()
    const io = new Server(http, { transports: ['websocket'], serveClient: false, perMessageDeflate: false })
    let pub, sub
    if (options.redis !== undefined) {
      const { Redis } = await import('ioredis')
      const { createAdapter } = await import('@socket.io/redis-adapter')
      pub = new Redis(options.redis.url)
      sub = pub.duplicate()
      io.adapter(createAdapter(pub, sub, { key: options.redis.prefix }))
    }
    const resources = new Map([['bench', new Map([['echo', echo]])]])
    io.on('connection', (socket) => {
      socket.on('req', (msg, ack) => {
        if (typeof ack !== 'function' || msg === null || typeof msg !== 'object') return
        const fn = resources.get(msg.resource)?.get(msg.action)
        if (fn === undefined) { ack({ request_id: msg.request_id, code: 'ACTION_NOT_FOUND' }); return }
        fn(msg.data).then((data) => ack({ data: data ?? null, request_id: msg.request_id }), () => ack({ request_id: msg.request_id, code: 'INTERNAL_ERROR' }))
      })
      socket.on('sub', (topic, ack) => {
        if (topic === TOPIC) socket.join(topic)
        if (typeof ack === 'function') ack({ topic, subscribed: true })
      })
    })
    await new Promise(resolve => http.listen(0, '127.0.0.1', resolve))
    return {
      port: http.address().port,
      publish: (data) => { io.to(TOPIC).emit('pub', data) },
      connections: () => io.engine.clientsCount,
      close: async () => { await new Promise(resolve => io.close(() => resolve())); pub?.disconnect(); sub?.disconnect() }
    }
  },

  async nes () {
    if (options.redis !== undefined) throw new Error('@hapi/nes has no cross-process adapter')
    const { default: Hapi } = await import('@hapi/hapi')
    const { default: Nes } = await import('@hapi/nes')
    const server = Hapi.server({ host: '127.0.0.1', port: 0 })
    await server.register(Nes)
    server.route({
      method: 'POST',
      path: '/bench/echo',
      handler: async (request) => ({ data: (await echo(request.payload.data)) ?? null, request_id: request.payload.request_id })
    })
    server.subscription('/' + TOPIC)
    await server.start()
    return {
      port: server.info.port,
      publish: (data) => server.publish('/' + TOPIC, data),
      connections: () => server.plugins.nes._listener._sockets.length(),
      close: () => server.stop({ timeout: 100 })
    }
  }
}

// Observability variants of drizzle (issue #18): the same server, one option or an SDK apart.
servers['drizzle+metrics'] = async () => {
  const { Registry } = await import('prom-client')
  return servers.drizzle({ metrics: { registry: new Registry() } })
}
servers['drizzle+otel-off'] = async () => {
  // Registered before the app is ready, as apps do: the plugin looks for an SDK once, at ready.
  const { trace } = await import('@opentelemetry/api')
  const { AlwaysOffSampler, BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base')
  trace.setGlobalTracerProvider(new BasicTracerProvider({ sampler: new AlwaysOffSampler() }))
  return servers.drizzle()
}
servers['drizzle+notrace'] = () => servers.drizzle({ tracing: false })
// For A/B experiments, not in any default run: plain drizzle with the options in DRIZZLE_EXP_OPTIONS
// (JSON) and the build in DRIZZLE_EXP_LIB (a directory URL relative to bench/, or absolute).
servers['drizzle+exp'] = () => servers.drizzle(JSON.parse(process.env.DRIZZLE_EXP_OPTIONS ?? '{}'), process.env.DRIZZLE_EXP_LIB)

const server = await servers[impl]()

/**
 * Linux: CPU of the main thread apart from the others (V8's GC and compiler threads, libuv's pool),
 * in µs, from /proc/self/task/<tid>/stat (utime and stime in clock ticks, fields 14 and 15).
 */
function threadCpu () {
  try {
    const tick = 1e6 / 100 // USER_HZ is 100 on Linux
    let main = 0
    let others = 0
    for (const tid of readdirSync('/proc/self/task')) {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      const us = (Number(fields[11]) + Number(fields[12])) * tick
      if (Number(tid) === process.pid) main += us
      else others += us
    }
    return { mainThread: main, otherThreads: others }
  } catch {
    return {}
  }
}

ipcServer({
  cpu () {
    const r = process.resourceUsage()
    return { ...process.cpuUsage(), ...threadCpu(), minflt: r.minorPageFault, vcsw: r.voluntaryContextSwitches, ivcsw: r.involuntaryContextSwitches, t: now() }
  },
  mem () {
    for (let i = 0; i < 4; i++) globalThis.gc()
    const m = process.memoryUsage()
    return { heapUsed: m.heapUsed, rss: m.rss, external: m.external, arrayBuffers: m.arrayBuffers, connections: server.connections() }
  },
  connections () { return server.connections() },
  /**
   * Publishes `count` publications (seq from `from`) to TOPIC, each in its own macrotask; `intervalMs`
   * spaces them (0: as fast as the event loop allows). Returns when each was handed out.
   */
  async publish ({ from = 0, count, intervalMs = 0 }) {
    const times = []
    const cpu0 = process.cpuUsage()
    for (let i = 0; i < count; i++) {
      times.push(now())
      await server.publish(publication(from + i))
      if (intervalMs > 0) await new Promise(resolve => setTimeout(resolve, intervalMs))
      else await new Promise(resolve => setImmediate(resolve))
    }
    const cpu = process.cpuUsage(cpu0)
    return { times, cpuUs: cpu.user + cpu.system }
  },
  async exit () {
    await Promise.race([server.close(), new Promise(resolve => setTimeout(resolve, 2000))])
    setImmediate(() => process.exit(0))
    return {}
  }
})
process.send({ ready: true, port: server.port, pid: process.pid })
