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

  constructor (readonly socket: WebSocket, readonly request: FastifyRequest, private readonly encode: (topic: string, data: unknown, event: string | undefined) => string) {
    this.log = request.log
  }

  /** Writes a frame if the socket is still open; a closed socket is never written to. */
  write (frame: string): boolean {
    if (this.closed || this.socket.readyState !== OPEN) return false
    this.socket.send(frame)
    return true
  }

  send (topic: string, data: unknown, event?: string): boolean {
    return this.write(this.encode(topic, data, event))
  }

  close (code = 1000, reason?: string): void {
    if (this.socket.readyState === OPEN) this.socket.close(code, reason)
  }
}
