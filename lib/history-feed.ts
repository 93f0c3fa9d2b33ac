import type { FastifyBaseLogger } from 'fastify'
import type { BrokerHistory, HistoryPolicy, HistoryRead } from './brokers/types.js'
import { encodePublicationJson } from './protocol.js'
import { textFrame } from './frames.js'
import type { Subscriber } from './topics.js'

// One history topic as this process serves it: the last offset delivered to its local subscribers,
// and the rule that they get every publication once, in offset order. Publications arrive from the
// broker (ours come back too); one that is not the next offset means some were missed (a dropped
// broker subscription, a server that closed a slow subscriber), and the missing ones are read back
// from the broker's history before anything newer is delivered.

/** A publication as the broker handed it over, with its position. */
export interface Live { offset: number, epoch: string, data: unknown, event: string | undefined }

/** A publication frame written to the subscribers of a topic, kept while a subscriber is held. */
export interface Held { offset: number, epoch: string, frame: Buffer }

/**
 * A subscriber between its subscribe request and its reply: what the feed delivers meanwhile is
 * queued, and written after the reply (with the publications it replays), never before.
 */
export class Hold {
  queue: Held[] = []
  replay: Held[] = []
}

/** A subscriber whose socket can say when its backlog is written out (the WebSocket connection). */
interface Drainable { whenDrained?: () => Promise<void> }

export interface FeedHost {
  readonly history: BrokerHistory
  readonly log: FastifyBaseLogger
  subscribers (topic: string): ReadonlySet<Subscriber> | undefined
  /** Subscribes the broker to the topic and resolves once its publications flow. */
  follow (topic: string): Promise<void>
  /** Counts publication frames written (or queued behind a subscribe reply), for drizzle_deliveries_total. */
  delivered (count: number): void
}

/** Live publications kept while the feed catches up; past this, the oldest go (history has them). */
const MAX_PENDING = 10_000
/** Reads of history in one catch-up before what is still missing is given up as lost. */
const MAX_ROUNDS = 5
/** A stalled feed reads again after this many ms, doubling up to RETRY_MAX_MS while reads fail. */
const RETRY_MIN_MS = 250
const RETRY_MAX_MS = 5000

type FeedState = 'starting' | 'live' | 'catching-up' | 'stalled'

export class Feed {
  epoch = ''
  last = 0
  state: FeedState = 'starting'
  /** Set by forget(): the topic lost its last local subscriber, and nothing more is read or written. */
  forgotten = false
  readonly ready: Promise<void>
  private pending: Live[] = []
  private readonly holds = new Map<Subscriber, Set<Hold>>()
  /** While stalled: the next read of history (a topic gone quiet must still catch up). */
  private retryTimer: ReturnType<typeof setTimeout> | undefined
  private retryDelay = 0

  constructor (readonly topic: string, readonly policy: HistoryPolicy, private readonly host: FeedHost) {
    this.ready = this.start()
  }

  /**
   * The broker subscription first, then the position: a publication made in between arrives with
   * an offset at most the position, and a subscriber's reply says it is included already.
   */
  private async start (): Promise<void> {
    await this.host.follow(this.topic)
    const position = await this.host.history.position(this.topic, this.policy)
    this.epoch = position.epoch
    this.last = position.offset
    this.state = 'live'
    if (!this.flush()) this.catchUp()
  }

  /** Returns how many subscribers the publication went to now (held ones included), 0 if kept or old. */
  accept (live: Live): number {
    if (this.forgotten) return 0
    if (this.state === 'live' && live.epoch === this.epoch) {
      if (live.offset <= this.last) return 0
      if (live.offset === this.last + 1) return this.emit(live.offset, live.data, live.event)
    }
    this.keep(live)
    // Stalled, the retry timer reads again: a read per publication would only add to the load of a
    // broker that is already too slow to answer.
    if (this.state === 'live') this.catchUp()
    return 0
  }

  /** The topic lost its last local subscriber: a pending retry goes too, so nothing keeps the feed. */
  forget (): void {
    this.forgotten = true
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
  }

  /** The broker subscription was made again after a drop: read what was published meanwhile. */
  resume (): void {
    if (this.state === 'live' || this.state === 'stalled') this.catchUp()
  }

  hold (conn: Subscriber, hold: Hold): void {
    let holds = this.holds.get(conn)
    if (holds === undefined) {
      holds = new Set()
      this.holds.set(conn, holds)
    }
    holds.add(hold)
  }

  /**
   * Ends a hold: its replay, then what was queued meanwhile, go to the subscriber in order. A replay
   * may be large (up to `size` publications): it is written as the socket drains, not dropped as a
   * slow consumer's backlog would be, and live publications wait in the hold until it is all out.
   */
  release (conn: Subscriber, hold: Hold): void {
    if (this.holds.get(conn)?.has(hold) !== true) return
    if (hold.replay.length === 0 && hold.queue.length === 0) {
      this.unhold(conn, hold)
      return
    }
    this.writeOut(conn as Subscriber & Drainable, hold).catch((err: unknown) => {
      this.unhold(conn, hold)
      this.host.log.error({ topic: this.topic, err }, 'writing a history replay failed')
    })
  }

  private async writeOut (conn: Subscriber & Drainable, hold: Hold): Promise<void> {
    let frames = hold.replay
    hold.replay = []
    while (frames.length > 0) {
      for (const held of frames) {
        if (!conn.topics.has(this.topic)) break
        if (conn.whenDrained !== undefined) await conn.whenDrained()
        conn.sendPublication(held.frame)
      }
      frames = hold.queue
      hold.queue = []
    }
    this.unhold(conn, hold)
  }

  private unhold (conn: Subscriber, hold: Hold): void {
    const holds = this.holds.get(conn)
    if (holds === undefined || !holds.delete(hold)) return
    if (holds.size === 0) this.holds.delete(conn)
  }

  /** The frame of one publication, as every subscriber gets it. */
  frame (offset: number, data: unknown, event: string | undefined): Buffer | undefined {
    let json: string
    try {
      json = JSON.stringify(data) ?? 'null'
    } catch (err) {
      this.host.log.warn({ topic: this.topic, offset, reason: (err as Error).message }, 'dropped a history publication that cannot be serialized')
      return undefined
    }
    const plain = encodePublicationJson(this.topic, json, event)
    return textFrame(plain.slice(0, -1) + ',"offset":' + offset + '}')
  }

  /** Writes (or queues, for held subscribers) one publication; returns to how many subscribers. */
  private emit (offset: number, data: unknown, event: string | undefined): number {
    this.last = offset
    const frame = this.frame(offset, data, event)
    const subscribers = this.host.subscribers(this.topic)
    if (frame === undefined || subscribers === undefined) return 0
    // Counted as Subscriptions.deliver counts: a slow consumer's skipped frame is not a delivery.
    let delivered = 0
    if (this.holds.size === 0) {
      for (const conn of subscribers) if (conn.sendPublication(frame)) delivered++
      this.host.delivered(delivered)
      return delivered
    }
    const held = { offset, epoch: this.epoch, frame }
    for (const conn of subscribers) {
      const holds = this.holds.get(conn)
      if (holds === undefined) {
        if (conn.sendPublication(frame)) delivered++
        continue
      }
      for (const hold of holds) {
        // A subscriber that cannot take its replay loses the oldest: its client heals the gap.
        if (hold.queue.length >= MAX_PENDING) hold.queue.shift()
        hold.queue.push(held)
      }
      delivered++
    }
    this.host.delivered(delivered)
    return delivered
  }

  private keep (live: Live): void {
    if (this.pending.length >= MAX_PENDING) this.pending.shift()
    this.pending.push(live)
  }

  /**
   * Reads what the broker has after the last offset delivered, and resolves once it is delivered: a
   * subscriber that names a position is answered from a feed that knows the broker's epoch now.
   * Rejects when the broker cannot be read.
   */
  sync (): Promise<void> {
    if (this.state === 'live' || this.state === 'stalled') this.catchUp()
    return this.caughtUp
  }

  private caughtUp: Promise<void> = Promise.resolve()

  private catchUp (): void {
    clearTimeout(this.retryTimer)
    this.retryTimer = undefined
    this.state = 'catching-up'
    this.caughtUp = this.readBack().then(() => { this.retryDelay = 0 }, (err: unknown) => {
      if (this.forgotten) return
      // The broker is away or too slow: read again after a backoff, on its reconnection, or when a
      // subscriber asks for a position (sync), whichever comes first; never wait for a publication,
      // as a topic gone quiet would then keep its subscribers short of the last ones for good.
      this.state = 'stalled'
      this.retryDelay = Math.min(RETRY_MAX_MS, this.retryDelay === 0 ? RETRY_MIN_MS : this.retryDelay * 2)
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined
        if (!this.forgotten && this.state === 'stalled') this.catchUp()
      }, this.retryDelay)
      this.retryTimer.unref?.()
      this.host.log.warn({ topic: this.topic, err, retryMs: this.retryDelay }, 'could not read topic history; retrying after retryMs, on reconnection or on a subscriber\'s request')
      throw err
    })
    this.caughtUp.catch(() => {})
  }

  private async readBack (): Promise<void> {
    for (let round = 1; ; round++) {
      const after = this.last
      const read = await this.host.history.read(this.topic, after, this.policy)
      if (this.forgotten) return
      if (read.epoch !== this.epoch) {
        // The topic's history was lost (broker restarted, keys expired): start again in the new epoch.
        this.host.log.warn({ topic: this.topic, from: this.epoch, to: read.epoch }, 'topic history epoch changed')
        this.epoch = read.epoch
        this.last = 0
        if (after !== 0) continue
      }
      this.deliverRead(read)
      if (this.flush() || round >= MAX_ROUNDS) {
        if (round >= MAX_ROUNDS) this.giveUp()
        this.state = 'live'
        return
      }
    }
  }

  private deliverRead (read: HistoryRead): void {
    for (const entry of read.entries) {
      if (entry.offset <= this.last) continue
      if (entry.offset > this.last + 1) this.lost(this.last + 1, entry.offset - 1)
      this.emit(entry.offset, entry.data, entry.event)
    }
    if (read.offset > this.last) {
      this.lost(this.last + 1, read.offset)
      this.last = read.offset
    }
  }

  /**
   * Delivers the pending publications that follow the last offset; true when none is left that
   * needs another read (a gap before it, or another epoch).
   */
  private flush (): boolean {
    if (this.pending.length === 0) return true
    const pending = this.pending.sort((a, b) => a.offset - b.offset)
    const left: Live[] = []
    for (const live of pending) {
      if (live.epoch !== this.epoch) left.push(live)
      else if (live.offset === this.last + 1) this.emit(live.offset, live.data, live.event)
      else if (live.offset > this.last) left.push(live)
    }
    this.pending = left
    return left.length === 0
  }

  /** After reading history again and again, what is still missing is gone: deliver what follows. */
  private giveUp (): void {
    const left = this.pending.filter(live => live.epoch === this.epoch)
    this.pending = []
    for (const live of left) {
      if (live.offset <= this.last) continue
      this.lost(this.last + 1, live.offset - 1)
      this.emit(live.offset, live.data, live.event)
    }
  }

  /** Subscribers see the gap in offsets and re-subscribe, to be told `recovered: false`: logged here. */
  private lost (from: number, to: number): void {
    this.host.log.warn({ topic: this.topic, epoch: this.epoch, from, to }, 'publications missing from topic history')
  }
}
