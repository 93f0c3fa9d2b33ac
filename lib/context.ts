import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import type { Connection, DrizzleConnection } from './connection.js'
import type { Envelope } from './protocol.js'
import type { PublishOptions } from './brokers/types.js'

/** The operations a context delegates to the plugin's state; kept narrow so context stays cheap. */
export interface ContextHost {
  subscribe (conn: Connection, topic: string): Promise<boolean>
  unsubscribe (conn: Connection, topic: string): Promise<boolean>
  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void>
}

/**
 * The second argument of every handler and action hook. One is made per message, so everything on it
 * is either a plain field or a prototype method, and the child logger is only built when read.
 */
export class ActionContext {
  /** Set when the reply is decided: 200 for data, the error's statusCode otherwise. */
  statusCode = 200
  /** Set when the action ran past its time limit and was answered with ACTION_TIMEOUT. */
  timedOut = false
  /** @internal when the action's time limit runs out (performance.now() based). */
  deadline = 0
  /** @internal links of the deadline list (lib/deadlines.ts). */
  prevDeadline: ActionContext | undefined = undefined
  /** @internal */
  nextDeadline: ActionContext | undefined = undefined
  /** @internal */
  tracked = false
  /** @internal what the time-limit sweep needs to answer an overdue action (set by dispatch). */
  compiled: unknown = undefined
  /** @internal */
  message: Envelope | undefined = undefined
  /** @internal performance.now() when the action started. */
  started = 0
  private childLog: FastifyBaseLogger | undefined

  constructor (
    private readonly host: ContextHost,
    private readonly conn: Connection,
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
