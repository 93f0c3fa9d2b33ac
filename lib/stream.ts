import type { FastifyInstance } from 'fastify'
import Type from 'typebox'
import { runSendHooks } from './hooks.js'
import type { Invocation, StreamWriter } from './invocation.js'
import { compileAction, type CompiledAction } from './resources.js'
import { encodeId, MAX_REQUEST_ID_LENGTH, type Envelope, type RequestIdValue } from './protocol.js'

// Streaming replies (DESIGN section 11, PROTOCOL.md "Streams"). A handler that returns an async
// iterable (an async generator function, typically) streams its reply: each item goes out as
// `{"data", "request_id", "more": true}` and the generator's return value as the ordinary reply.
// The stream is pulled, never pushed: the next item is asked for only while the transport can take
// it, so a peer that stops reading pauses the generator instead of growing a buffer.

export type Streamed = AsyncIterable<unknown>

/**
 * Whether a handler's result is a stream. Called on every result, so it is one property read:
 * an async iterable is anything with `Symbol.asyncIterator` (async generators, Node Readables).
 */
export function isStream (value: unknown): value is Streamed {
  return typeof value === 'object' && value !== null && typeof (value as Partial<Streamed>)[Symbol.asyncIterator] === 'function'
}

/**
 * Whether a handler streams by its declaration (an `async function *`), for documents: a plain
 * function returning an async iterable streams too, but only its result tells.
 */
export function isGeneratorFunction (fn: unknown): boolean {
  return Object.prototype.toString.call(fn) === '[object AsyncGeneratorFunction]'
}

/** `{"data":<item>,"request_id":7,"more":true}`: the reply's shape plus `more`, so old parsers still read it. */
export function encodeItem (json: string, id: RequestIdValue): string {
  return '{"data":' + json + ',"request_id":' + encodeId(id) + ',"more":true}'
}

export type { StreamWriter } from './invocation.js'

/** The time limit of a stream, held by the action runner: it covers each pull, not the time paused. */
export interface StreamClock {
  arm (invocation: Invocation): void
  disarm (invocation: Invocation): void
}

/**
 * Items pulled before the loop gives the event loop a turn. A generator whose items are ready at
 * once, read by a fast peer, would otherwise run on microtasks alone: no timer, no other socket and
 * no `$request/cancel` frame would be served until it ended.
 */
const ITEMS_PER_TURN = 64

/**
 * Pulls the stream while the writer can take items and writes each one; resolves with the final
 * reply (the return value, through onSend and the action's serializer), or undefined when the stream
 * was stopped (cancelled, timed out, its peer gone) and the answer, if any, was sent already.
 * Rejects with what the generator threw. Whenever the stream ends early, its `return()` is called
 * and awaited, so the generator's `finally` runs.
 */
export async function pump (invocation: Invocation, stream: Streamed, writer: StreamWriter, clock: StreamClock): Promise<string | undefined> {
  const iterator = stream[Symbol.asyncIterator]()
  let finished = false
  let pulled = 0
  try {
    while (true) {
      if (stopped(invocation, writer)) return undefined
      if (!writer.writable()) {
        clock.disarm(invocation)
        await writable(invocation, writer)
        continue
      }
      if (++pulled % ITEMS_PER_TURN === 0) {
        await nextTurn()
        if (stopped(invocation, writer)) return undefined
      }
      clock.arm(invocation)
      let step: IteratorResult<unknown>
      try {
        step = await iterator.next()
      } catch (err) {
        finished = true
        throw err
      }
      if (step.done === true) {
        finished = true
        return await finalReply(invocation, step.value)
      }
      if (stopped(invocation, writer)) return undefined
      writer.item(invocation, JSON.stringify(step.value) ?? 'null')
    }
  } finally {
    if (!finished) await closeIterator(invocation, iterator)
  }
}

function stopped (invocation: Invocation, writer: StreamWriter): boolean {
  return invocation.timedOut || invocation.cancelled || writer.gone
}

/** Waits for the writer to drain, or for a cancellation (which calls `invocation.wake`). */
function writable (invocation: Invocation, writer: StreamWriter): Promise<void> {
  return new Promise<void>(resolve => {
    invocation.wake = resolve
    writer.onWritable(resolve)
  }).then(() => { invocation.wake = undefined })
}

function nextTurn (): Promise<void> {
  return new Promise(resolve => setImmediate(resolve))
}

/** The generator's return value is the ordinary reply: onSend hooks, then the action's reply serializer. */
async function finalReply (invocation: Invocation, value: unknown): Promise<string> {
  const { action, message, ctx } = invocation
  const hooks = action.hooks.onSend
  const data = hooks.length > 0 ? await runSendHooks(hooks, message, ctx, value) : value
  return action.serialize(data)
}

/** Runs the generator's `finally`; what it throws there can reach nobody but the log. */
async function closeIterator (invocation: Invocation, iterator: AsyncIterator<unknown>): Promise<void> {
  try {
    await iterator.return?.()
  } catch (err) {
    invocation.ctx.log.error({ err }, 'closing a stream failed')
  }
}

// ---- $request/cancel ------------------------------------------------------------------------

export const REQUEST_RESOURCE = '$request'

/** `data` of `$request/cancel`: the id of the request to cancel, as request ids are on the wire. */
export const CancelData = Type.Object({
  request_id: Type.Union([
    Type.String({ minLength: 1, maxLength: MAX_REQUEST_ID_LENGTH }),
    Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER })
  ])
})

/** What the cancel action needs of a connection: its requests in flight, by id. */
export interface Cancellable {
  /** Cancels the request in flight with that id; `by` is the cancel's own message. */
  cancel (requestId: RequestIdValue, by: Envelope): Promise<boolean>
}

/**
 * Requests in flight on one connection, oldest first, so `$request/cancel` can find them by id. An
 * intrusive list (the links live on the invocations): a Map entry per request cost every action an
 * allocation, measurable as RSS under a flood of requests, while lookups are rare (cancels, streams)
 * and scan at most `maxInFlight` entries. Ids are the client's and per connection. A client may reuse
 * an id while a request with it runs (older clients do): the oldest holds the id, and a stream that
 * is not that oldest one is refused (its items could not be told apart).
 */
export class RequestTable {
  /** The connection's requests whose handler has not ended (maxInFlight). */
  size = 0
  /** Signals of these requests that handlers asked for (ctx.signal), aborted when the connection closes. */
  signals: Set<AbortController> | undefined = undefined
  private head: Invocation | undefined
  private tail: Invocation | undefined

  add (invocation: Invocation): void {
    this.size++
    invocation.prevRequest = this.tail
    invocation.nextRequest = undefined
    if (this.tail === undefined) this.head = invocation
    else this.tail.nextRequest = invocation
    this.tail = invocation
  }

  delete (invocation: Invocation): void {
    if (invocation.prevRequest === undefined && this.head !== invocation) return
    this.size--
    if (invocation.prevRequest === undefined) this.head = invocation.nextRequest
    else invocation.prevRequest.nextRequest = invocation.nextRequest
    if (invocation.nextRequest === undefined) this.tail = invocation.prevRequest
    else invocation.nextRequest.prevRequest = invocation.prevRequest
    invocation.prevRequest = invocation.nextRequest = undefined
  }

  /** Whether `invocation` is the oldest request in flight with its id. */
  owns (invocation: Invocation): boolean {
    return this.oldest(invocation.message.request_id) === invocation
  }

  /** The request in flight with that id, except the one asking (a request cannot cancel itself). */
  find (requestId: RequestIdValue, by: Envelope): Invocation | undefined {
    const found = this.oldest(requestId)
    return found?.message === by ? undefined : found
  }

  private oldest (requestId: RequestIdValue): Invocation | undefined {
    for (let entry = this.head; entry !== undefined; entry = entry.nextRequest) {
      if (entry.message.request_id === requestId) return entry
    }
    return undefined
  }
}

/**
 * The built-in `$request/cancel` action (one per app, in the root scope, so the root's hooks apply).
 * It answers `{"cancelled": true}` once the target's CANCELLED frame is sent, `false` when nothing
 * of that id runs on this connection; another connection's requests are out of its reach.
 */
export function cancelAction (scope: FastifyInstance): CompiledAction {
  async function cancel (message: Envelope, ctx: { connection: unknown }): Promise<{ cancelled: boolean }> {
    const conn = ctx.connection as Partial<Cancellable>
    const target = (message.data as { request_id: RequestIdValue }).request_id
    return { cancelled: typeof conn.cancel === 'function' ? await conn.cancel(target, message) : false }
  }
  return compileAction(scope, REQUEST_RESOURCE, 'cancel', { schema: { data: CancelData }, handler: cancel })
}
