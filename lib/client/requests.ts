// Request bookkeeping: every request waiting for its reply, with its timeout and abort signal. Each
// way a request can end (reply, error frame, timeout, abort, disconnect, close) goes through
// `finish`, so a request ends exactly once and leaves no timer or listener behind.
import { DrizzleClientError } from './errors.js'
import { encodeRequest, type Reply } from './frames.js'
import { noop } from './emitter.js'
import { positive, type RequestOptions } from './options.js'
import type { ClientState } from './types.js'

/** The part of the connection requests need: whether it is usable, and a way to write to it. */
export interface Link {
  readonly state: ClientState
  /** Writes a frame to the current socket; false when there is none. Throws what the socket throws. */
  send (frame: string): boolean
}

interface Pending {
  readonly id: number
  readonly frame: string
  readonly resolve: (data: unknown) => void
  readonly reject: (err: unknown) => void
  /** Takes the items of a streamed reply; undefined for `request()`, which ignores them. */
  readonly onItem: ((data: unknown) => void) | undefined
  /** Written to the current socket (a disconnect rejects it); otherwise it waits for the next open. */
  sent: boolean
  cleanup: () => void
  /** Starts the timeout again: a stream's timeout is the longest wait for its next frame. */
  rearm: () => void
}

/** A request under way: its id (for `$request/cancel`) and its final reply. */
export interface Call {
  readonly id: number
  readonly done: Promise<unknown>
}

const MAX_TIMER = 2_147_483_647 // setTimeout fires at once above this

export class PendingRequests {
  private readonly pending = new Map<number, Pending>()
  private nextId = 0

  constructor (private readonly link: Link, private readonly defaultTimeout: number) {}

  /**
   * Sends `action` on `resource` and resolves with the reply's `data`. While the link is not open the
   * request waits for `flush` (within its timeout); it rejects at once when the client is closed.
   */
  add (resource: string, action: string, data: unknown, options: RequestOptions = {}): Promise<unknown> {
    return this.open(resource, action, data, options, undefined).done
  }

  /**
   * Sends a request whose reply may be streamed: `onItem` gets each item, `done` the final reply.
   * Aborting it or its timeout (the longest wait for its next frame) cancels it on the server too.
   */
  open (resource: string, action: string, data: unknown, options: RequestOptions = {}, onItem: ((data: unknown) => void) | undefined): Call {
    const signal = options.signal
    const id = ++this.nextId
    if (signal?.aborted === true) return { id, done: Promise.reject(signal.reason) }
    if (this.link.state === 'closed') return { id, done: Promise.reject(new DrizzleClientError('disconnect', 'Client is closed')) }
    const timeout = positive(options.timeout, this.defaultTimeout, 'timeout')
    const frame = encodeRequest(resource, action, data, id)
    const done = new Promise((resolve, reject) => {
      const entry: Pending = { id, frame, resolve, reject, onItem, sent: false, cleanup: noop, rearm: noop }
      const end = (reason: unknown): void => { if (onItem === undefined) this.finish(entry, reason, false); else this.cancel(id, reason) }
      const onAbort = (): void => { end(signal?.reason) }
      const expire = (): void => { end(new DrizzleClientError('timeout', `${resource}.${action} got no reply within ${timeout} ms`, { requestId: id })) }
      let timer = setTimeout(expire, Math.min(timeout, MAX_TIMER))
      signal?.addEventListener('abort', onAbort, { once: true })
      entry.cleanup = () => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort) }
      entry.rearm = () => { clearTimeout(timer); timer = setTimeout(expire, Math.min(timeout, MAX_TIMER)) }
      this.pending.set(id, entry)
      if (this.link.state === 'open') this.write(entry)
    })
    return { id, done }
  }

  /**
   * Ends a request here with `reason` and, when the server has it, asks the server to cancel it
   * (`$request/cancel`; its answer is not awaited). Its late frames are then dropped.
   */
  cancel (id: number, reason: unknown): void {
    const entry = this.pending.get(id)
    if (entry === undefined) return
    const sent = entry.sent
    this.finish(entry, reason, false)
    if (sent && this.link.state === 'open') this.add('$request', 'cancel', { request_id: id }).catch(noop)
  }

  /** Ends the request a reply answers; false when none waits for it (it timed out or was aborted). */
  answer (reply: Reply): boolean {
    const entry = this.pending.get(reply.requestId)
    if (entry === undefined) return false
    if (reply.more) {
      // request() on a streaming action resolves with the final reply only.
      entry.rearm()
      entry.onItem?.(reply.data)
      return true
    }
    this.finish(entry, reply.error ?? reply.data, reply.error === undefined)
    return true
  }

  /** A connection opened: writes the requests made while there was none, in the order they were made. */
  flush (): void {
    for (const entry of [...this.pending.values()]) if (!entry.sent) this.write(entry)
  }

  /** The socket closed: what was written to it will get no reply. Unsent requests go on waiting. */
  failSent (code: number): void {
    for (const entry of [...this.pending.values()]) {
      if (entry.sent) this.finish(entry, new DrizzleClientError('disconnect', `Connection closed (${code}) before the reply`, { requestId: entry.id }), false)
    }
  }

  /** The client stopped for good: nothing will be sent or answered any more. */
  failAll (why: string): void {
    for (const entry of [...this.pending.values()]) {
      this.finish(entry, new DrizzleClientError('disconnect', why, { requestId: entry.id }), false)
    }
  }

  private write (entry: Pending): void {
    try {
      entry.sent = this.link.send(entry.frame)
    } catch (err) {
      // A socket that throws on send is on its way out; its close event will follow.
      this.finish(entry, new DrizzleClientError('disconnect', 'Could not send the request', { requestId: entry.id, cause: err }), false)
    }
  }

  private finish (entry: Pending, value: unknown, ok: boolean): void {
    if (this.pending.get(entry.id) !== entry) return
    this.pending.delete(entry.id)
    entry.cleanup()
    if (ok) entry.resolve(value)
    else entry.reject(value)
  }
}
