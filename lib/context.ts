import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import type { Envelope } from './protocol.js'
import type { PublishOptions } from './brokers/types.js'

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

/**
 * What a context delegates to: subscriptions of its connection and publishing. Each transport
 * provides one (HTTP has no socket to subscribe, so its host refuses).
 */
export interface ContextHost<C extends DrizzleConnection = DrizzleConnection> {
  subscribe (conn: C, topic: string): Promise<boolean>
  unsubscribe (conn: C, topic: string): Promise<boolean>
  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void>
}

/**
 * The second argument of every handler and action hook: the handler's API, nothing else. One is made
 * per message, so everything on it is a plain field or a prototype method, and the child logger is
 * only built when read.
 */
export class ActionContext {
  /** Set when the reply is decided: 200 for data, the error's statusCode otherwise. */
  statusCode = 200
  private childLog: FastifyBaseLogger | undefined

  constructor (
    private readonly host: ContextHost<any>,
    private readonly conn: DrizzleConnection,
    readonly resource: string,
    readonly action: string,
    readonly requestId: string | number | null,
    /** The Fastify instance (scope) the resource was declared in. */
    readonly server: FastifyInstance
  ) {}

  get connection (): DrizzleConnection { return this.conn }

  get request (): FastifyRequest { return this.conn.request }

  get log (): FastifyBaseLogger {
    this.childLog ??= this.conn.log.child({ resource: this.resource, action: this.action, request_id: this.requestId })
    return this.childLog
  }

  /** Subscribes the calling connection; resolves to false when it was already subscribed. */
  subscribe (topic: string): Promise<boolean> { return this.host.subscribe(this.conn, topic) }

  unsubscribe (topic: string): Promise<boolean> { return this.host.unsubscribe(this.conn, topic) }

  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void> {
    return this.host.publish(topic, data, options)
  }
}

export type { Envelope }
