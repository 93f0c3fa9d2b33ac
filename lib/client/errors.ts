// The one error class the client reports, and the small helpers that shape it.

export type DrizzleClientErrorType = 'timeout' | 'disconnect' | 'server' | 'protocol'

export interface DrizzleClientErrorOptions {
  code?: string
  statusCode?: number
  details?: unknown
  requestId?: string | number | null
  topic?: string
  cause?: unknown
}

/**
 * Every failure the client reports: `timeout` (no reply in time), `disconnect` (the connection was
 * lost or the client closed), `server` (an error frame; `code`, `statusCode`, `details`, `requestId`
 * come from it) and `protocol` (the server sent something that is not protocol v1).
 */
export class DrizzleClientError extends Error {
  override readonly name = 'DrizzleClientError'
  readonly type: DrizzleClientErrorType
  readonly code: string | undefined
  readonly statusCode: number | undefined
  readonly details: unknown
  readonly requestId: string | number | null | undefined
  /** Set on errors of a topic subscription. */
  readonly topic: string | undefined

  constructor (type: DrizzleClientErrorType, message: string, options: DrizzleClientErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.type = type
    this.code = options.code
    this.statusCode = options.statusCode
    this.details = options.details
    this.requestId = options.requestId
    this.topic = options.topic
  }
}

export function isClientError (err: unknown): err is DrizzleClientError {
  return err instanceof DrizzleClientError
}

/** The same error, naming the topic whose subscribe or unsubscribe request it answered. */
export function withTopic (err: DrizzleClientError, topic: string): DrizzleClientError {
  return new DrizzleClientError(err.type, err.message, { code: err.code, statusCode: err.statusCode, details: err.details, requestId: err.requestId, topic, cause: err.cause })
}

/** A readable reason from whatever a socket or a connect function failed with (DOM events carry none). */
export function describeError (err: unknown): string {
  if (err instanceof Error) return err.message
  if (typeof err === 'object' && err !== null && typeof (err as { message?: unknown }).message === 'string') return (err as { message: string }).message
  return typeof err === 'string' ? err : 'socket error'
}
