import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import Type from 'typebox'
import { Compile } from 'typebox/compile'
import { JOIN_EVENT, LEAVE_EVENT, type BrokerPresence, type PresenceMember } from './brokers/presence.js'
import type { DrizzleConnection } from './context.js'
import { ActionNotFoundError, BrokerUnsupportedError, ForbiddenError, InvalidTopicError, TopicNotFoundError, describe, validationError } from './errors.js'
import { MAX_NAME_LENGTH, type Envelope } from './protocol.js'
import { compileAction, type CompiledAction } from './resources.js'
import type { Broker } from './brokers/types.js'
import { withTimeout } from './brokers/toolkit.js'
import { checkTopic, type DeclaredTopic, type Peer, type Subscriptions, type TopicPatterns } from './topics.js'

/** What presence needs of the core (the Runtime), named here so that the core's imports do not come back. */
export interface PresenceHost {
  readonly broker: Broker
  readonly log: FastifyBaseLogger
  /** Set when shutdown began: failed removals are then counted for one line, not logged each. */
  readonly closing: boolean
  readonly patterns: TopicPatterns
  readonly subscriptions: Subscriptions
  topicProblem (topic: unknown): string | undefined
}

// Presence of declared topics (README "Presence"): which connections are subscribed, on every
// instance, `$presence/get`, and the `$join`/`$leave` frames. The broker keeps the shared member
// list (BrokerPresence); this module keeps this process's side: which of its connections joined what,
// and whether their `$join` went out, so that each `$leave` matches one `$join`.

export const PRESENCE_RESOURCE = '$presence'
export type { PresenceMember } from './brokers/presence.js'

/** `presence: true | { events?: boolean }` of a declared topic, resolved. */
interface PresenceSettings { events: boolean }

/** One connection's membership of one topic. */
interface Membership {
  readonly member: PresenceMember
  readonly events: boolean
  /** Whether this process delivered its `$join` (then its `$leave` follows). */
  announced: boolean
}

const presenceData = Compile(Type.Object({ topic: Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH }) }))

/** Reads and checks a declared topic's `presence` option at declaration; undefined when off. */
export function presenceSettings (declared: DeclaredTopic): PresenceSettings | undefined {
  const value = (declared.options as { presence?: unknown }).presence
  if (value === undefined || value === false) return undefined
  if (value === true) return { events: true }
  const expected = 'presence must be a boolean or { events?: boolean }'
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new InvalidTopicError(`${expected} (topic "${declared.pattern}"), received ${describe(value)}`)
  for (const key of Object.keys(value)) if (key !== 'events') throw new InvalidTopicError(`${expected} (topic "${declared.pattern}"); unknown key "${key}"`)
  const events = (value as { events?: unknown }).events
  if (events !== undefined && typeof events !== 'boolean') throw new InvalidTopicError(`${expected} (topic "${declared.pattern}"), received events: ${describe(events)}`)
  return { events: events ?? true }
}

export class PresenceTracker {
  /** The `$presence/get` action of each presence topic, compiled in the scope that declared it. */
  readonly actions = new Map<DeclaredTopic, CompiledAction>()
  private readonly settings = new Map<DeclaredTopic, PresenceSettings>()
  /** Presence topics each local connection joined; a connection is removed with its last one. */
  private readonly joined = new Map<Peer, Map<string, Membership>>()
  /** Removals from the broker still running: shutdown waits for them before the broker closes. */
  private readonly removals = new Set<Promise<void>>()
  /** Removals that failed since shutdown began, and the first one's error: drain() reports them together. */
  private failedAtShutdown = 0
  private shutdownError: unknown

  constructor (private readonly rt: PresenceHost) {}

  /** Called for each declared topic; returns the `$presence/get` action when it has presence. */
  declare (scope: FastifyInstance, declared: DeclaredTopic): CompiledAction | undefined {
    const settings = presenceSettings(declared)
    if (settings === undefined) return undefined
    this.settings.set(declared, settings)
    const tracker = this
    async function get (message: Envelope, ctx: { connection: DrizzleConnection }) {
      const topic = (message.data as { topic: string }).topic
      // Only subscribers may look: presence tells who is there, which authorize guards like the data.
      if (!ctx.connection.topics.has(topic)) throw new ForbiddenError(`Not subscribed to "${topic}"`)
      return { topic, members: await tracker.members(topic) }
    }
    const action = compileAction(scope, PRESENCE_RESOURCE, 'get', get)
    this.actions.set(declared, action)
    return action
  }

  /**
   * The `$topic/subscribe` definition of a declared topic: with presence, an onResponse hook
   * delivers the joiner's `$join` after its subscribe reply, as the protocol promises.
   */
  subscribeAction (declared: DeclaredTopic | undefined, handler: (message: Envelope, ctx: any) => Promise<unknown>): unknown {
    if (declared === undefined || !this.settings.has(declared)) return handler
    return {
      handler,
      onResponse: async (message: Envelope, ctx: { connection: DrizzleConnection, statusCode: number }) => {
        if (ctx.statusCode === 200) this.announceJoin(ctx.connection as Peer, (message.data as { topic: string }).topic)
      }
    }
  }

  /** Finds `$presence/<action>` for a frame, or the error that says why there is none. */
  resolve (message: Envelope): CompiledAction | Error {
    if (message.action !== 'get') return new ActionNotFoundError(message.action, PRESENCE_RESOURCE)
    if (!presenceData.Check(message.data)) {
      const rule = `must be a non-empty string of at most ${MAX_NAME_LENGTH} characters`
      return validationError(`"data.topic" ${rule}`, [{ path: '/data/topic', message: rule }])
    }
    const topic = (message.data as { topic: string }).topic
    const problem = this.rt.topicProblem(topic)
    if (problem !== undefined) return validationError(`"data.topic" ${problem}`, [{ path: '/data/topic', message: problem }])
    const match = this.rt.patterns.match(topic)
    const action = match === undefined ? undefined : this.actions.get(match.declared)
    return action ?? new TopicNotFoundError(topic)
  }

  /** The members of a presence topic on every instance (`drizzle.presence(topic)`). */
  async members (topic: string): Promise<PresenceMember[]> {
    checkTopic(topic)
    if (this.settingsOf(topic) === undefined) throw new TopicNotFoundError(topic)
    return await this.backend().members(topic)
  }

  /**
   * A connection subscribed to `topic`: if the topic has presence, it becomes a member everywhere
   * (awaited, so `$presence/get` lists it once the subscribe reply is out) and its `$join` is
   * delivered here now, or by the subscribe action after its reply (`deferJoin`).
   */
  async join (conn: Peer, topic: string, deferJoin: boolean): Promise<void> {
    const settings = this.settingsOf(topic)
    if (settings === undefined) return
    let topics = this.joined.get(conn)
    if (topics === undefined) {
      topics = new Map()
      this.joined.set(conn, topics)
    }
    const membership: Membership = { member: { connection: conn.id, user: conn.user }, events: settings.events, announced: false }
    topics.set(topic, membership)
    // The instance must receive the topic from the broker before others' `$join` can reach it.
    await this.rt.subscriptions.brokerReady.get(topic)
    // Unsubscribed or closed meanwhile: it left already, and must not be written after its leave.
    if (this.joined.get(conn)?.get(topic) !== membership) return
    try {
      await this.backend().join(topic, membership.member, settings.events)
    } catch (err) {
      // The subscription stands: the broker writes its members again when it is back.
      this.rt.log.warn({ err, topic }, 'presence: could not record a member now')
    }
    if (!deferJoin) this.announceJoin(conn, topic)
  }

  /** Delivers a member's `$join` to this process's subscribers, once, if it is still a member. */
  announceJoin (conn: Peer, topic: string): void {
    const membership = this.joined.get(conn)?.get(topic)
    if (membership === undefined || membership.announced || !membership.events) return
    membership.announced = true
    this.rt.subscriptions.deliver(topic, JSON.stringify(membership.member), JOIN_EVENT)
  }

  /** A connection left `topic` (unsubscribed, or closed): it is no member anymore anywhere. */
  leave (conn: Peer, topic: string): void {
    const topics = this.joined.get(conn)
    const membership = topics?.get(topic)
    if (topics === undefined || membership === undefined) return
    topics.delete(topic)
    if (topics.size === 0) this.joined.delete(conn)
    if (membership.announced) this.rt.subscriptions.deliver(topic, JSON.stringify(membership.member), LEAVE_EVENT)
    const removal: Promise<void> = this.backend().leave(topic, membership.member, membership.events)
      .catch(err => this.removalFailed(err, topic))
      .finally(() => { this.removals.delete(removal) })
    this.removals.add(removal)
  }

  /**
   * Shutdown, once every socket closed and before the broker does: waits at most `ms` for the removals
   * still running (the broker closing under them would fail each one), then logs in one line how many
   * members could not be removed, instead of one line per member of a broker that is going away.
   */
  async drain (ms: number): Promise<void> {
    // Each removal catches its own failure: only the time limit can end the wait early.
    if (this.removals.size > 0) await withTimeout(Promise.all(this.removals), ms, 'presence removals').catch(() => {})
    // Removals still running are counted now; their failure, later, is not logged again.
    const members = this.failedAtShutdown + this.removals.size
    const err = this.shutdownError
    this.failedAtShutdown = 0
    this.shutdownError = undefined
    if (members === 0) return
    this.rt.log.warn({ members, pending: this.removals.size, err }, `presence: could not remove ${members} ${members === 1 ? 'member' : 'members'} at shutdown; they expire with this instance`)
  }

  /** Outside shutdown a failed removal is news of its own; during it, one of a batch drain() reports. */
  private removalFailed (err: unknown, topic: string): void {
    if (this.rt.closing) {
      if (this.failedAtShutdown++ === 0) this.shutdownError = err
      return
    }
    this.rt.log.warn({ err, topic }, 'presence: could not remove a member now; it expires with this instance')
  }

  /** A closed connection leaves every presence topic it was in. */
  closed (conn: Peer): void {
    const topics = this.joined.get(conn)
    if (topics === undefined) return
    for (const topic of [...topics.keys()]) this.leave(conn, topic)
  }

  /**
   * Whether a frame from the broker is a presence frame (`$join`/`$leave` of a topic declared with
   * presence events): another instance's, carried without a position and with a member as data. It
   * is delivered as it is, never judged as a publication (the topic's schema, its history).
   */
  isPresenceFrame (topic: string, event: string | undefined): boolean {
    return (event === JOIN_EVENT || event === LEAVE_EVENT) && this.settingsOf(topic)?.events === true
  }

  private settingsOf (topic: string): PresenceSettings | undefined {
    const match = this.rt.patterns.match(topic)
    return match === undefined ? undefined : this.settings.get(match.declared)
  }

  private backend (): BrokerPresence {
    const presence = this.rt.broker.presence
    // Runtime.ready() refused presence topics on a broker without the feature: only a broker that
    // claims it without providing it gets here.
    if (presence === undefined) throw new BrokerUnsupportedError(this.rt.broker.name, 'presence', '(any)')
    return presence
  }
}
