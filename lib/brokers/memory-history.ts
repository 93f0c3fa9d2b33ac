import { BrokerClosedError } from '../errors.js'
import type { BrokerHistory, BrokerSink, HistoryPolicy, HistoryRead, Position, PublishOptions } from './types.js'

// The memory broker's history: per topic a counter, an epoch and a ring of the last `size`
// publications, all dropped `ttl` ms after the topic's last publication, so idle topics cost nothing.

interface Kept { json: string, event: string | undefined }

class TopicHistory {
  offset = 0
  /** Publications offset-size+1 .. offset, oldest first; `start` is where the oldest is. */
  readonly ring: Array<Kept | undefined>
  start = 0
  count = 0
  readonly timer: ReturnType<typeof setTimeout>

  constructor (readonly epoch: string, readonly size: number, ttl: number, drop: () => void) {
    this.ring = new Array<Kept | undefined>(size)
    this.timer = setTimeout(drop, ttl)
    // An idle topic must never keep the process alive.
    this.timer.unref()
  }

  append (kept: Kept): number {
    const slot = (this.start + this.count) % this.size
    this.ring[slot] = kept
    if (this.count < this.size) this.count++
    else this.start = (this.start + 1) % this.size
    this.timer.refresh()
    return ++this.offset
  }

  /** Offsets after `after` that the ring still holds, in order. */
  after (after: number): HistoryRead['entries'] {
    const entries: HistoryRead['entries'] = []
    const first = this.offset - this.count + 1
    for (let offset = Math.max(first, after + 1); offset <= this.offset; offset++) {
      const kept = this.ring[(this.start + offset - first) % this.size] as Kept
      entries.push(kept.event === undefined ? { offset, data: JSON.parse(kept.json) } : { offset, data: JSON.parse(kept.json), event: kept.event })
    }
    return entries
  }
}

export class MemoryHistory implements BrokerHistory {
  readonly topics = new Map<string, TopicHistory>()
  sink: BrokerSink | undefined
  closed = false

  async publish (topic: string, data: unknown, options: PublishOptions | undefined, policy: HistoryPolicy): Promise<Position> {
    if (this.closed) throw new BrokerClosedError('memory')
    const history = this.ensure(topic, policy)
    const event = options?.event
    // Kept serialized: the app may change the object it published afterwards.
    const offset = history.append({ json: JSON.stringify(data) ?? 'null', event })
    const position = { offset, epoch: history.epoch }
    // The trace context goes with the publication, as a broker message's `traceparent` does.
    const traceparent = options?.traceparent
    this.sink?.deliver(topic, data, event, traceparent === undefined ? position : { ...position, traceparent })
    return position
  }

  async position (topic: string, policy: HistoryPolicy): Promise<Position> {
    const history = this.ensure(topic, policy)
    return { offset: history.offset, epoch: history.epoch }
  }

  async read (topic: string, after: number, policy: HistoryPolicy): Promise<HistoryRead> {
    const history = this.ensure(topic, policy)
    return { offset: history.offset, epoch: history.epoch, entries: history.after(after) }
  }

  clear (): void {
    this.closed = true
    for (const history of this.topics.values()) clearTimeout(history.timer)
    this.topics.clear()
  }

  private ensure (topic: string, policy: HistoryPolicy): TopicHistory {
    let history = this.topics.get(topic)
    if (history === undefined) {
      const created = new TopicHistory(newEpoch(), policy.size, policy.ttl, () => {
        if (this.topics.get(topic) === created) this.topics.delete(topic)
      })
      history = created
      this.topics.set(topic, history)
    }
    return history
  }
}

/** A new epoch: random, so that history lost and started again is never taken for the old one. */
export function newEpoch (): string {
  return globalThis.crypto.randomUUID().slice(0, 13).replace('-', '')
}
