import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import Type from 'typebox'
import { Compile } from 'typebox/compile'
import type { Broker, DeliveryMeta, Position, PublishOptions } from './brokers/types.js'
import { memoryBroker } from './brokers/memory.js'
import type { ActionContext, ContextHost, DrizzleConnection } from './context.js'
import { ActionNotFoundError, AlreadyStartedError, BrokerUnsupportedError, ForbiddenError, InvalidTopicError, ResourceNotFoundError, TooManySubscriptionsError, TopicNotFoundError, validationError, describe } from './errors.js'
import { ACTION_HOOKS, APPLICATION_HOOKS, compileHook, isActionHookName, runSafeHooks, type ActionHookName, type ApplicationHookName, type CompiledHook } from './hooks.js'
import { History, parseSince } from './history.js'
import { ActionRunner } from './lifecycle.js'
import { Stats, type ActionMetrics } from './metrics.js'
import type { Tracing } from './tracing.js'
import type { ResolvedOptions } from './options.js'
import { MAX_NAME_LENGTH, type Envelope, type ParseOptions } from './protocol.js'
import { compileAction, emptyChain, ResourceRegistry, type CompiledAction, type HookChain } from './resources.js'
import { PRESENCE_RESOURCE, PresenceTracker } from './presence.js'
import { cancelAction, REQUEST_RESOURCE } from './stream.js'
import { TopicSchemas } from './typed-topics.js'
import { isUserTopic, UserDirectory } from './users.js'
import { ALL_TOPIC, featuresOf, parsePattern, topicProblem, Subscriptions, TopicPatterns, type DeclaredTopic, type Peer } from './topics.js'

export type { Peer } from './topics.js'

const TOPIC_RESOURCE = '$topic'
const topicData = Compile(Type.Object({ topic: Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH }) }))

interface TopicActions { subscribe: CompiledAction, unsubscribe: CompiledAction }

/** Called with the actions of each resource declared, so a transport (HTTP) can serve them too. */
export type DeclarationListener = (scope: FastifyInstance, actions: ReadonlyMap<string, CompiledAction>) => void

/**
 * The plugin's state for one app: declarations, subscriptions, the broker seam and the action runner.
 * It knows no transport: the WebSocket and HTTP transports call into it. Scopes are Fastify instances;
 * their hooks are kept per instance and resolved into each action's chain (parent scope first) when
 * the server becomes ready.
 */
export class Runtime implements ContextHost<Peer> {
  readonly registry = new ResourceRegistry()
  readonly patterns = new TopicPatterns()
  readonly topicActions = new Map<DeclaredTopic, TopicActions>()
  readonly subscriptions: Subscriptions
  readonly broker: Broker
  readonly history = new History(this)
  /** Open connections of this process, whatever transport opened them. */
  readonly connections = new Set<Peer>()
  readonly parseOptions: ParseOptions
  readonly appHooks = {} as Record<ApplicationHookName, CompiledHook[]>
  readonly runner: ActionRunner
  readonly presence: PresenceTracker
  readonly users: UserDirectory
  readonly declarationListeners: DeclarationListener[] = []
  private readonly scopeHooks = new WeakMap<object, Record<ActionHookName, CompiledHook[]>>()
  /** Unsubscribing from a topic that matches no declaration, which a handler may have subscribed. */
  private readonly plainUnsubscribe: CompiledAction
  /** `$request/cancel` (lib/stream.ts). */
  private readonly cancelAction: CompiledAction
  /** Schemas of declared topics, enforced on publish and on receipt (lib/typed-topics.ts). */
  readonly topicSchemas = new TopicSchemas()
  /** Bytes held for all connections: backlogs of slow sockets, unfinished incoming messages. */
  readonly totals = { buffered: 0, incomplete: 0 }
  /** Plain counts of traffic, read by the metrics at scrape time (lib/metrics.ts). */
  readonly stats = new Stats()
  /** Set at registration when the `metrics` option is on. */
  metrics: ActionMetrics | undefined
  /** Set at registration when @opentelemetry/api is installed and `tracing` is on (it is also the runner's). */
  tracing: Tracing | undefined
  started = false
  closing = false

  constructor (readonly root: FastifyInstance, readonly options: ResolvedOptions, readonly log: FastifyBaseLogger) {
    this.broker = options.broker ?? memoryBroker()
    this.parseOptions = { protoAction: options.onProtoPoisoning, constructorAction: options.onConstructorPoisoning }
    this.subscriptions = new Subscriptions(this.followingHistory(this.broker), (err, op, topic) => this.log.error({ err, topic }, `broker ${op} failed`))
    this.runner = new ActionRunner(options.actionTimeout)
    this.presence = new PresenceTracker(this)
    this.users = new UserDirectory(this.broker, (err, op, topic) => this.log.error({ err, topic }, `broker ${op} failed`))
    for (const name of APPLICATION_HOOKS) this.appHooks[name] = []
    this.plainUnsubscribe = this.topicAction(root, 'unsubscribe', undefined)
    this.cancelAction = cancelAction(root)
  }

  // ---- declarations -------------------------------------------------------------------------

  declareResource (scope: FastifyInstance, name: unknown, actions: unknown): Map<string, CompiledAction> {
    const compiled = this.registry.declare(scope, name, actions)
    if (this.started) {
      for (const action of compiled.values()) this.link(action)
      this.runner.tune(this.registry.actions())
    }
    for (const listener of this.declarationListeners) listener(scope, compiled)
    return compiled
  }

  declareTopic (scope: FastifyInstance, pattern: unknown, options: unknown): void {
    const declared = parsePattern(pattern, options, scope)
    this.history.declare(declared)
    this.topicSchemas.declare(declared)
    this.patterns.add(declared)
    // First: the subscribe action of a presence topic differs (it delivers the joiner's $join).
    const presenceGet = this.presence.declare(scope, declared)
    const actions = { subscribe: this.topicAction(scope, 'subscribe', declared), unsubscribe: this.topicAction(scope, 'unsubscribe', declared) }
    this.topicActions.set(declared, actions)
    if (this.started) { this.link(actions.subscribe); this.link(actions.unsubscribe); if (presenceGet !== undefined) this.link(presenceGet) }
  }

  addHook (scope: FastifyInstance, name: unknown, fn: unknown): void {
    if (this.started) throw new AlreadyStartedError(`add the ${describe(name)} hook`)
    const hook = compileHook(name, fn, scope)
    if (!isActionHookName(name as string)) {
      this.appHooks[name as ApplicationHookName].push(hook)
      return
    }
    let hooks = this.scopeHooks.get(scope)
    if (hooks === undefined) {
      hooks = emptyChain() as Record<ActionHookName, CompiledHook[]>
      this.scopeHooks.set(scope, hooks)
    }
    hooks[name as ActionHookName].push(hook)
  }

  /** Called once when Fastify is ready: checks what topics need of the broker, resolves every action's hook chain. */
  ready (): void {
    this.checkBrokerFeatures()
    this.started = true
    this.runner.tune(this.registry.actions())
    for (const action of this.registry.actions()) this.link(action)
    for (const actions of this.topicActions.values()) { this.link(actions.subscribe); this.link(actions.unsubscribe) }
    for (const action of this.presence.actions.values()) this.link(action)
    this.link(this.plainUnsubscribe)
    this.link(this.cancelAction)
  }

  /** A topic needing what the broker cannot do is refused, never served by a per-instance substitute. */
  private checkBrokerFeatures (): void {
    const supported = this.broker.features
    for (const declared of this.patterns.all()) {
      for (const feature of featuresOf(declared)) {
        if (supported?.has(feature) !== true) throw new BrokerUnsupportedError(this.broker.name, feature, declared.pattern)
      }
    }
  }

  /** Scope hooks from the root down to the action's scope, then the action's own. */
  private link (action: CompiledAction): void {
    const scopes: Record<ActionHookName, CompiledHook[]>[] = []
    for (let o: object | null = action.scope; o !== null; o = Object.getPrototypeOf(o)) {
      const hooks = this.scopeHooks.get(o)
      if (hooks !== undefined) scopes.unshift(hooks)
    }
    const chain = {} as Record<ActionHookName, readonly CompiledHook[]>
    for (const name of ACTION_HOOKS) chain[name] = [...scopes.flatMap(s => s[name]), ...action.ownHooks[name]]
    action.hooks = chain as HookChain
    action.hasHooks = ACTION_HOOKS.some(name => chain[name].length > 0)
  }

  // ---- dispatch ---------------------------------------------------------------------------

  /** Finds the action for an envelope, or the error that says why there is none. */
  resolve (conn: Peer, message: Envelope): CompiledAction | Error {
    if (message.resource === TOPIC_RESOURCE) return this.resolveTopicAction(conn, message)
    if (message.resource === PRESENCE_RESOURCE) return this.presence.resolve(message)
    if (message.resource === REQUEST_RESOURCE) return message.action === 'cancel' ? this.cancelAction : new ActionNotFoundError(message.action, REQUEST_RESOURCE)
    const actions = this.registry.resources.get(message.resource)
    if (actions === undefined) return new ResourceNotFoundError(message.resource)
    return actions.get(message.action) ?? new ActionNotFoundError(message.action, message.resource)
  }

  private resolveTopicAction (conn: Peer, message: Envelope): CompiledAction | Error {
    const name = message.action
    if (name !== 'subscribe' && name !== 'unsubscribe') return new ActionNotFoundError(name, TOPIC_RESOURCE)
    if (!topicData.Check(message.data)) {
      return validationError(`"data.topic" must be a non-empty string of at most ${MAX_NAME_LENGTH} characters`,
        [{ path: '/data/topic', message: `must be a non-empty string of at most ${MAX_NAME_LENGTH} characters` }])
    }
    const topic = (message.data as { topic: string }).topic
    const problem = this.topicProblem(topic)
    if (problem !== undefined) return validationError(`"data.topic" ${problem}`, [{ path: '/data/topic', message: problem }])
    // `__all__` is every connection's for its lifetime, even where a `:param` pattern would match it.
    // `$user/<user>` and `$disconnect/<user>` carry users' messages: never a client's to subscribe.
    if (topic === ALL_TOPIC || isUserTopic(topic)) return new TopicNotFoundError(topic)
    const match = this.patterns.match(topic)
    if (match !== undefined) return (this.topicActions.get(match.declared) as TopicActions)[name]
    if (name === 'unsubscribe' && conn.topics.has(topic)) return this.plainUnsubscribe
    return new TopicNotFoundError(topic)
  }

  /** The built-in `$topic` actions of one declared topic, dispatched in its scope like any action. */
  private topicAction (scope: FastifyInstance, name: 'subscribe' | 'unsubscribe', declared: DeclaredTopic | undefined): CompiledAction {
    const rt = this
    async function subscribe (message: Envelope, ctx: { connection: DrizzleConnection }) {
      const topic = (message.data as { topic: string }).topic
      const authorize = declared?.options.authorize
      if (authorize !== undefined) {
        const params = rt.patterns.match(topic)?.params ?? {}
        if (await authorize(ctx, params) !== true) throw new ForbiddenError(`Not allowed to subscribe to "${topic}"`)
      }
      const policy = rt.history.policyOf(topic)
      const since = parseSince(message.data as Record<string, unknown>)
      if (policy !== undefined) return rt.history.subscribe(ctx, ctx.connection as Peer, topic, policy, since)
      if (since !== undefined) throw validationError(`topic "${topic}" keeps no history: "data.since" is not allowed`, [{ path: '/data/since', message: 'the topic keeps no history' }])
      await rt.subscribe(ctx.connection as Peer, topic, true)
      return { topic, subscribed: true }
    }
    async function unsubscribe (message: Envelope, ctx: { connection: DrizzleConnection }) {
      const topic = (message.data as { topic: string }).topic
      await rt.unsubscribe(ctx.connection as Peer, topic)
      return { topic, subscribed: false }
    }
    return compileAction(scope, TOPIC_RESOURCE, name, name === 'subscribe' ? this.presence.subscribeAction(declared, subscribe) : unsubscribe)
  }

  // ---- topics -----------------------------------------------------------------------------

  /** Why a topic cannot be used here (its name, or the broker's own limits), or undefined. */
  topicProblem (topic: unknown): string | undefined {
    return topicProblem(topic) ?? this.broker.topicProblem?.(topic as string)
  }

  private checkTopic (topic: unknown): asserts topic is string {
    const problem = this.topicProblem(topic)
    if (problem !== undefined) throw new InvalidTopicError(`${problem}, received ${describe(topic)}`)
  }

  /**
   * Subscribes a connection (resolves to false when it already was, or is closed). Refused with
   * TOO_MANY_SUBSCRIPTIONS past `maxSubscriptions` topics, `__all__` not counted.
   */
  async subscribe (conn: Peer, topic: string, deferJoin = false): Promise<boolean> {
    this.checkTopic(topic)
    if (conn.closed || conn.topics.has(topic)) return false
    const max = this.options.maxSubscriptions
    if (conn.topics.size - (conn.topics.has(ALL_TOPIC) ? 1 : 0) >= max) throw new TooManySubscriptionsError(max)
    this.subscriptions.add(conn, topic)
    const policy = this.history.policyOf(topic)
    if (policy !== undefined) {
      // History topics are delivered in offset order from the moment the broker serves the topic.
      try {
        await this.history.feed(topic, policy).ready
      } catch (err) {
        this.subscriptions.remove(conn, topic)
        throw err
      }
    }
    await this.presence.join(conn, topic, deferJoin)
    if (this.appHooks.onSubscribe.length > 0) await runSafeHooks(this.appHooks.onSubscribe, conn.log, 'onSubscribe', conn, topic)
    return true
  }

  async unsubscribe (conn: Peer, topic: string): Promise<boolean> {
    this.checkTopic(topic)
    if (!this.subscriptions.remove(conn, topic)) return false
    this.presence.leave(conn, topic)
    if (this.appHooks.onUnsubscribe.length > 0) await runSafeHooks(this.appHooks.onUnsubscribe, conn.log, 'onUnsubscribe', conn, topic)
    return true
  }

  /**
   * Delivers locally at once, then hands the publication to the broker for the other processes.
   * `from` is the handler context of the action that publishes, if any: its span is the publication's parent.
   */
  async publish (topic: string | readonly string[], data: unknown, options?: PublishOptions, from?: ActionContext): Promise<void> {
    const topics = typeof topic === 'string' ? [topic] : topic
    if (!Array.isArray(topics) || topics.length === 0) throw new InvalidTopicError(`expected a topic or a non-empty array of topics, received ${describe(topic)}`)
    for (const t of topics) this.checkTopic(t)
    const event = options?.event
    if (event !== undefined && typeof event !== 'string') throw new InvalidTopicError(`event must be a string, received ${describe(event)}`)
    this.topicSchemas.check(this.patterns, topics, data)
    if (this.tracing?.active === true) return this.tracedPublish(topics, data, options, from)
    return this.send(topics, data, options)
  }

  /**
   * publish() with a span, whose context the broker message carries (PROTOCOL.md, Trace context),
   * history topics included: sent the same way, counted the same way.
   */
  private async tracedPublish (topics: readonly string[], data: unknown, options: PublishOptions | undefined, from: ActionContext | undefined): Promise<void> {
    const tracing = this.tracing as Tracing
    const template = topics.length === 1 ? this.patterns.match(topics[0] as string)?.declared.pattern : undefined
    const trace = tracing.startPublish(topics, this.broker.name, options?.traceparent, from, template)
    if (trace === undefined) return this.send(topics, data, options)
    await tracing.endPublish(trace, () => this.send(topics, data, { ...options, traceparent: trace.traceparent }))
  }

  /**
   * Delivers locally at once, then hands the publication to the broker for the other processes (not
   * async: the untraced path costs what it did). History topics get their position from the broker,
   * which hands the publication back to be delivered in offset order (lib/history.ts).
   */
  private send (topics: readonly string[], data: unknown, options: PublishOptions | undefined): Promise<void> {
    if (this.history.enabled) return this.sendWithHistory(topics, data, options)
    const json = JSON.stringify(data) ?? 'null'
    this.stats.publishedLocal += topics.length
    for (const t of topics) this.deliverJson(t, json, options?.event)
    if (topics.length === 1) return this.broker.publish(topics[0] as string, data, options)
    return Promise.all(topics.map(t => this.broker.publish(t, data, options))).then(() => {})
  }

  private async sendWithHistory (topics: readonly string[], data: unknown, options: PublishOptions | undefined): Promise<void> {
    let json: string | undefined
    const sent: Array<Promise<unknown>> = []
    for (const t of topics) {
      const policy = this.history.policyOf(t)
      if (policy !== undefined) {
        sent.push(this.history.publish(t, data, options, policy))
        continue
      }
      json ??= JSON.stringify(data) ?? 'null'
      this.deliverJson(t, json, options?.event)
      sent.push(this.broker.publish(t, data, options))
    }
    this.stats.publishedLocal += topics.length
    await Promise.all(sent)
  }

  /** The last position of a history topic (`drizzle.position`, `ctx.position`). */
  async position (topic: string): Promise<Position> {
    this.checkTopic(topic)
    return this.history.position(topic)
  }

  /** The broker as subscriptions see it: a topic that loses its last local subscriber drops its history feed. */
  private followingHistory (broker: Broker): Broker {
    return {
      subscribe: topic => broker.subscribe(topic),
      unsubscribe: topic => {
        this.history.forget(topic)
        return broker.unsubscribe(topic)
      }
    } as Pick<Broker, 'subscribe' | 'unsubscribe'> as Broker
  }

  abortOnClose (conn: Peer, controller: AbortController): void {
    conn.abortOnClose(controller)
  }

  /**
   * What a broker calls with a publication from another process (or, for history topics, any: this
   * instance's own come back, and their delivery span is made here, linked as any other).
   */
  deliver (topic: string, data: unknown, event: string | undefined, meta?: DeliveryMeta): void {
    if (this.users.intercept(topic, data, event)) return
    // Another instance's $join/$leave: a member, not a publication (no schema check, no position).
    if (this.presence.isPresenceFrame(topic, event)) {
      this.deliverPlain(topic, data, event)
      return
    }
    if (this.dropsInvalid(topic, data)) return
    const traceparent = meta?.traceparent
    const span = traceparent !== undefined && this.tracing?.active === true
      ? this.tracing.startDelivery(topic, this.broker.name, traceparent, this.patterns.match(topic)?.declared.pattern)
      : undefined
    const delivered = this.history.enabled && this.history.policyOf(topic) !== undefined
      ? this.history.deliver(topic, data, event, meta)
      : this.deliverPlain(topic, data, event)
    if (span !== undefined) (this.tracing as Tracing).endDelivery(span, delivered)
  }

  /** Delivers a publication as it came, without a position; returns how many sockets got it. */
  deliverPlain (topic: string, data: unknown, event: string | undefined): number {
    let json: string
    try {
      json = JSON.stringify(data) ?? 'null'
    } catch (err) {
      // Data nested past the call stack (JSON.parse takes what JSON.stringify cannot give back):
      // garbage from another process, dropped with a warning, without the payload.
      this.log.warn({ topic, reason: (err as Error).message }, 'dropped a publication from the broker that cannot be serialized')
      this.stats.droppedInvalid++
      return 0
    }
    this.stats.publishedBroker++
    return this.deliverJson(topic, json, event)
  }

  /** A publication from the broker that fails its topic's schema reaches nobody: one warning, no payload. */
  private dropsInvalid (topic: string, data: unknown): boolean {
    const problem = this.topicSchemas.problems(this.patterns, topic, data)
    if (problem === undefined) return false
    this.topicSchemas.dropped++
    this.stats.droppedInvalid++
    this.log.warn({ topic, pattern: problem.pattern, details: problem.details }, 'dropped a publication from the broker that fails its topic schema')
    return true
  }

  /** Writes the publication to the local subscribers; returns how many got it. */
  private deliverJson (topic: string, json: string, event: string | undefined): number {
    const delivered = this.subscriptions.deliver(topic, json, event)
    this.stats.deliveries += delivered
    return delivered
  }

  /** Trace ids for the log lines of an action (ContextHost). */
  logFields (ctx: ActionContext): Record<string, string> | undefined {
    return this.tracing?.logFields(ctx)
  }
}
