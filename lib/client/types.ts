// The client's public types: the sockets it accepts, what it infers from the server's declarations,
// and the shapes its callbacks receive. Types only: nothing here exists at runtime.
import type { AnyApi } from '../types.js'
import type { DrizzleClientError } from './errors.js'
import type { PresenceMember } from '../brokers/presence.js'

export type { PresenceMember }

// ---- sockets ------------------------------------------------------------------------------------

/** The part of the WebSocket API the client uses; both the browser's WebSocket and `ws` provide it. */
export interface WebSocketLike {
  readonly readyState: number
  /** The address the socket was opened with; absent on an in-memory socket (`app.injectWS`). */
  readonly url?: string
  binaryType?: string
  // Events typed `any`: the DOM's and ws's event classes differ, and a handler property typed with
  // either would reject the other's sockets. The client reads only `data`, `code` and `reason`.
  onopen: ((event: any) => void) | null
  onmessage: ((event: any) => void) | null
  onclose: ((event: any) => void) | null
  onerror: ((event: any) => void) | null
  send (data: string): void
  close (code?: number, reason?: string): void
  /** `ws` only: drops the connection without the closing handshake. */
  terminate? (): void
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

/** What a connection attempt starts from: a URL, or a socket someone else already created. */
export type ConnectTarget = string | URL | WebSocketLike
/**
 * The client's first argument. A string or URL is the server's address. A function is called again
 * on EVERY connection attempt (fresh tokens, rotating hosts) and may return, or resolve to, a string
 * or URL (the client then creates the socket with the WebSocket constructor) or an already-created
 * socket (any object with `send` and `close` methods: for example `app.injectWS('/ws')` in tests,
 * or `new WebSocket(url, { headers })` from `ws` when Node needs headers).
 */
export type ConnectOption = string | URL | (() => ConnectTarget | Promise<ConnectTarget>)

// ---- typing from the server's declarations ------------------------------------------------------

type Resources<Api extends AnyApi> = Api['resources']
export type ResourceName<Api extends AnyApi> = keyof Resources<Api> & string
export type ActionName<Api extends AnyApi, R extends ResourceName<Api>> = keyof Resources<Api>[R] & string
export type RequestData<Api extends AnyApi, R extends ResourceName<Api>, A extends ActionName<Api, R>> =
  Resources<Api>[R][A] extends { data: infer D } ? D : unknown
export type RequestReply<Api extends AnyApi, R extends ResourceName<Api>, A extends ActionName<Api, R>> =
  Resources<Api>[R][A] extends { reply: infer T } ? T : unknown

/** The items a streaming action yields (its generator's yield type); `never` for plain actions. */
export type StreamItem<Api extends AnyApi, R extends ResourceName<Api>, A extends ActionName<Api, R>> =
  Resources<Api>[R][A] extends { item: infer I } ? I : unknown

export type TopicName<Api extends AnyApi> = keyof Api['topics'] & string
export type TopicData<Api extends AnyApi, T extends string> = T extends keyof Api['topics'] ? Api['topics'][T] : unknown

// ---- what callbacks receive ---------------------------------------------------------------------

/** A publication frame: `{"topic", "data", "event"?, "offset"?}` (`offset` on topics that keep history). */
export interface Publication<D = unknown> {
  topic: string
  data: D
  event?: string
  /** Position of the publication in its topic's history (history topics only). */
  offset?: number
}

/** A position in a topic's history, as the server gives it (subscribe replies, `ctx.position`). */
export interface Position {
  offset: number
  epoch: string
}

/** What a history subscription learnt from a subscribe reply that asked for what was missed. */
export interface RecoveryResult {
  topic: string
  /** False: publications were lost (too old, another epoch); the app should reload its state. */
  recovered: boolean
  /** Where the subscription stands now. */
  offset: number
  epoch: string
}

export interface SubscribeOptions {
  /** Start from a known position (e.g. the one an action returned with the state it loaded). */
  since?: Position
  /**
   * Called after each re-subscription that asked for what was missed (`since`, a reconnect, a gap in
   * offsets): `recovered: false` means publications were lost and the app must reload its state.
   */
  onRecovery?: (result: RecoveryResult) => void
}

export type TopicListener<D = unknown> = (data: D, frame: Publication<D>) => void

/** What `subscribe` returns: call it to stop; `ready` settles once the server answered the first subscribe. */
export interface Unsubscribe {
  (): void
  /**
   * Resolves when the server confirmed the subscription; rejects with the DrizzleClientError that
   * refused it (FORBIDDEN, TOPIC_NOT_FOUND: the listener is then dropped) or with `disconnect` when
   * the client closed first. Awaiting it is optional: it never causes an unhandled rejection.
   */
  readonly ready: Promise<void>
  /**
   * Listens to the `$join` or `$leave` frames of the topic (topics declared with `presence`): a
   * connection subscribed or left. Members present before are read with `client.presence(topic)`.
   * Returns the function that removes the listener; stopping the subscription removes it too.
   */
  on (event: PresenceEvent, listener: PresenceListener): () => void
}

/** `join` for `$join` frames, `leave` for `$leave` frames. */
export type PresenceEvent = 'join' | 'leave'

export type PresenceListener = (member: PresenceMember, frame: Publication<PresenceMember>) => void

export interface ClientEvents {
  /** A connection opened; `reconnected` is false only for the first one. */
  open: { reconnected: boolean }
  /** An open connection closed; `reconnecting` says whether a new attempt will follow. */
  close: { code: number, reason: string, reconnecting: boolean }
  /** A new connection attempt is scheduled in `delay` ms (`attempt` counts from 1). */
  reconnect: { attempt: number, delay: number }
  /** Something failed that no promise reports: attempts, subscriptions, malformed frames. */
  error: DrizzleClientError
  /** Every publication frame, whatever its topic. */
  publication: Publication
}

/** `connecting` (an attempt is under way), `open`, `reconnecting` (waiting out a backoff) or `closed` (for good). */
export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'
