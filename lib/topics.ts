import type { FastifyInstance } from 'fastify'
import type { Broker, BrokerFeature } from './brokers/types.js'
import type { DrizzleConnection } from './context.js'
import { InvalidTopicError, DuplicateTopicError, describe } from './errors.js'
import { checkTopic } from './brokers/topic.js'
import { encodePublicationJson } from './protocol.js'
import { textFrame } from './frames.js'

export const ALL_TOPIC = '__all__'

export type TopicParams = Record<string, string>

/** What the subscription registry needs of a connection; the WebSocket transport's Connection is one. */
export interface Subscriber {
  /** The topics it receives, kept by Subscriptions. */
  readonly topics: Set<string>
  /** Writes a publication frame, unless the subscriber is too slow or closed; true when written. */
  sendPublication (frame: Buffer): boolean
}

/** A connection as the core knows it: what handlers see, plus what subscriptions need. */
export interface Peer extends Subscriber, DrizzleConnection {
  readonly topics: Set<string>
  /** True once the connection stopped being served (closed, or being closed for breaking a limit). */
  readonly closed: boolean
  /** Aborts `controller` when the connection closes. */
  abortOnClose (controller: AbortController): void
}

export interface TopicOptions<Ctx = unknown> {
  /** Decides whether a client may subscribe itself; return false (or throw a 401/403 error) to refuse. */
  authorize?: (ctx: Ctx, params: TopicParams) => boolean | Promise<boolean>
  /** Published frames' data schema, for documentation and typing. */
  schema?: unknown
  /** Members listed by `$presence/get`, with `$join`/`$leave` frames unless `events: false`. */
  presence?: boolean | { events?: boolean }
}

/** A topic clients may subscribe to themselves, e.g. `rooms/:id`. */
export interface DeclaredTopic {
  pattern: string
  segments: readonly string[]
  /** Names of the parameter segments, by position; undefined for static segments. */
  params: readonly (string | undefined)[]
  options: TopicOptions<any>
  scope: FastifyInstance
}

/** Broker features a declared topic needs (history, presence): checked against the broker at ready. */
export function featuresOf (topic: DeclaredTopic): BrokerFeature[] {
  const options = topic.options as { history?: unknown, presence?: unknown }
  const features: BrokerFeature[] = []
  if (options.history !== undefined && options.history !== false) features.push('history')
  if (options.presence !== undefined && options.presence !== false) features.push('presence')
  return features
}

// The topic rule lives beside the brokers, which apply it without loading the plugin.
export { checkTopic, topicProblem } from './brokers/topic.js'

export function parsePattern (pattern: unknown, options: unknown, scope: FastifyInstance): DeclaredTopic {
  checkTopic(pattern)
  const segments = pattern.split('/')
  const params = segments.map(s => s.startsWith(':') ? s.slice(1) : undefined)
  for (let i = 0; i < segments.length; i++) {
    if (segments[i] === '' || params[i] === '') throw new InvalidTopicError(`pattern "${pattern}" has an empty segment or parameter name`)
  }
  const names = params.filter(p => p !== undefined)
  if (new Set(names).size !== names.length) throw new InvalidTopicError(`pattern "${pattern}" repeats a parameter name`)
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    throw new InvalidTopicError(`options of "${pattern}" must be an object, received ${describe(options)}`)
  }
  const opts = (options ?? {}) as TopicOptions
  if (opts.authorize !== undefined && typeof opts.authorize !== 'function') {
    throw new InvalidTopicError(`authorize of "${pattern}" must be a function, received ${describe(opts.authorize)}`)
  }
  return { pattern, segments, params, options: opts, scope }
}

/**
 * Declared topics. Static patterns are found in a Map; patterns with parameters are tried in order of
 * declaration, static segments compared, so a client string is never used as an object key.
 */
export class TopicPatterns {
  private readonly exact = new Map<string, DeclaredTopic>()
  private readonly withParams: DeclaredTopic[] = []

  add (topic: DeclaredTopic): void {
    if (this.exact.has(topic.pattern) || this.withParams.some(t => t.pattern === topic.pattern)) {
      throw new DuplicateTopicError(topic.pattern)
    }
    if (topic.params.every(p => p === undefined)) this.exact.set(topic.pattern, topic)
    else this.withParams.push(topic)
  }

  all (): DeclaredTopic[] {
    return [...this.exact.values(), ...this.withParams]
  }

  match (topic: string): { declared: DeclaredTopic, params: TopicParams } | undefined {
    const exact = this.exact.get(topic)
    if (exact !== undefined) return { declared: exact, params: Object.create(null) }
    const parts = topic.split('/')
    for (const declared of this.withParams) {
      const params = matchSegments(declared, parts)
      if (params !== undefined) return { declared, params }
    }
    return undefined
  }
}

function matchSegments (declared: DeclaredTopic, parts: readonly string[]): TopicParams | undefined {
  if (parts.length !== declared.segments.length) return undefined
  const params: TopicParams = Object.create(null)
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i] as string
    const name = declared.params[i]
    if (name === undefined) {
      if (part !== declared.segments[i]) return undefined
    } else {
      if (part === '') return undefined
      params[name] = part
    }
  }
  return params
}

/**
 * Who receives what in this process. Cost of a publication is proportional to the topic's local
 * subscribers; the broker is told when a topic gains its first subscriber or loses its last.
 */
export class Subscriptions {
  readonly byTopic = new Map<string, Set<Subscriber>>()
  /** Per topic, the broker's subscription (settled, never rejected), which presence waits for. */
  readonly brokerReady = new Map<string, Promise<void>>()

  constructor (private readonly broker: Broker, private readonly onBrokerError: (err: unknown, op: string, topic: string) => void) {}

  add (conn: Subscriber, topic: string): boolean {
    if (conn.topics.has(topic)) return false
    this.join(conn, topic)
    conn.topics.add(topic)
    return true
  }

  /**
   * Puts a new connection in `__all__` without reading its `topics`: a Connection makes that set, with
   * `__all__` in it, on first read (lib/connection.ts), and most connections subscribe to nothing else.
   */
  addToAll (conn: Subscriber): void { this.join(conn, ALL_TOPIC) }

  private join (conn: Subscriber, topic: string): void {
    let subscribers = this.byTopic.get(topic)
    if (subscribers === undefined) {
      subscribers = new Set()
      this.byTopic.set(topic, subscribers)
      if (topic !== ALL_TOPIC) this.brokerReady.set(topic, this.broker.subscribe(topic).catch(err => this.onBrokerError(err, 'subscribe', topic)))
    }
    subscribers.add(conn)
  }

  remove (conn: Subscriber, topic: string): boolean {
    if (!conn.topics.delete(topic)) return false
    const subscribers = this.byTopic.get(topic)
    if (subscribers !== undefined) {
      subscribers.delete(conn)
      if (subscribers.size === 0) {
        this.byTopic.delete(topic)
        this.brokerReady.delete(topic)
        if (topic !== ALL_TOPIC) this.broker.unsubscribe(topic).catch(err => this.onBrokerError(err, 'unsubscribe', topic))
      }
    }
    return true
  }

  /** Drops every subscription of a closed connection, so nothing keeps a reference to it. */
  removeAll (conn: Subscriber): string[] {
    const topics = [...conn.topics]
    for (const topic of topics) this.remove(conn, topic)
    return topics
  }

  /** Serializes once, then writes the same frame to each local subscriber. Returns how many got it. */
  deliver (topic: string, json: string, event: string | undefined): number {
    const subscribers = this.byTopic.get(topic)
    if (subscribers === undefined) return 0
    // Framed once here (UTF-8 and the WebSocket header), not once per subscriber by ws.
    const frame = textFrame(encodePublicationJson(topic, json, event))
    let delivered = 0
    for (const conn of subscribers) if (conn.sendPublication(frame)) delivered++
    return delivered
  }
}
