import { STATUS_CODES } from 'node:http'
import { performance } from 'node:perf_hooks'
import { answered as notifyAnswered } from './answered.js'
import { abortContext, type ActionContext } from './context.js'
import { Deadlines } from './deadlines.js'
import { ActionTimeoutError, CancelledError, InternalError, StreamNotSupportedError, validationError } from './errors.js'
import { runHooks, runSafeHooks, runSendHooks } from './hooks.js'
import { dataErrors, type Envelope, type WireError } from './protocol.js'
import type { CompiledAction } from './resources.js'
import type { TraceSpan, Tracing } from './tracing.js'
import type { ActionMetrics } from './metrics.js'
import { isStream, pump, type StreamClock, type Streamed } from './stream.js'
import type { Invocation } from './invocation.js'

export { Invocation, type Answer } from './invocation.js'

// The life of one action, whatever carried it (a WebSocket frame or an HTTP request): hooks,
// validation, handler, onSend, reply serialization, errors, and the time limit. A transport builds an
// Invocation and says how to answer it; this module never touches a socket or a reply object.

/**
 * Runs actions and keeps their time limits with one sweep (lib/deadlines.ts), for every transport.
 * Counts the actions in flight, so shutdown can wait for them.
 */
export class ActionRunner {
  /** Actions whose handler has not ended yet, timed-out ones included. */
  inFlight = 0
  private readonly deadlines = new Deadlines<Invocation>(invocation => this.expire(invocation))
  private drained: (() => void) | undefined
  /** Set when @opentelemetry/api is installed; it traces only once it found an SDK (`active`). */
  tracing: Tracing | undefined
  /** Set when the `metrics` option is on: every action answered is counted, for every transport. */
  metrics: ActionMetrics | undefined
  /** A stream's time limit covers each pull, not the time it waits for a slow peer (lib/stream.ts). */
  private readonly clock: StreamClock = {
    arm: invocation => {
      const limit = this.timeLimit(invocation.action)
      if (limit <= 0) return
      this.deadlines.delete(invocation)
      this.deadlines.add(invocation, limit)
    },
    disarm: invocation => this.deadlines.delete(invocation)
  }

  constructor (private readonly defaultLimit: number) {}

  /** An action's time limit in ms: its own `timeout`, else the plugin's `actionTimeout` (0: none). */
  timeLimit (action: CompiledAction): number {
    return action.timeout ?? this.defaultLimit
  }

  /** Sets the sweep's precision from the shortest time limit in use. */
  tune (actions: Iterable<CompiledAction>): void {
    let shortest = this.defaultLimit > 0 ? this.defaultLimit : Infinity
    for (const action of actions) {
      if (action.timeout !== undefined && action.timeout > 0) shortest = Math.min(shortest, action.timeout)
    }
    this.deadlines.tune(Number.isFinite(shortest) ? shortest : 10_000)
  }

  /**
   * Runs the action and answers it once, then tells the transport the handler has ended: a timed-out
   * handler keeps its place in `inFlight` until then, so handlers that hang stay counted. Never throws,
   * and nothing it starts rejects: failures are answered or logged.
   */
  run (invocation: Invocation): void {
    this.inFlight++
    const limit = this.timeLimit(invocation.action)
    if (limit > 0) this.deadlines.add(invocation, limit, invocation.started)
    const tracing = this.tracing
    const span: TraceSpan | undefined = tracing?.active === true ? tracing.startAction(invocation) : undefined
    const { action, message, ctx } = invocation
    // The span is active only where a context manager can make it so (Tracing.activates);
    // publications made through ctx find it on ctx either way.
    if (span !== undefined && (tracing as Tracing).activates) {
      this.settle(invocation, span, (tracing as Tracing).runAction(span, () => execute(action, message, ctx)))
      return
    }
    if (action.hasHooks) {
      this.settle(invocation, span, execute(action, message, ctx))
      return
    }
    // execute()'s steps without an async function: its frame and promises cost about 700 bytes per
    // request, and most actions have no hooks.
    let data: unknown
    try {
      validate(action, message)
      data = action.handler.call(action.scope, message, ctx)
    } catch (err) {
      this.failed(invocation, span, err)
      return
    }
    if (isThenable(data)) {
      Promise.resolve(data).then(value => { this.handled(invocation, span, value) }, err => { this.failed(invocation, span, err) })
    } else this.handled(invocation, span, data)
  }

  /** What a handler without hooks resolved to: serialized and answered, or streamed. */
  private handled (invocation: Invocation, span: TraceSpan | undefined, data: unknown): void {
    if (isStream(data)) {
      this.settle(invocation, span, data)
      return
    }
    let json: string
    try {
      json = invocation.action.serialize(data)
    } catch (err) {
      this.failed(invocation, span, err)
      return
    }
    this.finish(invocation, span, json, undefined)
  }

  private failed (invocation: Invocation, span: TraceSpan | undefined, err: unknown): void {
    // After a timeout or a cancel a late failure changes nothing: the client was answered already.
    if (answered(invocation)) this.finish(invocation, span, undefined, undefined)
    else failure(invocation, err).then(error => { this.finish(invocation, span, undefined, error) }, () => {})
  }

  /** The general path (hooks, an active span, streams): awaits the work, then answers. */
  private async settle (invocation: Invocation, span: TraceSpan | undefined, work: Promise<string | Streamed> | Streamed): Promise<void> {
    let json: string | undefined
    let error: WireError | undefined
    try {
      const result = await work
      json = typeof result === 'string' ? result : await this.stream(invocation, result)
    } catch (err) {
      if (!answered(invocation)) error = await failure(invocation, err)
    }
    this.finish(invocation, span, json, error)
  }

  /** Answers (unless a timeout or cancel did), then frees the action's slot: the one end of run(). */
  private finish (invocation: Invocation, span: TraceSpan | undefined, json: string | undefined, error: WireError | undefined): void {
    this.deadlines.delete(invocation)
    try {
      // Neither a reply nor an error: a stream stopped because its peer is gone.
      if (!answered(invocation)) {
        if (json !== undefined) invocation.answer.reply(invocation, json)
        else if (error !== undefined) invocation.answer.fail(invocation, error)
        this.metrics?.action(invocation.action, invocation.ctx.statusCode, (performance.now() - invocation.started) / 1000)
      }
    } catch (err) {
      invocation.ctx.log.error({ err }, 'answering the action failed')
    }
    notifyAnswered(invocation.ctx)
    this.inFlight--
    if (this.inFlight === 0 && this.drained !== undefined) this.drained()
    // A timed-out action's span lasts until its handler ends: that is how long it held the server.
    if (span !== undefined) (this.tracing as Tracing).endAction(span, invocation.ctx.statusCode, error?.code ?? (invocation.timedOut ? 'ACTION_TIMEOUT' : undefined))
    invocation.answer.ended(invocation)
  }

  /** Streams the handler's items through the transport's writer; see lib/stream.ts. */
  private async stream (invocation: Invocation, stream: Streamed): Promise<string | undefined> {
    const writer = invocation.answer.streamWriter?.(invocation) ?? new StreamNotSupportedError()
    if (writer instanceof Error) {
      await stream[Symbol.asyncIterator]().return?.()
      throw writer
    }
    return await pump(invocation, stream, writer, this.clock)
  }

  /**
   * `$request/cancel`: aborts ctx.signal, answers CANCELLED now (after onError hooks), and lets a
   * stream see it at its next step. The handler keeps its in-flight slot until it really ends.
   * Resolves to false when the action was answered already.
   */
  async cancel (invocation: Invocation): Promise<boolean> {
    if (answered(invocation)) return false
    invocation.cancelled = true
    this.deadlines.delete(invocation)
    const error = new CancelledError()
    abortContext(invocation.ctx, error)
    invocation.wake?.()
    invocation.answer.fail(invocation, await failure(invocation, error))
    return true
  }

  /** The sweep found an action overdue: answer ACTION_TIMEOUT now and run onTimeout. */
  private expire (invocation: Invocation): void {
    if (invocation.cancelled) return
    invocation.timedOut = true
    invocation.wake?.()
    const error = new ActionTimeoutError(this.timeLimit(invocation.action))
    abortContext(invocation.ctx, error)
    failure(invocation, error)
      .then(error => {
        invocation.answer.fail(invocation, error)
        this.metrics?.action(invocation.action, error.statusCode, (performance.now() - invocation.started) / 1000)
      })
      .catch(err => invocation.ctx.log.error({ err }, 'action timeout handling failed'))
  }

  /** Resolves when no action is in flight, or after `ms`. */
  waitForActions (ms: number): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve()
    return new Promise(resolve => {
      const finish = (): void => { clearTimeout(timer); this.drained = undefined; resolve() }
      const timer = setTimeout(finish, ms)
      this.drained = finish
    })
  }

  close (): void {
    this.deadlines.close()
  }
}

/**
 * Hooks, validation, handler, onSend, serialization: resolves to the serialized data, or to the
 * stream a streaming handler returned (its onSend hooks run on its final value, in lib/stream.ts).
 * An action without hooks whose span need not be made active runs the same steps in run() itself.
 */
async function execute (action: CompiledAction, message: Envelope, ctx: ActionContext): Promise<string | Streamed> {
  const hooks = action.hooks
  if (hooks.onRequest.length > 0) await runHooks(hooks.onRequest, message, ctx)
  if (hooks.preValidation.length > 0) await runHooks(hooks.preValidation, message, ctx)
  validate(action, message)
  if (hooks.preHandler.length > 0) await runHooks(hooks.preHandler, message, ctx)
  let data = await action.handler.call(action.scope, message, ctx)
  if (isStream(data)) return data
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

/** Logs 5xx with the real error, runs onError (or onTimeout), and returns what the client may see. */
async function failure (invocation: Invocation, err: unknown): Promise<WireError> {
  const { action, message, ctx } = invocation
  const wire = toWireError(err)
  ctx.statusCode = wire.statusCode
  const timedOut = wire.code === 'ACTION_TIMEOUT'
  if (wire.statusCode >= 500) ctx.log.error({ err }, timedOut ? 'action timed out' : 'action failed')
  const hooks = timedOut ? action.hooks.onTimeout : action.hooks.onError
  if (hooks.length > 0) await runSafeHooks(hooks, ctx.log, timedOut ? 'onTimeout' : 'onError', message, ctx, err)
  return wire
}

function isThenable (value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function'
}

/** Whether the client was answered already, by the time limit or a cancel. */
function answered (invocation: Invocation): boolean {
  return invocation.timedOut || invocation.cancelled
}

/** onResponse hooks, once the transport has answered; their errors are only logged. */
export async function runResponseHooks (invocation: Invocation): Promise<void> {
  const hooks = invocation.action.hooks.onResponse
  if (hooks.length > 0) await runSafeHooks(hooks, invocation.ctx.log, 'onResponse', invocation.message, invocation.ctx)
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
    // A topic a handler took from the client and could not subscribe or publish to: the client's
    // mistake, answered as one (the server API's FST_DRIZZLE_INVALID_TOPIC is not a wire code).
    if (e.code === 'FST_DRIZZLE_INVALID_TOPIC') return { code: 'VALIDATION_ERROR', message: String(e.message), statusCode: 400 }
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
