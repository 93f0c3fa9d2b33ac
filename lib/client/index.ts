// fastify-drizzle/client: the browser + Node client of wire protocol v1 (see the README's "Protocol"
// and "Client" sections).
//
// This folder runs in browsers: no file in it may import anything at runtime but its siblings (no
// node:*, no ws, no Buffer, no process). Only TYPES come from the server side, and `import type` is
// erased from the build, so the built folder (and the one-file bundle `npm run build` makes of it)
// loads in a page as is. test/client-build.test.ts holds the build to that.
//
// DrizzleClient is the facade; each concern lives in its own module:
//   connection.ts  the socket, the reconnect state machine, close()
//   requests.ts    requests waiting for a reply: timeouts, abort, disconnects
//   topics.ts      subscriptions, their renewal after a reconnect, listeners of publications
//   frames.ts      the request envelope, and the sorting of incoming frames
//   options.ts     options, defaults and their validation
import type { AnyApi } from '../types.js'
import { ClientConnection } from './connection.js'
import { Emitter } from './emitter.js'
import { classifyFrame } from './frames.js'
import { resolveOptions, type DrizzleClientOptions, type RequestOptions } from './options.js'
import { PendingRequests } from './requests.js'
import { streamRequest } from './stream.js'
import { ClientTopics } from './topics.js'
import type {
  ActionName, ClientEvents, ClientState, ConnectOption, PresenceMember, RequestData, RequestReply, ResourceName, StreamItem, SubscribeOptions, TopicData,
  TopicListener, TopicName, Unsubscribe
} from './types.js'

export { DrizzleClientError } from './errors.js'
export type { DrizzleClientErrorOptions, DrizzleClientErrorType } from './errors.js'
export type { DrizzleClientOptions, ReconnectOptions, RequestOptions } from './options.js'
export type {
  ActionName, ClientEvents, ClientState, ConnectOption, ConnectTarget, PresenceEvent, PresenceListener, PresenceMember, Position, Publication, RecoveryResult,
  RequestData, RequestReply, ResourceName, StreamItem, SubscribeOptions, TopicData, TopicListener, TopicName, Unsubscribe, WebSocketConstructor, WebSocketLike
} from './types.js'

/** `data` may be left out when the action's data type accepts undefined (no schema: unknown). */
type RequestArgs<D> = undefined extends D ? [data?: D, options?: RequestOptions] : [data: D, options?: RequestOptions]

/**
 * A WebSocket client of fastify-drizzle: requests (`request`), topic subscriptions (`subscribe`,
 * `listen`), automatic reconnect. Typed by the server's API: `new DrizzleClient<Api>(url)` with
 * `type Api = InferApi<typeof todos | typeof rooms>` exported by the server code.
 */
export class DrizzleClient<Api extends AnyApi = AnyApi> {
  private readonly events = new Emitter<ClientEvents>()
  private readonly connection: ClientConnection
  private readonly requests: PendingRequests
  private readonly topics: ClientTopics

  constructor (url: ConnectOption, options: DrizzleClientOptions = {}) {
    const settings = resolveOptions(url, options)
    this.connection = new ClientConnection(url, settings.connection, {
      opened: () => { this.requests.flush(); this.topics.renew() },
      received: data => { this.receive(data) },
      lost: code => { this.requests.failSent(code) },
      stopped: why => { this.requests.failAll(why); this.topics.failAll(why) }
    }, this.events)
    this.requests = new PendingRequests(this.connection, settings.timeout)
    this.topics = new ClientTopics(this.connection, this.requests, this.events)
    this.connection.connect()
  }

  /** `connecting` (an attempt is under way), `open`, `reconnecting` (waiting out a backoff) or `closed` (for good). */
  get state (): ClientState { return this.connection.state }

  on<E extends keyof ClientEvents> (event: E, handler: (arg: ClientEvents[E]) => void): () => void {
    return this.events.on(event, handler)
  }

  off<E extends keyof ClientEvents> (event: E, handler: (arg: ClientEvents[E]) => void): void {
    this.events.off(event, handler)
  }

  /**
   * Performs `action` on `resource` and resolves with the reply's `data`. Made while disconnected, the
   * request waits for the next open (within its timeout); it rejects at once with `disconnect` when
   * the client is closed or will not reconnect.
   */
  request<R extends ResourceName<Api>, A extends ActionName<Api, R>> (
    resource: R, action: A, ...args: RequestArgs<RequestData<Api, R, A>>
  ): Promise<RequestReply<Api, R, A>> {
    const [data, options] = args
    return this.requests.add(resource, action, data, options) as Promise<RequestReply<Api, R, A>>
  }

  /**
   * Performs a streaming action (a server handler that is an async generator) and yields its items
   * as they come: `for await (const row of client.stream('rows', 'query', { q }, { signal }))`.
   * Leaving the loop early (`break`), aborting `signal` or the timeout (the longest wait for the
   * next item) cancels it on the server with `$request/cancel`. The generator's return value is the
   * final reply's data; an error frame (a handler's error, CANCELLED) is thrown from the loop. On a
   * plain action it yields nothing and returns the reply.
   */
  stream<R extends ResourceName<Api>, A extends ActionName<Api, R>> (
    resource: R, action: A, ...args: RequestArgs<RequestData<Api, R, A>>
  ): AsyncGenerator<StreamItem<Api, R, A>, RequestReply<Api, R, A>, undefined> {
    const [data, options] = args
    return streamRequest(this.requests, resource, action, data, options) as AsyncGenerator<StreamItem<Api, R, A>, RequestReply<Api, R, A>, undefined>
  }

  /**
   * Subscribes to a topic the server declared (`app.drizzle.topic(...)`) with a `$topic/subscribe`
   * request, renewed after every reconnect. Returns the function that removes this listener; the
   * last listener of a topic to leave sends `$topic/unsubscribe`. A refusal (FORBIDDEN,
   * TOPIC_NOT_FOUND, ...) is emitted as an `error` event (with `topic` set), rejects `ready`, and
   * drops the topic's listeners.
   *
   * On a topic that keeps history the subscription remembers its last position: after a reconnect,
   * or when an offset is missing (a publication dropped for a slow consumer), it subscribes again
   * `since` that position and gets what it missed, in order, each once; `options.since` starts from a
   * known position; `options.onRecovery` says when what was missed could not be recovered.
   */
  subscribe<T extends TopicName<Api>> (topic: T, listener: TopicListener<TopicData<Api, T>>, options?: SubscribeOptions): Unsubscribe {
    return this.topics.subscribe(topic, listener, options)
  }

  /**
   * The members of a topic declared with `presence` (`$presence/get`), on every instance of the
   * server. The client must be subscribed to it (else FORBIDDEN); a topic without presence is
   * TOPIC_NOT_FOUND. `$join`/`$leave` frames after that come through the subscription's `on`.
   */
  async presence<T extends TopicName<Api>> (topic: T, options?: RequestOptions): Promise<PresenceMember[]> {
    const reply = await this.requests.add('$presence', 'get', { topic }, options) as { members: PresenceMember[] }
    return reply.members
  }

  /**
   * Listens to publications of a topic without asking the server for it: for topics the server put
   * the connection in itself (a handler's `ctx.subscribe`, or `__all__`). Returns the function that
   * removes the listener.
   */
  listen<T extends string> (topic: T, listener: TopicListener<TopicData<Api, T>>): () => void {
    return this.topics.listen(topic, listener)
  }

  /**
   * Closes for good: rejects every pending request and unconfirmed subscription with `disconnect`,
   * clears every timer, and resolves once the socket closed (at most `closeTimeout` ms later, after
   * which a `ws` socket is terminated).
   */
  close (code = 1000, reason = ''): Promise<void> {
    return this.connection.close(code, reason)
  }

  private receive (raw: unknown): void {
    const incoming = classifyFrame(raw)
    switch (incoming.kind) {
      case 'publication':
        this.topics.dispatchPublication(incoming.publication)
        break
      case 'reply':
        // A reply nobody waits for is late (its request timed out or was aborted): dropped on purpose.
        this.requests.answer(incoming.reply)
        break
      case 'error':
        this.events.emit('error', incoming.error)
        break
      case 'ignored':
        break
    }
  }
}
