import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import type { Envelope } from './protocol.js'
import type { Position, PublishOptions } from './brokers/types.js'

/** Per-connection storage for the app; augment `DrizzleConnectionStore` to type it. */
export interface DrizzleConnectionStore extends Record<string, unknown> {}

/** What handlers and hooks see of a connection. */
export interface DrizzleConnection {
  /** Unique across processes (a UUID), so presence can be tracked through a broker. */
  readonly id: string
  /** The user `identify` named for this connection, or null (always null over HTTP). */
  readonly user: string | null
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
  /** `from` is the context of the action publishing, whose span (if traced) is the publication's parent. */
  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions, from?: ActionContext): Promise<void>
  /** Fields for an action's log lines beyond its names: its trace ids when it is traced. */
  logFields? (ctx: ActionContext): Record<string, string> | undefined
  /** Aborts `controller` when the connection closes (at once if it has); optional: HTTP has none. */
  abortOnClose? (conn: C, controller: AbortController): void
}

/** The AbortController behind `ctx.signal`, made only when a handler reads it. */
const controllers = new WeakMap<ActionContext, AbortController>()

/** Aborts a context's signal (time limit, connection closed), if its handler asked for one. */
export function abortContext (ctx: ActionContext, reason: unknown): void {
  controllers.get(ctx)?.abort(reason)
}

export function controllerOf (ctx: ActionContext): AbortController | undefined {
  return controllers.get(ctx)
}

/**
 * Where the action's span is kept when it is traced (lib/tracing.ts): a field, as a WeakMap entry per
 * message cost microseconds of GC, and under a symbol, so handlers never meet it.
 */
export const kSpan = Symbol('fastify-drizzle.span')

/**
 * The second argument of every handler and action hook: the handler's API, nothing else. One is made
 * per message, so everything on it is a plain field or a prototype method, and the child logger is
 * only built when read.
 */
export class ActionContext {
  /** Set when the reply is decided: 200 for data, the error's statusCode otherwise. */
  statusCode = 200
  private childLog: FastifyBaseLogger | undefined
  /** @internal */
  [kSpan]: object | undefined = undefined

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
    if (this.childLog === undefined) {
      const fields = { resource: this.resource, action: this.action, request_id: this.requestId }
      const trace = this.host.logFields?.(this)
      this.childLog = this.conn.log.child(trace === undefined ? fields : { ...fields, ...trace })
    }
    return this.childLog
  }

  /**
   * Aborts when the action runs out of time (reason: the ACTION_TIMEOUT error) or its connection
   * closes (reason: a CONNECTION_CLOSED error), so the handler can stop what it waits for:
   * `await db.query(sql, { signal: ctx.signal })`, `fetch(url, { signal: ctx.signal })`. Made on
   * first read: actions that never read it pay nothing.
   */
  get signal (): AbortSignal {
    let controller = controllers.get(this)
    if (controller === undefined) {
      controller = new AbortController()
      controllers.set(this, controller)
      this.host.abortOnClose?.(this.conn, controller)
    }
    return controller.signal
  }

  /** Subscribes the calling connection; resolves to false when it was already subscribed. */
  subscribe (topic: string): Promise<boolean> { return this.host.subscribe(this.conn, topic) }

  unsubscribe (topic: string): Promise<boolean> { return this.host.unsubscribe(this.conn, topic) }

  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void> {
    return this.host.publish(topic, data, options, this)
  }

  /** The last position of a history topic: see `app.drizzle.position` (README "History and recovery"). */
  position (topic: string): Promise<Position> {
    return this.server.drizzle.position(topic)
  }
}

export type { Envelope }
