import { STATUS_CODES } from 'node:http'
import { performance } from 'node:perf_hooks'
import { ActionContext } from './context.js'
import { CLOSE, type Connection } from './connection.js'
import { ActionTimeoutError, InternalError, ShuttingDownError, TooManyRequestsError, validationError } from './errors.js'
import { runHooks, runSafeHooks, runSendHooks } from './hooks.js'
import { dataErrors, encodeError, encodeReply, FrameError, parseFrame, type Envelope, type WireError } from './protocol.js'
import type { CompiledAction } from './resources.js'
import type { Runtime } from './runtime.js'

// The per-message path. Everything here runs for every frame, so it only reads what registration
// and the ready hook prepared: compiled schemas, prebuilt hook chains, Maps of actions.

/** Entry point of a frame; never throws (the socket listener relies on it). */
export function handleFrame (rt: Runtime, conn: Connection, raw: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
  // A connection being closed (slow consumer) can no longer be answered: its backlog of frames is
  // neither parsed nor run.
  if (conn.closed) return
  // Every frame counts toward the rate, garbage included: parsing and answering it costs too.
  if (!countFrame(rt, conn)) return
  const parsed = parseFrame(raw, isBinary, rt.parseOptions)
  if (parsed instanceof FrameError) {
    conn.log.debug({ err: parsed.reason }, 'frame rejected')
    sendReply(rt, conn, encodeError(parsed.requestId, toWireError(parsed.reason)))
    return
  }
  const refusal = admit(rt, conn)
  if (refusal !== undefined) {
    reject(rt, conn, parsed, refusal)
    return
  }
  const action = rt.resolve(conn, parsed)
  if (action instanceof Error) {
    reject(rt, conn, parsed, action)
    return
  }
  dispatch(rt, conn, action, parsed).catch(err => conn.log.error({ err }, 'action dispatch failed'))
}

/**
 * Writes a reply. Replies are never dropped (every request gets one), so a peer that sends requests
 * and never reads the replies would have the server buffer them without bound. Publications stop at
 * maxBufferedBytes; replies get as much again, then the peer is closed with 1013 whatever the
 * slowConsumer policy says.
 */
function sendReply (rt: Runtime, conn: Connection, frame: string): void {
  if (conn.socket.bufferedAmount > 2 * rt.options.maxBufferedBytes) {
    conn.shut(CLOSE.TRY_AGAIN_LATER, 'Slow consumer', 'slow consumer closed: replies not read', { bufferedAmount: conn.socket.bufferedAmount })
    return
  }
  conn.write(frame)
}

/**
 * Counts a frame in the connection's rate window. Past the limit requests are refused (admit); a
 * peer that sends twice the limit in one window is flooding, and answering each frame with an error
 * would still cost a parse and a reply: it is closed with 1008 instead. Returns false once closed.
 */
function countFrame (rt: Runtime, conn: Connection): boolean {
  const rate = rt.options.rateLimit
  if (rate === false) return true
  const now = performance.now()
  if (now - conn.windowStart >= rate.timeWindow) {
    conn.windowStart = now
    conn.windowCount = 0
  }
  if (++conn.windowCount <= 2 * rate.max) return true
  conn.shut(CLOSE.POLICY_VIOLATION, 'Rate limit exceeded', 'connection flooding past twice its rate limit; closing', { frames: conn.windowCount, timeWindow: rate.timeWindow })
  return false
}

/** Applies shutdown and the per-connection rate and in-flight limits; returns the error to send when refused. */
function admit (rt: Runtime, conn: Connection): Error | undefined {
  // New work during shutdown would keep extending the grace period that in-flight actions get.
  if (rt.closing) return new ShuttingDownError()
  const rate = rt.options.rateLimit
  if (rate !== false && conn.windowCount > rate.max) {
    return new TooManyRequestsError(`Rate limit of ${rate.max} requests per ${rate.timeWindow} ms exceeded`)
  }
  if (conn.inFlight >= rt.options.maxInFlight) return new TooManyRequestsError(`Too many requests in flight (limit ${rt.options.maxInFlight})`)
  return undefined
}

/** Answers a request that never reached an action (unknown names, limits). */
function reject (rt: Runtime, conn: Connection, message: Envelope, error: Error): void {
  const wire = toWireError(error)
  sendReply(rt, conn, encodeError(message.request_id, wire))
  if (conn.logsActions) {
    conn.log.info({ resource: message.resource, action: message.action, request_id: message.request_id, statusCode: wire.statusCode, responseTime: 0 }, 'action completed')
  }
}

async function dispatch (rt: Runtime, conn: Connection, action: CompiledAction, message: Envelope): Promise<void> {
  const ctx = new ActionContext(rt, conn, action.resource, action.action, message.request_id, action.scope)
  ctx.started = performance.now()
  conn.inFlight++
  rt.inFlight++
  const timeout = timeLimit(rt, action)
  if (timeout > 0) {
    ctx.compiled = action
    ctx.message = message
    rt.deadlines.add(ctx, timeout)
  }
  let frame: string | undefined
  try {
    frame = encodeReply(await execute(action, message, ctx), message.request_id)
  } catch (err) {
    // After a timeout a late failure changes nothing: the client was answered already.
    if (!ctx.timedOut) frame = await errorFrame(action, message, ctx, err)
  }
  if (timeout > 0) rt.deadlines.delete(ctx)
  // A timed-out handler kept its in-flight slot until now, so handlers that hang count against
  // maxInFlight instead of piling up unseen; its late result is discarded.
  if (ctx.timedOut || frame === undefined) {
    release(rt, conn)
    return
  }
  sendReply(rt, conn, frame)
  release(rt, conn)
  await completed(conn, action, message, ctx)
}

/** The time-limit sweep found an action overdue: answer ACTION_TIMEOUT now, run onTimeout. */
export function expire (rt: Runtime, ctx: ActionContext): void {
  const action = ctx.compiled as CompiledAction
  const message = ctx.message as Envelope
  const conn = ctx.connection as Connection
  ctx.timedOut = true
  settleError(action, message, ctx, new ActionTimeoutError(timeLimit(rt, action)))
    .then(wire => {
      sendReply(rt, conn, encodeError(message.request_id, wire))
      return completed(conn, action, message, ctx)
    })
    .catch(err => conn.log.error({ err }, 'action timeout handling failed'))
}

/** The "action completed" line, then onResponse hooks (whose errors are only logged). */
async function completed (conn: Connection, action: CompiledAction, message: Envelope, ctx: ActionContext): Promise<void> {
  if (conn.logsActions) {
    conn.log.info({ resource: action.resource, action: action.action, request_id: message.request_id, statusCode: ctx.statusCode, responseTime: performance.now() - ctx.started }, 'action completed')
  }
  if (action.hooks.onResponse.length > 0) await runSafeHooks(action.hooks.onResponse, ctx.log, 'onResponse', message, ctx)
}

/** An action's time limit in ms: its own `timeout`, else the plugin's `actionTimeout` (0: none). */
export function timeLimit (rt: Runtime, action: CompiledAction): number {
  return action.timeout ?? rt.options.actionTimeout
}

function release (rt: Runtime, conn: Connection): void {
  conn.inFlight--
  rt.inFlight--
  rt.actionSettled()
}

/** Hooks, validation, handler, onSend, serialization: resolves to the serialized data. Also the HTTP path (http.ts). */
export async function execute (action: CompiledAction, message: Envelope, ctx: ActionContext): Promise<string> {
  if (!action.hasHooks) {
    validate(action, message)
    return action.serialize(await action.handler.call(action.scope, message, ctx))
  }
  const hooks = action.hooks
  if (hooks.onRequest.length > 0) await runHooks(hooks.onRequest, message, ctx)
  if (hooks.preValidation.length > 0) await runHooks(hooks.preValidation, message, ctx)
  validate(action, message)
  if (hooks.preHandler.length > 0) await runHooks(hooks.preHandler, message, ctx)
  let data = await action.handler.call(action.scope, message, ctx)
  if (hooks.onSend.length > 0) data = await runSendHooks(hooks.onSend, message, ctx, data)
  return action.serialize(data)
}

function validate (action: CompiledAction, message: Envelope): void {
  const validator = action.validator
  if (validator === undefined || validator.Check(message.data)) return
  // Errors() is ~100x dearer than Check(): only called once Check failed.
  const details = dataErrors(validator.Errors(message.data))
  const first = details[0]
  throw validationError(first === undefined ? '"data" is invalid' : `"${first.path.slice(1)}" ${first.message}`, details)
}

export function withTimeout (pending: Promise<string>, ms: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // The error is built only when the timer fires: an Error captures a stack trace, which cost
    // more than the rest of the dispatch when it was built for every request.
    const timer = setTimeout(() => reject(new ActionTimeoutError(ms)), ms)
    pending.then(value => { clearTimeout(timer); resolve(value) }, err => { clearTimeout(timer); reject(err) })
  })
}

async function errorFrame (action: CompiledAction, message: Envelope, ctx: ActionContext, err: unknown): Promise<string> {
  return encodeError(message.request_id, await settleError(action, message, ctx, err))
}

/** Logs 5xx, runs onError/onTimeout, and returns what the client may see; shared with the HTTP path. */
export async function settleError (action: CompiledAction, message: Envelope, ctx: ActionContext, err: unknown): Promise<WireError> {
  const wire = toWireError(err)
  ctx.statusCode = wire.statusCode
  if (wire.statusCode >= 500) ctx.log.error({ err }, wire.code === 'ACTION_TIMEOUT' ? 'action timed out' : 'action failed')
  const hooks = wire.code === 'ACTION_TIMEOUT' ? action.hooks.onTimeout : action.hooks.onError
  if (hooks.length > 0) await runSafeHooks(hooks, ctx.log, wire.code === 'ACTION_TIMEOUT' ? 'onTimeout' : 'onError', message, ctx, err)
  return wire
}

const INTERNAL = new InternalError()

// Our own 5xx errors that are safe to show: they say nothing about the app's internals.
const PUBLIC_5XX = new Set(['ACTION_TIMEOUT', 'SERVICE_UNAVAILABLE'])

/**
 * What the client may learn of an error: errors with a statusCode below 500 pass through with their
 * code, message and details; anything else becomes INTERNAL_ERROR "Unknown error".
 */
export function toWireError (err: unknown): WireError {
  if (err !== null && typeof err === 'object') {
    const e = err as { statusCode?: unknown, status?: unknown, code?: unknown, message?: unknown, details?: unknown }
    const status = typeof e.statusCode === 'number' ? e.statusCode : e.status
    const code = typeof e.code === 'string' && e.code.length > 0 ? e.code : undefined
    if (typeof status === 'number' && Number.isInteger(status) && status >= 400 && status < 500) {
      return {
        code: code ?? codeOfStatus(status),
        message: typeof e.message === 'string' ? e.message : String(STATUS_CODES[status] ?? 'Error'),
        statusCode: status,
        details: e.details
      }
    }
    if (code !== undefined && PUBLIC_5XX.has(code) && typeof status === 'number') {
      return { code, message: String(e.message), statusCode: status }
    }
  }
  return { code: INTERNAL.code, message: INTERNAL.message, statusCode: 500 }
}

/** `409` -> `CONFLICT`, for errors (e.g. http-errors) that carry a status but no code. */
function codeOfStatus (status: number): string {
  const text = STATUS_CODES[status]
  return text === undefined ? `HTTP_${status}` : text.toUpperCase().replace(/[^A-Z0-9]+/g, '_').replace(/^_|_$/g, '')
}
