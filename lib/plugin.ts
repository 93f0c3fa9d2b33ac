import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import websocket from '@fastify/websocket'
import type { WebSocket } from 'ws'
import { addAsyncApiRoute } from './asyncapi.js'
import { AlreadyRegisteredError } from './errors.js'
import { resolveOptions, type DrizzleOptions, type ResolvedOptions } from './options.js'
import { Connection } from './connection.js'
import { CLOSE, isProtocolError } from './socket.js'
import { serveOverHttp } from './http.js'
import { addPlaygroundRoutes } from './playground.js'
import { createMetrics } from './metrics.js'
import { loadTracing } from './tracing.js'
import { Runtime } from './runtime.js'
import { scopeGetter } from './scope.js'
import { identifyHook } from './users.js'

async function drizzlePlugin (fastify: FastifyInstance, input: DrizzleOptions): Promise<void> {
  const options = resolveOptions(input)
  if (fastify.hasDecorator('drizzle')) throw new AlreadyRegisteredError()
  const rt = new Runtime(fastify, options, fastify.log)
  await observe(rt)
  serveOverHttp(rt)
  const fdWarning: FileLimitWatch = { threshold: Infinity, limit: Infinity, last: -Infinity }

  // @fastify/websocket's default preClose closes every client at once, without a code, before our
  // own hook can let actions in flight reply: when we register it, our shutdown replaces it.
  const ownsWebsocket = !fastify.hasDecorator('websocketServer')
  if (ownsWebsocket) {
    // closeTimeout bounds how long a peer that never answers a close can hold its socket: ws's default
    // is 30 s.
    const wsOptions = { maxPayload: options.maxPayload, closeTimeout: 1000, perMessageDeflate: false, ...options.websocket }
    await fastify.register(websocket, {
      options: wsOptions as NonNullable<Parameters<typeof websocket>[1]['options']>,
      errorHandler: socketError,
      preClose: function (this: FastifyInstance, done: (err?: Error) => void) { shutdown(rt).then(() => done(), done) }
    })
  } else {
    warnIfLargerPayload(fastify, options)
  }
  fastify.decorate('drizzle', { getter: scopeGetter(rt) })

  fastify.route({
    method: 'GET',
    url: options.path,
    onRequest: (request, reply, done) => guardUpgrade(rt, request, reply, done),
    // After the app's own hooks (auth), so identify can read what they decorated (request.user).
    ...(options.identify === undefined ? {} : { preHandler: identifyHook(options.identify, rt.broker) }),
    // A plain GET gets a clear answer instead of a 404.
    handler: (_request, reply) => {
      reply.code(426).header('upgrade', 'websocket').send({ statusCode: 426, code: 'UPGRADE_REQUIRED', error: 'Upgrade Required', message: 'This route accepts WebSocket connections only' })
    },
    wsHandler: (socket: WebSocket, request: FastifyRequest) => {
      // guardUpgrade runs at onRequest, before the app's preValidation/preHandler hooks: upgrades that
      // passed it together while an async hook (auth) ran would overshoot maxConnections, and one that
      // completes after shutdown began would be missed by it. Both are checked again now.
      if (rt.closing) socket.close(CLOSE.GOING_AWAY, 'Server shutting down')
      else if (rt.connections.size >= rt.options.maxConnections) socket.close(CLOSE.TRY_AGAIN_LATER, 'Connection limit reached')
      else {
        new Connection(socket, request, rt).open()
        if (rt.connections.size >= fdWarning.threshold) warnNearFileLimit(rt, fdWarning)
      }
    }
  })
  addAsyncApiRoute(rt, fastify)
  addPlaygroundRoutes(rt, fastify)

  fastify.addHook('onReady', async () => {
    rt.ready()
    // An SDK is looked for once, now: apps register theirs before they start the server.
    rt.tracing?.probe()
    await rt.broker.attach({ deliver: (topic, data, event, meta) => rt.deliver(topic, data, event, meta), log: fastify.log, resumed: topics => rt.history.resumed(topics) })
    await rt.broker.subscribe('__all__')
    startHeartbeat(rt)
    startIncompleteSweep(rt)
    warnIfFewFileDescriptors(rt, fdWarning)
  })
  // An app that registered @fastify/websocket itself keeps its preClose, which runs before this one.
  if (!ownsWebsocket) fastify.addHook('preClose', async function (this: FastifyInstance) { await shutdown(rt) })
  fastify.addHook('onClose', async () => {
    rt.runner.close()
    rt.metrics?.close()
    // The sockets closed in preClose: their members leave before the broker goes away under them.
    await rt.presence.drain(rt.options.closeGracePeriod)
    if (options.closeBroker) await rt.broker.close()
  })
}

/**
 * Metrics and tracing (README, Observability): their optional peer dependencies are imported only
 * here, so an app without them loads neither.
 */
async function observe (rt: Runtime): Promise<void> {
  if (rt.options.metrics !== false) rt.runner.metrics = rt.metrics = await createMetrics(rt.options.metrics, rt)
  if (rt.options.tracing) rt.runner.tracing = rt.tracing = await loadTracing()
}

/** Refuses upgrades while closing, over the connection cap, or from a browser origin not allowed. */
function guardUpgrade (rt: Runtime, request: FastifyRequest, reply: FastifyReply, done: () => void): void {
  if (rt.closing) {
    reply.code(503).send({ statusCode: 503, code: 'SERVICE_UNAVAILABLE', error: 'Service Unavailable', message: 'Server is shutting down' })
    return
  }
  if (rt.connections.size >= rt.options.maxConnections) {
    reply.code(503).send({ statusCode: 503, code: 'TOO_MANY_CONNECTIONS', error: 'Service Unavailable', message: `Connection limit of ${rt.options.maxConnections} reached` })
    return
  }
  const origin = request.headers.origin
  if (origin !== undefined && !originAllowed(rt.options.allowedOrigins, origin, request)) {
    request.log.info({ origin }, 'websocket origin refused')
    reply.code(403).send({ statusCode: 403, code: 'FORBIDDEN', error: 'Forbidden', message: `Origin ${JSON.stringify(origin)} is not allowed` })
    return
  }
  mendInjectedVersion(request.raw.headers as Record<string, unknown>)
  done()
}

/**
 * @fastify/websocket's injectWS (11.3) sends Sec-WebSocket-Version as the number 13, and ws 8.23.1
 * compares that header with the string '13', answering 400: every test through injectWS would fail
 * on a fresh install. A header read from a real socket is always a string; only this one is mended.
 */
function mendInjectedVersion (headers: Record<string, unknown>): void {
  if (headers['sec-websocket-version'] === 13) headers['sec-websocket-version'] = '13'
}

function originAllowed (allowed: ResolvedOptions['allowedOrigins'], origin: string, request: FastifyRequest): boolean {
  if (allowed === '*') return true
  if (typeof allowed === 'function') return allowed(origin, request) === true
  if (allowed !== undefined) return allowed.includes(origin)
  // Default: same origin only. A browser always sends Origin; comparing its host with Host stops
  // cross-site WebSocket hijacking while non-browser clients (no Origin) connect freely. Both go
  // through URL, which lowercases hosts and drops default ports ("EXAMPLE.com:443" is https://example.com).
  const host = request.headers.host
  if (host === undefined) return false
  try {
    const from = new URL(origin)
    return from.host === new URL(`${from.protocol}//${host}`).host
  } catch {
    return false
  }
}

/**
 * ws enforces the frame limit of the server it was created with: when the app registered
 * @fastify/websocket itself, our maxPayload cannot apply, so say so instead of failing silently.
 */
function warnIfLargerPayload (fastify: FastifyInstance, options: ResolvedOptions): void {
  const limit = (fastify.websocketServer as { options?: { maxPayload?: number } }).options?.maxPayload
  if (typeof limit === 'number' && (limit === 0 || limit > options.maxPayload)) {
    fastify.log.warn({ maxPayload: options.maxPayload, websocketMaxPayload: limit },
      'fastify-drizzle: @fastify/websocket was registered by the app, so its ws maxPayload applies instead of the plugin\'s; pass options.maxPayload to it')
  }
}

/** One timer for all connections: ping each, terminate those that missed the previous pong. */
function startHeartbeat (rt: Runtime): void {
  const interval = rt.options.heartbeatInterval
  if (interval === 0) return
  const timer = setInterval(() => {
    for (const conn of sockets(rt)) conn.checkHeartbeat()
  }, interval)
  timer.unref()
  rt.root.addHook('onClose', async () => clearInterval(timer))
}

/**
 * @fastify/websocket's default error handler logs at error level with a stack and terminates the
 * socket, right after ws queued the close frame of a protocol violation (1002, 1007, 1009): about
 * half the peers then saw a TCP reset instead of the code. A bad frame is the peer's fault: one info
 * line, and ws closes the socket itself (its closeTimeout ends a peer that does not answer).
 */
function socketError (error: Error, socket: WebSocket, request: FastifyRequest): void {
  if (isProtocolError(error)) {
    request.log.info({ code: (error as Error & { code: string }).code, reason: error.message }, 'websocket protocol error; closing')
    return
  }
  request.log.debug({ err: error }, 'websocket error; terminating')
  socket.terminate()
}

/** Checks unfinished incoming messages against incompleteTimeout, once a second, while there are any. */
function startIncompleteSweep (rt: Runtime): void {
  const limit = rt.options.incompleteTimeout
  if (limit === 0) return
  const timer = setInterval(() => {
    if (rt.totals.incomplete === 0) return
    const now = performance.now()
    for (const conn of sockets(rt)) conn.checkIncomplete(now)
  }, Math.min(1000, Math.max(10, Math.floor(limit / 4))))
  timer.unref()
  rt.root.addHook('onClose', async () => clearInterval(timer))
}

/**
 * Past the process's open-file limit the OS refuses new sockets: libuv accepts and closes them at
 * once, so the peers see EOF and nothing reaches the app. Say so at startup when maxConnections
 * cannot be reached, and (at most once a minute) when connections near the limit.
 */
interface FileLimitWatch { threshold: number, limit: number, last: number }

/** Open files kept aside for what is not a client socket: Node itself, brokers, databases, logs. */
const RESERVED_FILES = 64

function warnIfFewFileDescriptors (rt: Runtime, fdWarning: FileLimitWatch): void {
  const limit = openFileLimit()
  if (limit === undefined) return
  fdWarning.limit = limit
  // The process holds descriptors of its own (~30 for Node and its loaders, more with a broker or a
  // database pool): 90% of a small limit (256) is past what sockets can reach, so keep 64 aside.
  fdWarning.threshold = Math.max(0, Math.min(Math.floor(limit * 0.9), limit - RESERVED_FILES))
  if (rt.options.maxConnections + RESERVED_FILES > limit) {
    rt.log.warn({ maxConnections: rt.options.maxConnections, openFileLimit: limit },
      `fastify-drizzle: the open-file limit (${limit}) is below maxConnections; raise it (ulimit -n, LimitNOFILE= in systemd, --ulimit nofile= in Docker)`)
  }
}

function warnNearFileLimit (rt: Runtime, fdWarning: FileLimitWatch): void {
  const now = performance.now()
  if (now - fdWarning.last < 60_000) return
  fdWarning.last = now
  rt.log.warn({ connections: rt.connections.size, openFileLimit: fdWarning.limit },
    'fastify-drizzle: connections are near the open-file limit; new sockets will be refused by the OS without a trace (raise ulimit -n)')
}

/** The soft limit of open files (Linux), or undefined where it cannot be read. */
function openFileLimit (): number | undefined {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find(l => l.startsWith('Max open files'))
    const soft = line === undefined ? NaN : Number(line.slice('Max open files'.length).trim().split(/\s+/)[0])
    return Number.isFinite(soft) ? soft : undefined
  } catch {
    return undefined
  }
}

/**
 * Stops new upgrades, lets actions in flight reply within the grace period, then closes every socket
 * with 1001; a peer that never answers the close is terminated, so it cannot hold shutdown.
 */
async function shutdown (rt: Runtime): Promise<void> {
  rt.closing = true
  await rt.runner.waitForActions(rt.options.closeGracePeriod)
  await Promise.all(Array.from(sockets(rt), conn => conn.closeForShutdown()))
}

/** The WebSocket connections among the runtime's (the only kind today). */
function * sockets (rt: Runtime): Generator<Connection> {
  for (const conn of rt.connections) if (conn instanceof Connection) yield conn
}

export const drizzle = fp(drizzlePlugin as FastifyPluginAsync<DrizzleOptions>, {
  name: 'fastify-drizzle',
  fastify: '5.x'
})
