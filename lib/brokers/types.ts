import type { FastifyBaseLogger } from 'fastify'
import type { BrokerPresence } from './presence.js'

/** The part of a pino-like logger a broker uses; a Fastify logger or `console` fits. */
export interface BrokerLogger {
  error (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
  info (obj: object, msg?: string): void
  debug (obj: object, msg?: string): void
}

export interface PublishOptions {
  /** Optional event name carried to subscribers in the publication frame. */
  event?: string
  /**
   * W3C trace context carried in the broker message (PROTOCOL.md, Trace context), so that the
   * instances delivering the publication link their spans to it. The plugin sets it itself when it
   * traces (README, Observability); a worker may pass its own.
   */
  traceparent?: string
}

/** A broker's connection as metrics report it (`drizzle_broker_up`, `drizzle_broker_outages_total`). */
export interface BrokerHealth {
  /** `open` when connected; `idle`, `connecting`, `reconnecting` or `closed` otherwise. */
  status: string
  /** Outages since the broker was made. */
  outages: number
}

/**
 * What a broker can do beyond live pub/sub: topic history and presence (README). The plugin refuses,
 * when the server becomes ready, a declared topic that needs a feature its broker lacks
 * (FST_DRIZZLE_BROKER_UNSUPPORTED), instead of keeping a silent per-instance substitute.
 */
export type BrokerFeature = 'history' | 'presence'

/**
 * What travels with a publication besides its data and event. Each field is optional: a message from
 * an outside publisher may carry none of them.
 */
export interface DeliveryMeta {
  /** Position of the publication in its topic's history (history topics only). */
  offset?: number
  epoch?: string
  /** W3C trace context of the publishing span. */
  traceparent?: string
}

/**
 * Where a broker hands the publications it receives from other processes.
 * The plugin delivers its own publications locally at once, so a broker must never hand back a
 * publication it published itself (brokers tag what they send with an origin id and skip their own).
 */
export interface BrokerSink {
  deliver (topic: string, data: unknown, event: string | undefined, meta?: DeliveryMeta): void
  log: FastifyBaseLogger
  /**
   * The broker's subscription to these topics was made again after it dropped (outage, or a server
   * that closed a slow subscriber): publications made meanwhile were not received. The plugin reads
   * them back from history (history topics only).
   */
  resumed? (topics: readonly string[]): void
}

/**
 * How publications cross processes. The plugin reference-counts local subscribers and calls
 * `subscribe` when a topic gains its first local subscriber and `unsubscribe` when it loses its last
 * (`__all__` stays subscribed). A broker works standalone too: `publish` and `close` need no `attach`.
 */
export interface Broker {
  /** Short name used in logs and errors, e.g. "memory", "redis", "amqp". */
  readonly name: string
  /** Features beyond live pub/sub this broker supports; none when absent. */
  readonly features?: ReadonlySet<BrokerFeature>
  /** The shared member lists of presence topics; present when `features` has 'presence'. */
  readonly presence?: BrokerPresence
  /** Topic history (feature `history`): positions assigned by the broker, and what was missed. */
  readonly history?: BrokerHistory
  /** Called once by the plugin before the server starts listening. */
  attach (sink: BrokerSink): Promise<void>
  /**
   * Why this broker cannot carry a topic (e.g. AMQP routing keys are at most 255 bytes), or undefined.
   * The plugin asks before subscribing or publishing, so a topic is refused where it enters instead
   * of being accepted and then failing in the broker.
   */
  topicProblem? (topic: string): string | undefined
  subscribe (topic: string): Promise<void>
  unsubscribe (topic: string): Promise<void>
  /** Where the broker's connection stands, for metrics; a broker without one (in-memory) counts as always up. */
  health? (): BrokerHealth
  /**
   * Sends a publication to every other process. Rejects with FST_DRIZZLE_BROKER_UNAVAILABLE when the
   * broker cannot take it now (never queues without bound), FST_DRIZZLE_BROKER_CLOSED after close().
   */
  publish (topic: string, data: unknown, options?: PublishOptions): Promise<void>
  /** Releases what the broker created; never closes a client the user passed in. Idempotent. */
  close (): Promise<void>
}

// ---- history (README "History and recovery") ----------------------------------------------------

/** Where a publication stands in its topic's history; `epoch` changes whenever that history is lost. */
export interface Position {
  offset: number
  epoch: string
}

/** How much history a topic keeps: the last `size` publications, dropped `ttl` ms after the last one. */
export interface HistoryPolicy {
  size: number
  ttl: number
}

export interface HistoryEntry {
  offset: number
  data: unknown
  event?: string
}

/** The topic's current position, and the publications it still holds after the offset asked for, in order. */
export interface HistoryRead extends Position {
  entries: HistoryEntry[]
}

/**
 * What a broker with the `history` feature does. Positions are assigned by the broker's server in one
 * atomic step with the append and the publication, so every process sees the same offsets. A history
 * publication comes back to its own process through the sink (it is not skipped as an echo): the
 * plugin delivers history topics in offset order only.
 */
export interface BrokerHistory {
  publish (topic: string, data: unknown, options: PublishOptions | undefined, policy: HistoryPolicy): Promise<Position>
  /** The last assigned position (offset 0 before any publication); starts the topic's epoch if it has none. */
  position (topic: string, policy: HistoryPolicy): Promise<Position>
  /** Publications after `after` that the history still holds. */
  read (topic: string, after: number, policy: HistoryPolicy): Promise<HistoryRead>
}
