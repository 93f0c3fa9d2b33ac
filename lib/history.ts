import type { FastifyBaseLogger } from 'fastify'
import { afterAnswer } from './answered.js'
import type { Broker, BrokerHistory, DeliveryMeta, HistoryPolicy, HistoryRead, Position, PublishOptions } from './brokers/types.js'
import { describe, InvalidTopicError, NoHistoryError, validationError } from './errors.js'
import { Feed, Hold, type Held } from './history-feed.js'
import { ALL_TOPIC, type DeclaredTopic, type Peer, type Subscriptions, type TopicPatterns } from './topics.js'

/** What history needs of the core (the Runtime), named here so that the core's imports do not come back. */
export interface HistoryHost {
  readonly broker: Broker
  readonly log: FastifyBaseLogger
  readonly patterns: TopicPatterns
  readonly subscriptions: Subscriptions
  subscribe (conn: Peer, topic: string, deferJoin?: boolean): Promise<boolean>
  unsubscribe (conn: Peer, topic: string): Promise<boolean>
  deliverPlain (topic: string, data: unknown, event: string | undefined): number
  /** Plain counts read by the metrics: the feeds add the publication frames they write. */
  readonly stats: { deliveries: number }
  /** Set when the `metrics` option is on: each `since` answered counts in drizzle_recoveries_total. */
  readonly metrics: { recovery (recovered: boolean): void } | undefined
}

// Topic history (README "History and recovery"): declared topics with `history: { size, ttl }` get
// positions from the broker, subscriptions `since` a position replay what was missed, and this
// process delivers those topics in offset order, reading back from history what it missed itself.

export type { Position } from './brokers/types.js'

/** A `since` position a client sent: an offset of at most this many characters of epoch. */
const MAX_EPOCH_LENGTH = 64
const DEFAULT_TTL = 300_000
const MAX_SIZE = 1_000_000
/** Topics warned about for plain PUBLISHes (no offset) are remembered up to this many. */
const MAX_WARNED = 1000

/** The reply to `$topic/subscribe` of a history topic. */
export interface HistoryReply {
  topic: string
  subscribed: true
  offset: number
  epoch: string
  recovered?: boolean
}

/** Reads and checks the `history` option of a declared topic; undefined when it keeps none. */
export function historyPolicy (pattern: string, value: unknown): HistoryPolicy | undefined {
  if (value === undefined || value === false) return undefined
  const expected = `history of "${pattern}" must be false or { size: integer 1..${MAX_SIZE}, ttl?: milliseconds >= 1 }`
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidTopicError(`${expected}, received ${describe(value)}`)
  const { size, ttl = DEFAULT_TTL, ...rest } = value as Record<string, unknown>
  const unknown = Object.keys(rest)
  if (unknown.length > 0) throw new InvalidTopicError(`${expected}; unknown key "${unknown[0]}"`)
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 1 || size > MAX_SIZE) throw new InvalidTopicError(`${expected}, received size ${describe(size)}`)
  if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 1) throw new InvalidTopicError(`${expected}, received ttl ${describe(ttl)}`)
  return { size, ttl }
}

/** Checks the `since` of a subscribe request: `{ offset: integer >= 0, epoch: string }`. */
export function parseSince (data: Record<string, unknown>): Position | undefined {
  if (!Object.hasOwn(data, 'since') || data.since === undefined) return undefined
  const since = data.since
  if (since === null || typeof since !== 'object' || Array.isArray(since)) throw sinceError('/data/since', 'must be an object { offset, epoch }')
  const offset = Object.hasOwn(since, 'offset') ? (since as { offset: unknown }).offset : undefined
  const epoch = Object.hasOwn(since, 'epoch') ? (since as { epoch: unknown }).epoch : undefined
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) throw sinceError('/data/since/offset', 'must be an integer >= 0 and <= 2^53 - 1')
  if (typeof epoch !== 'string' || epoch.length === 0 || epoch.length > MAX_EPOCH_LENGTH) throw sinceError('/data/since/epoch', `must be a non-empty string of at most ${MAX_EPOCH_LENGTH} characters`)
  return { offset, epoch }
}

function sinceError (path: string, message: string): Error {
  return validationError(`"${path.slice(1).replaceAll('/', '.')}" ${message}`, [{ path, message }])
}

/** The history of one app's topics in this process: their policies, feeds and subscriptions. */
export class History {
  private readonly policies = new WeakMap<DeclaredTopic, HistoryPolicy>()
  private readonly feeds = new Map<string, Feed>()
  private readonly warned = new Set<string>()
  /** Whether any declared topic keeps history: when none does, publishing pays nothing for it. */
  enabled = false

  constructor (private readonly rt: HistoryHost) {}

  get log (): FastifyBaseLogger { return this.rt.log }

  declare (declared: DeclaredTopic): void {
    const policy = historyPolicy(declared.pattern, (declared.options as { history?: unknown }).history)
    if (policy === undefined) return
    this.policies.set(declared, policy)
    this.enabled = true
  }

  /** The policy of the declaration that serves `topic`, if it keeps history. */
  policyOf (topic: string): HistoryPolicy | undefined {
    if (!this.enabled || topic === ALL_TOPIC) return undefined
    const match = this.rt.patterns.match(topic)
    return match === undefined ? undefined : this.policies.get(match.declared)
  }

  private broker (): BrokerHistory {
    // Checked at ready (FST_DRIZZLE_BROKER_UNSUPPORTED): a history topic never runs without it.
    return this.rt.broker.history as BrokerHistory
  }

  /** `drizzle.position(topic)` / `ctx.position(topic)`. */
  position (topic: string): Promise<Position> {
    const policy = this.policyOf(topic)
    if (policy === undefined) return Promise.reject(new NoHistoryError(topic))
    return this.broker().position(topic, policy)
  }

  publish (topic: string, data: unknown, options: PublishOptions | undefined, policy: HistoryPolicy): Promise<Position> {
    return this.broker().publish(topic, data, options, policy)
  }

  /**
   * A publication of a history topic from the broker (ours included). Returns how many subscribers
   * it went to at once: 0 when the feed keeps it until the ones before it are read back.
   */
  deliver (topic: string, data: unknown, event: string | undefined, meta: DeliveryMeta | undefined): number {
    if (meta?.offset === undefined || meta.epoch === undefined) {
      this.warnUnpositioned(topic)
      return this.rt.deliverPlain(topic, data, event)
    }
    const feed = this.feeds.get(topic)
    if (feed === undefined) return 0
    return feed.accept({ offset: meta.offset, epoch: meta.epoch, data, event })
  }

  /** The broker subscribed again after a drop: each feed reads back what it missed. */
  resumed (topics: readonly string[]): void {
    for (const topic of topics) this.feeds.get(topic)?.resume()
  }

  /** The topic lost its last local subscriber. */
  forget (topic: string): void {
    const feed = this.feeds.get(topic)
    if (feed === undefined) return
    feed.forget()
    this.feeds.delete(topic)
  }

  /** The feed of a topic, started by its first local subscriber; rejects when the broker cannot serve it now. */
  feed (topic: string, policy: HistoryPolicy): Feed {
    let feed = this.feeds.get(topic)
    if (feed === undefined) {
      const rt = this.rt
      const created = new Feed(topic, policy, {
        history: this.broker(),
        log: rt.log,
        subscribers: t => rt.subscriptions.byTopic.get(t),
        follow: t => rt.broker.subscribe(t),
        delivered: count => { rt.stats.deliveries += count }
      })
      created.ready.catch(() => { if (this.feeds.get(topic) === created) this.feeds.delete(topic) })
      feed = created
      this.feeds.set(topic, feed)
    }
    return feed
  }

  /**
   * `$topic/subscribe` of a history topic. The connection is held from before it is subscribed until
   * its reply is written: the reply's offset is the last one delivered when it is decided, the
   * replay covers `since` up to it, and what the feed delivers meanwhile follows the replay.
   */
  async subscribe (ctx: object, conn: Peer, topic: string, policy: HistoryPolicy, since: Position | undefined): Promise<HistoryReply> {
    const feed = this.feed(topic, policy)
    const hold = new Hold()
    feed.hold(conn, hold)
    let added = false
    try {
      // Called by the $topic/subscribe action only: a presence topic's $join follows its reply.
      added = await this.rt.subscribe(conn, topic, true)
      await feed.ready
      // A position is judged against the broker's epoch now, not the one this process saw last.
      if (since !== undefined) await feed.sync()
      let read: HistoryRead | undefined
      if (since !== undefined && since.epoch === feed.epoch && since.offset < feed.last && feed.last - since.offset <= policy.size) {
        read = await this.broker().read(topic, since.offset, policy)
      }
      const reply: HistoryReply = { topic, subscribed: true, offset: feed.last, epoch: feed.epoch }
      if (since !== undefined) {
        const replay = replayOf(feed, since, read, hold.queue)
        reply.recovered = replay !== undefined
        hold.replay = replay ?? []
        this.rt.metrics?.recovery(reply.recovered)
      }
      hold.queue = []
      afterAnswer(ctx, () => feed.release(conn, hold))
      return reply
    } catch (err) {
      feed.release(conn, hold)
      if (added) await this.rt.unsubscribe(conn, topic)
      throw err
    }
  }

  private warnUnpositioned (topic: string): void {
    if (this.warned.has(topic) || this.warned.size >= MAX_WARNED) return
    this.warned.add(topic)
    this.log.warn({ topic }, 'a publication without a position reached a history topic (a plain PUBLISH?): delivered live, without an offset; publish with FCALL drizzle_publish to keep history')
  }
}

/**
 * The publications after `since` up to the feed's last offset, from what history still holds and
 * what was queued while the request ran; undefined when any is missing (too old, another epoch).
 */
function replayOf (feed: Feed, since: Position, read: HistoryRead | undefined, queued: Held[]): Held[] | undefined {
  const last = feed.last
  if (since.epoch !== feed.epoch || since.offset > last) return undefined
  if (since.offset === last) return []
  const byOffset = new Map<number, Held>()
  if (read !== undefined && read.epoch === feed.epoch) {
    for (const entry of read.entries) {
      if (entry.offset <= since.offset || entry.offset > last) continue
      const frame = feed.frame(entry.offset, entry.data, entry.event)
      if (frame !== undefined) byOffset.set(entry.offset, { offset: entry.offset, epoch: read.epoch, frame })
    }
  }
  for (const held of queued) {
    if (held.epoch === feed.epoch && held.offset > since.offset && held.offset <= last) byOffset.set(held.offset, held)
  }
  // Bounded by what was found, not by the offsets a client named.
  if (byOffset.size !== last - since.offset) return undefined
  const replay: Held[] = []
  for (let offset = since.offset + 1; offset <= last; offset++) replay.push(byOffset.get(offset) as Held)
  return replay
}
