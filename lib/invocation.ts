import { performance } from 'node:perf_hooks'
import type { ActionContext } from './context.js'
import type { DeadlineEntry } from './deadlines.js'
import type { Envelope, WireError } from './protocol.js'
import type { CompiledAction } from './resources.js'

// One action being run and how its transport answers it: what the lifecycle (lib/lifecycle.ts), the
// streams (lib/stream.ts) and the transports share, in a module that imports none of them.

/** Where a transport takes a stream's items (the WebSocket connection, an HTTP response). */
export interface StreamWriter {
  /** Sends one serialized item. */
  item (invocation: Invocation, json: string): void
  /** Whether the peer can take another item now (its socket is under the slow-consumer bound). */
  writable (): boolean
  /** Calls `wake` once the peer can take more or is gone; a spurious call is harmless. */
  onWritable (wake: () => void): void
  /** True once nobody can receive the stream any more (socket closed, HTTP client gone). */
  readonly gone: boolean
}

/** How a transport answers an invocation: exactly one of the two is called, once. */
export interface Answer {
  /** The handler's result, serialized by the action's reply serializer. */
  reply (invocation: Invocation, json: string): void
  /** What the client may see of a failure (or of the time limit running out). */
  fail (invocation: Invocation, error: WireError): void
  /** The handler has ended (after the answer, or long after a timeout). */
  ended (invocation: Invocation): void
  /**
   * Where a streaming handler's items go (lib/stream.ts), or the error that refuses the stream.
   * A transport without it cannot stream: such a handler is answered with an error.
   */
  streamWriter? (invocation: Invocation): StreamWriter | Error
}

/** One action being run: what the lifecycle tracks beside the handler's context. */
export class Invocation implements DeadlineEntry {
  /** When the action started (performance.now()), for the response time. */
  readonly started = performance.now()
  /** Set when the time limit ran out and the client was answered ACTION_TIMEOUT. */
  timedOut = false
  deadline = 0
  prevDeadline: DeadlineEntry | undefined = undefined
  nextDeadline: DeadlineEntry | undefined = undefined
  tracked = false
  /** Set when `$request/cancel` stopped it and the client was answered CANCELLED. */
  cancelled = false
  /** Resumes a stream paused for backpressure, so a cancellation is seen at once. */
  wake: (() => void) | undefined = undefined
  /** Links of its connection's list of requests in flight (lib/stream.ts, RequestTable). */
  prevRequest: Invocation | undefined = undefined
  nextRequest: Invocation | undefined = undefined

  constructor (
    readonly action: CompiledAction,
    readonly message: Envelope,
    readonly ctx: ActionContext,
    readonly answer: Answer
  ) {}
}
