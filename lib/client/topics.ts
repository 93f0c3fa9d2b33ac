// Topics: the subscriptions the client asked the server for (`subscribe`, renewed after every
// reconnect), the listeners of topics the server put the socket in itself (`listen`), and the
// hand-over of each incoming publication to the listeners of its topic.
import { DrizzleClientError, isClientError, withTopic } from './errors.js'
import { callSafely, noop, type Emitter } from './emitter.js'
import type { Link, PendingRequests } from './requests.js'
import { TopicCursor } from './history.js'
import { backoffDelay } from './backoff.js'
import type { ClientEvents, PresenceEvent, PresenceListener, PresenceMember, Publication, SubscribeOptions, TopicListener, Unsubscribe } from './types.js'

const TOPIC_RESOURCE = '$topic'
/** Presence frames go to presence listeners (Unsubscribe.on), never to data listeners: their data is a member. */
const PRESENCE_EVENTS = new Map<string, PresenceEvent>([['$join', 'join'], ['$leave', 'leave']])

/** One topic the client subscribed to: its listeners, and whether the server confirmed it. */
interface TopicState {
  readonly listeners: Set<TopicListener<any>>
  /** Presence listeners of every handle of the topic. */
  readonly presence: Set<{ event: PresenceEvent, listener: PresenceListener }>
  /** Positions on topics that keep history (lib/client/history.ts). */
  readonly cursor: TopicCursor
  readonly ready: Promise<void>
  /** Resolves `ready`, or rejects it with `error`; only the first call counts. */
  setReady: (error?: unknown) => void
  /** Consecutive subscribes the server failed transiently: the next retry waits longer. A reply resets it. */
  failures: number
}

export class ClientTopics {
  private readonly topics = new Map<string, TopicState>()
  private readonly listeners = new Map<string, Set<TopicListener<any>>>()
  /** Per topic, the tail of its $topic requests: a subscribe and a later unsubscribe never overtake each other. */
  private readonly topicOps = new Map<string, Promise<unknown>>()
  /** Per subscription, the timer of its history re-subscription waiting to ask again (see retryLater). */
  private readonly retries = new Map<TopicState, ReturnType<typeof setTimeout>>()

  constructor (
    private readonly link: Pick<Link, 'state'>,
    private readonly requests: PendingRequests,
    private readonly events: Emitter<ClientEvents>
  ) {}

  /** See DrizzleClient.subscribe. */
  subscribe (topic: string, listener: TopicListener<any>, options?: SubscribeOptions): Unsubscribe {
    if (this.link.state === 'closed') {
      const dead = newTopicState(topic, undefined)
      dead.setReady(new DrizzleClientError('disconnect', 'Client is closed', { topic }))
      return Object.assign(() => {}, { ready: dead.ready, on: () => noop })
    }
    let state = this.topics.get(topic)
    if (state === undefined) {
      state = newTopicState(topic, options?.since)
      this.topics.set(topic, state)
      // Not open yet: the next open renews every topic in the map.
      if (this.link.state === 'open') this.sendSubscribe(topic, state)
    }
    state.listeners.add(listener)
    if (options?.onRecovery !== undefined) state.cursor.onRecovery.set(listener, options.onRecovery)
    const current = state
    const own = new Set<{ event: PresenceEvent, listener: PresenceListener }>()
    const stop = (): void => {
      for (const entry of own) current.presence.delete(entry)
      this.unsubscribe(topic, current, listener)
    }
    const on = (event: PresenceEvent, fn: PresenceListener): (() => void) => {
      const entry = { event, listener: fn }
      own.add(entry)
      current.presence.add(entry)
      return () => { own.delete(entry); current.presence.delete(entry) }
    }
    return Object.assign(stop, { ready: current.ready, on })
  }

  /** See DrizzleClient.listen. */
  listen (topic: string, listener: TopicListener<any>): () => void {
    let set = this.listeners.get(topic)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(topic, set)
    }
    set.add(listener)
    return () => {
      set.delete(listener)
      if (set.size === 0 && this.listeners.get(topic) === set) this.listeners.delete(topic)
    }
  }

  /** Hands a publication the server sent to the `publication` event, then to its topic's listeners. */
  dispatchPublication (frame: Publication): void {
    this.events.emit('publication', frame)
    const presenceEvent = frame.event === undefined ? undefined : PRESENCE_EVENTS.get(frame.event)
    if (presenceEvent !== undefined) {
      this.dispatchPresence(presenceEvent, frame as Publication<PresenceMember>)
      return
    }
    const subscribed = this.topics.get(frame.topic)
    if (subscribed !== undefined && subscribed.cursor.accept(frame, deliverTo(subscribed)) && this.link.state === 'open') {
      this.sendSubscribe(frame.topic, subscribed)
    }
    const listening = this.listeners.get(frame.topic)
    if (listening !== undefined) for (const fn of [...listening]) callSafely(fn, frame.data, frame)
  }

  private dispatchPresence (event: PresenceEvent, frame: Publication<PresenceMember>): void {
    const state = this.topics.get(frame.topic)
    if (state === undefined) return
    for (const entry of [...state.presence]) if (entry.event === event) callSafely(entry.listener, frame.data, frame)
  }

  /** A connection opened: the server knows none of the client's topics yet. */
  renew (): void {
    for (const [topic, state] of this.topics) this.sendSubscribe(topic, state)
  }

  /** The client stopped for good: every unconfirmed subscription rejects its `ready`. */
  failAll (why: string): void {
    for (const timer of this.retries.values()) clearTimeout(timer)
    this.retries.clear()
    for (const [topic, state] of this.topics) state.setReady(new DrizzleClientError('disconnect', why, { topic }))
  }

  private unsubscribe (topic: string, state: TopicState, listener: TopicListener<any>): void {
    state.cursor.onRecovery.delete(listener)
    if (!state.listeners.delete(listener) || state.listeners.size > 0 || this.topics.get(topic) !== state) return
    this.topics.delete(topic)
    this.cancelRetry(state)
    state.setReady(new DrizzleClientError('disconnect', 'Unsubscribed before the server confirmed', { topic }))
    // A closed connection already dropped the server-side subscription: only an open one needs telling.
    if (this.link.state !== 'open') return
    this.topicOp(topic, () => this.requests.add(TOPIC_RESOURCE, 'unsubscribe', { topic })).catch((err: unknown) => {
      if (isClientError(err) && err.type !== 'disconnect') this.events.emit('error', withTopic(err, topic))
    })
  }

  private sendSubscribe (topic: string, state: TopicState): void {
    // Asking now (a reconnect renews, a gap heals) makes a retry still waiting redundant.
    this.cancelRetry(state)
    const data = state.cursor.request()
    this.topicOp(topic, () => this.requests.add(TOPIC_RESOURCE, 'subscribe', data)).then(reply => {
      state.failures = 0
      state.setReady()
      const gap = state.cursor.replied(reply, data.since, deliverTo(state))
      if (gap && this.link.state === 'open' && this.topics.get(topic) === state) this.sendSubscribe(topic, state)
    }, (err: unknown) => {
      state.cursor.failed()
      // A disconnect is not a refusal: the next open renews the subscription.
      if (isClientError(err) && err.type === 'disconnect') return
      const error = isClientError(err) ? withTopic(err, topic) : new DrizzleClientError('protocol', String(err), { topic, cause: err })
      if (state.cursor.position !== undefined && isTransient(error)) {
        // A history subscription the server could not renew now (its broker away, or slow): giving
        // up would lose publications silently, so it asks again a little later.
        this.events.emit('error', error)
        state.failures++
        this.retryLater(topic, state)
        return
      }
      if (error.type === 'server' && this.topics.get(topic) === state) this.topics.delete(topic)
      state.setReady(error)
      this.events.emit('error', error)
    })
  }

  /**
   * Asks again after a backoff that doubles with each consecutive failure of this subscription, up
   * to RETRY_MAX_DELAY: a server failing because it is overloaded must not be asked faster the more
   * clients wait on it (a fixed delay made ~27,000 subscribes/s in a soak).
   */
  private retryLater (topic: string, state: TopicState): void {
    const delay = backoffDelay(state.failures - 1, RETRY_BASE_DELAY, RETRY_MAX_DELAY)
    const timer = setTimeout(() => {
      this.retries.delete(state)
      if (this.link.state === 'open' && this.topics.get(topic) === state) this.sendSubscribe(topic, state)
    }, delay)
    this.retries.set(state, timer)
  }

  private cancelRetry (state: TopicState): void {
    const timer = this.retries.get(state)
    if (timer === undefined) return
    clearTimeout(timer)
    this.retries.delete(state)
  }

  private topicOp (topic: string, op: () => Promise<unknown>): Promise<unknown> {
    const previous = this.topicOps.get(topic) ?? Promise.resolve()
    const next = previous.then(op, op)
    const tail = next.then(noop, noop)
    this.topicOps.set(topic, tail)
    tail.then(() => { if (this.topicOps.get(topic) === tail) this.topicOps.delete(topic) })
    return next
  }
}

/**
 * The backoff of a history re-subscription the server failed (full jitter, lib/client/backoff.ts):
 * the first retry waits up to 500 ms (the fixed delay it replaced was 250-500 ms), each consecutive
 * failure doubles that ceiling, up to 5 s. Not the reconnect settings: their 30 s ceiling would leave
 * a subscription without publications long after the server is back (and `reconnect: false` has
 * none), while a reconnect is not needed here, only the one request.
 */
const RETRY_BASE_DELAY = 500
const RETRY_MAX_DELAY = 5000

/** A timeout or a 5xx: the server may serve the same request a moment later. */
function isTransient (error: DrizzleClientError): boolean {
  return error.type === 'timeout' || (error.type === 'server' && (error.statusCode ?? 500) >= 500)
}

/** Hands a publication to every listener of a subscription. */
function deliverTo (state: TopicState): (frame: Publication) => void {
  return frame => { for (const fn of [...state.listeners]) callSafely(fn, frame.data, frame) }
}

function newTopicState (topic: string, since: SubscribeOptions['since']): TopicState {
  let setReady: (error?: unknown) => void = noop
  const ready = new Promise<void>((resolve, reject) => {
    setReady = error => { if (error === undefined) resolve(); else reject(error) }
  })
  // Marks the promise handled: a refusal is also an `error` event, and awaiting `ready` is optional.
  ready.catch(noop)
  return { listeners: new Set(), presence: new Set(), cursor: new TopicCursor(topic, since), ready, setReady, failures: 0 }
}
