// Topics: the subscriptions the client asked the server for (`subscribe`, renewed after every
// reconnect), the listeners of topics the server put the socket in itself (`listen`), and the
// hand-over of each incoming publication to the listeners of its topic.
import { DrizzleClientError, isClientError, withTopic } from './errors.js'
import { callSafely, noop, type Emitter } from './emitter.js'
import type { Link, PendingRequests } from './requests.js'
import type { ClientEvents, PresenceEvent, PresenceListener, PresenceMember, Publication, TopicListener, Unsubscribe } from './types.js'

const TOPIC_RESOURCE = '$topic'
/** Presence frames go to presence listeners (Unsubscribe.on), never to data listeners: their data is a member. */
const PRESENCE_EVENTS = new Map<string, PresenceEvent>([['$join', 'join'], ['$leave', 'leave']])

/** One topic the client subscribed to: its listeners, and whether the server confirmed it. */
interface TopicState {
  readonly listeners: Set<TopicListener<any>>
  /** Presence listeners of every handle of the topic. */
  readonly presence: Set<{ event: PresenceEvent, listener: PresenceListener }>
  readonly ready: Promise<void>
  /** Resolves `ready`, or rejects it with `error`; only the first call counts. */
  setReady: (error?: unknown) => void
}

export class ClientTopics {
  private readonly topics = new Map<string, TopicState>()
  private readonly listeners = new Map<string, Set<TopicListener<any>>>()
  /** Per topic, the tail of its $topic requests: a subscribe and a later unsubscribe never overtake each other. */
  private readonly topicOps = new Map<string, Promise<unknown>>()

  constructor (
    private readonly link: Pick<Link, 'state'>,
    private readonly requests: PendingRequests,
    private readonly events: Emitter<ClientEvents>
  ) {}

  /** See DrizzleClient.subscribe. */
  subscribe (topic: string, listener: TopicListener<any>): Unsubscribe {
    if (this.link.state === 'closed') {
      const dead = newTopicState()
      dead.setReady(new DrizzleClientError('disconnect', 'Client is closed', { topic }))
      return Object.assign(() => {}, { ready: dead.ready, on: () => noop })
    }
    let state = this.topics.get(topic)
    if (state === undefined) {
      state = newTopicState()
      this.topics.set(topic, state)
      // Not open yet: the next open renews every topic in the map.
      if (this.link.state === 'open') this.sendSubscribe(topic, state)
    }
    state.listeners.add(listener)
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
    if (subscribed !== undefined) for (const fn of [...subscribed.listeners]) callSafely(fn, frame.data, frame)
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
    for (const [topic, state] of this.topics) state.setReady(new DrizzleClientError('disconnect', why, { topic }))
  }

  private unsubscribe (topic: string, state: TopicState, listener: TopicListener<any>): void {
    if (!state.listeners.delete(listener) || state.listeners.size > 0 || this.topics.get(topic) !== state) return
    this.topics.delete(topic)
    state.setReady(new DrizzleClientError('disconnect', 'Unsubscribed before the server confirmed', { topic }))
    // A closed connection already dropped the server-side subscription: only an open one needs telling.
    if (this.link.state !== 'open') return
    this.topicOp(topic, () => this.requests.add(TOPIC_RESOURCE, 'unsubscribe', { topic })).catch((err: unknown) => {
      if (isClientError(err) && err.type !== 'disconnect') this.events.emit('error', withTopic(err, topic))
    })
  }

  private sendSubscribe (topic: string, state: TopicState): void {
    this.topicOp(topic, () => this.requests.add(TOPIC_RESOURCE, 'subscribe', { topic })).then(() => {
      state.setReady()
    }, (err: unknown) => {
      // A disconnect is not a refusal: the next open renews the subscription.
      if (isClientError(err) && err.type === 'disconnect') return
      const error = isClientError(err) ? withTopic(err, topic) : new DrizzleClientError('protocol', String(err), { topic, cause: err })
      if (error.type === 'server' && this.topics.get(topic) === state) this.topics.delete(topic)
      state.setReady(error)
      this.events.emit('error', error)
    })
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

function newTopicState (): TopicState {
  let setReady: (error?: unknown) => void = noop
  const ready = new Promise<void>((resolve, reject) => {
    setReady = error => { if (error === undefined) resolve(); else reject(error) }
  })
  // Marks the promise handled: a refusal is also an `error` event, and awaiting `ready` is optional.
  ready.catch(noop)
  return { listeners: new Set(), presence: new Set(), ready, setReady }
}
