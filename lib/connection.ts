import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'

/** Per-connection storage for the app; augment `DrizzleConnectionStore` to type it. */
export interface DrizzleConnectionStore extends Record<string, unknown> {}

/** What handlers and hooks see of a connection. */
export interface DrizzleConnection {
  /** Unique across processes (a UUID), so presence can be tracked through a broker. */
  readonly id: string
  /** The upgrade request, with whatever the app's Fastify hooks decorated on it (e.g. `request.user`). */
  readonly request: FastifyRequest
  readonly log: FastifyBaseLogger
  /** Free-form per-connection state, dropped with the connection. */
  readonly store: DrizzleConnectionStore
  /** Topics this connection receives, `__all__` included. */
  readonly topics: ReadonlySet<string>
  /** Sends a publication frame to this connection only. */
  send (topic: string, data: unknown, event?: string): boolean
  close (code?: number, reason?: string): void
}

const OPEN = 1

/** WebSocket close codes the plugin uses (RFC 6455 section 7.4.1, and 1013 from the IANA registry). */
export const CLOSE = {
  GOING_AWAY: 1001,
  POLICY_VIOLATION: 1008,
  TRY_AGAIN_LATER: 1013
} as const

/** A Buffer holding UTF-8 JSON still goes out as a text frame. */
const TEXT_FRAME = { binary: false }

/** Whether a logger prints info lines. Fastify's disabled logger has no level and only `child`. */
function infoEnabled (log: FastifyBaseLogger): boolean {
  const withLevels = log as FastifyBaseLogger & { isLevelEnabled?: (level: string) => boolean }
  if (typeof withLevels.isLevelEnabled === 'function') return withLevels.isLevelEnabled('info')
  return log.level !== undefined || Object.keys(log).some(key => key !== 'child')
}

/**
 * Write coalescing. Frames written to a socket during one turn of the event loop (the replies to a
 * batch of requests read together, the publications of a broker burst) are corked and leave in one
 * writev when the turn's work is done (process.nextTick runs after the microtasks that send replies),
 * instead of one system call per frame. The bytes on the wire are the same. A socket with
 * CORK_LIMIT bytes corked is flushed at once, so corking never holds more than that.
 */
const CORK_LIMIT = 64 * 1024
const corked: Connection[] = []

function uncorkAll (): void {
  for (const conn of corked) conn.uncork()
  corked.length = 0
}

interface RawSocket { cork (): void, uncork (): void, writableLength: number, destroyed: boolean }

export class Connection implements DrizzleConnection {
  readonly id = randomUUID()
  readonly store: DrizzleConnectionStore = Object.create(null)
  readonly topics = new Set<string>()
  readonly log: FastifyBaseLogger
  inFlight = 0
  closed = false
  /** Rate-limit window: when it started and how many requests it has seen. */
  windowStart = 0
  windowCount = 0
  /** Set by the liveness check; cleared by each pong. */
  awaitingPong = false

  /** Whether this connection's "action completed" lines would be printed: if not, none is built. */
  readonly logsActions: boolean

  constructor (readonly socket: WebSocket, readonly request: FastifyRequest, private readonly encode: (topic: string, data: unknown, event: string | undefined) => string, logActions = true) {
    this.log = request.log
    this.logsActions = logActions && infoEnabled(this.log)
  }

  /** The TCP socket under the WebSocket while it is corked by write(). */
  private corkedSocket: RawSocket | undefined

  /** Writes a frame if the socket is still open; a closed socket is never written to. */
  write (frame: string | Buffer): boolean {
    if (this.closed || this.socket.readyState !== OPEN) return false
    let raw = this.corkedSocket
    if (raw === undefined) {
      raw = (this.socket as unknown as { _socket?: RawSocket | null })._socket ?? undefined
      if (raw !== undefined && !raw.destroyed) {
        raw.cork()
        this.corkedSocket = raw
        if (corked.push(this) === 1) process.nextTick(uncorkAll)
      }
    }
    if (typeof frame === 'string') this.socket.send(frame)
    else this.socket.send(frame, TEXT_FRAME)
    if (raw !== undefined && raw.writableLength >= CORK_LIMIT) this.uncork()
    return true
  }

  /** Flushes what write() corked (once per turn, or early at CORK_LIMIT bytes). */
  uncork (): void {
    const raw = this.corkedSocket
    if (raw === undefined) return
    this.corkedSocket = undefined
    raw.uncork()
  }

  send (topic: string, data: unknown, event?: string): boolean {
    return this.write(this.encode(topic, data, event))
  }

  close (code = 1000, reason?: string): void {
    if (this.socket.readyState === OPEN) this.socket.close(code, reason)
  }

  /**
   * Stops serving a peer that broke a limit and closes it with `code`. It is marked closed at once:
   * its close event may come only after ws's closeTimeout, and until then nothing more is read from it
   * or written to it, and the warning is logged once.
   */
  shut (code: number, reason: string, why: string, fields: Record<string, unknown>): void {
    if (this.closed) return
    this.log.warn({ connection: this.id, ...fields }, why)
    this.close(code, reason)
    this.closed = true
  }
}
