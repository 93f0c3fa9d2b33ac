import type { FastifyInstance } from 'fastify'
import type { Static, TSchema } from 'typebox'
import { buildAsyncApi, serverOf, type AsyncApiCallOptions, type AsyncApiDocument } from './asyncapi.js'
import type { Position, PublishOptions } from './brokers/types.js'
import type { PresenceMember } from './brokers/presence.js'
import type { DisconnectOptions } from './users.js'
import type { DrizzleConnection } from './context.js'
import type { Runtime } from './runtime.js'
import type {
  ActionFor, ActionHook, ActionSchema, ConnectionHook, DrizzleResource, DrizzleTopic, OnErrorHook, OnSendHook, SubscriptionHook,
  TopicOptions
} from './types.js'

/**
 * What `instance.drizzle` returns: the plugin's API bound to the scope it is read from, so that
 * resources, topics and hooks declared through it belong to that Fastify scope.
 */
export class DrizzleScope {
  constructor (private readonly rt: Runtime, readonly instance: FastifyInstance) {}

  /**
   * Declares a resource in this scope: its actions get the hooks of this scope and its ancestors.
   * Fails with a coded error on a duplicate name, a reserved name or a malformed action.
   */
  resource<const N extends string, T extends Record<string, ActionSchema>, A> (name: N, actions: { [K in keyof T]: ActionFor<T[K]> } & A): DrizzleResource<N, A> {
    const compiled = this.rt.declareResource(this.instance, name, actions)
    return { name, actions: [...compiled.keys()] }
  }

  /**
   * Declares a topic clients may subscribe to themselves, with `:param` segments and authorization.
   * The published data's type comes from `schema` when there is one (`topic('news', { schema: News })`),
   * else from the second type argument (`topic<'news', News>('news')`), else `unknown`.
   */
  topic<const P extends string, const S extends TSchema> (pattern: P, options: TopicOptions<Static<S>> & { schema: S }): DrizzleTopic<P, Static<S>>
  topic<const P extends string, D = unknown> (pattern: P, options?: TopicOptions<D>): DrizzleTopic<P, D>
  topic (pattern: string, options?: TopicOptions): DrizzleTopic {
    this.rt.declareTopic(this.instance, pattern, options)
    return { pattern }
  }

  addHook (name: 'onRequest' | 'preValidation' | 'preHandler' | 'onResponse' | 'onTimeout', hook: ActionHook): this
  addHook (name: 'onSend', hook: OnSendHook): this
  addHook (name: 'onError', hook: OnErrorHook): this
  addHook (name: 'onConnect' | 'onDisconnect', hook: ConnectionHook): this
  addHook (name: 'onSubscribe' | 'onUnsubscribe', hook: SubscriptionHook): this
  addHook (name: string, hook: (...args: any[]) => unknown): this {
    this.rt.addHook(this.instance, name, hook)
    return this
  }

  publish (topic: string | readonly string[], data: unknown, options?: PublishOptions): Promise<void> {
    return this.rt.publish(topic, data, options)
  }

  /**
   * The members of a topic declared with `presence`, on every instance: `[{ connection, user }]`.
   * Rejects with TOPIC_NOT_FOUND for a topic without presence.
   */
  presence (topic: string): Promise<PresenceMember[]> {
    return this.rt.presence.members(topic)
  }

  /**
   * Sends `{"topic":"$user","data":...,"event"?}` to every connection of `user` (named by the
   * `identify` option) on every instance.
   */
  publishToUser (user: string | number, data: unknown, options?: PublishOptions): Promise<void> {
    return this.rt.users.publishToUser(user, data, options)
  }

  /** Closes every connection of `user` on every instance, with `code` (default 4000) and `reason`. */
  disconnectUser (user: string | number, options?: DisconnectOptions): Promise<void> {
    return this.rt.users.disconnectUser(user, options)
  }

  /**
   * The last position `{ offset, epoch }` of a topic declared with `history`: return it with the state
   * an action loads (take it first), and the client subscribes `since` it, so nothing published in
   * between is missed. Rejects with FST_DRIZZLE_NO_HISTORY for a topic that keeps no history.
   */
  position (topic: string): Promise<Position> {
    return this.rt.position(topic)
  }

  /** Open connections of this app (in this process). */
  get connections (): ReadonlySet<DrizzleConnection> {
    return this.rt.connections
  }

  /**
   * The AsyncAPI 3.0 document of the whole app's resources and topics (served at `GET <path>/asyncapi.json`
   * with the `asyncapi` option). The server is `serverUrl` (argument, then option), else the listening address.
   */
  asyncapi (options?: AsyncApiCallOptions): AsyncApiDocument {
    return buildAsyncApi(this.rt, serverOf(this.rt, undefined, options?.serverUrl))
  }

  /** Local subscriber count of a topic. */
  subscriberCount (topic: string): number {
    return this.rt.subscriptions.byTopic.get(topic)?.size ?? 0
  }
}

/** One DrizzleScope per Fastify instance object, made on first use. */
export function scopeGetter (rt: Runtime): (this: FastifyInstance) => DrizzleScope {
  const scopes = new WeakMap<FastifyInstance, DrizzleScope>()
  return function getDrizzle (this: FastifyInstance) {
    let scope = scopes.get(this)
    if (scope === undefined) {
      scope = new DrizzleScope(rt, this)
      scopes.set(this, scope)
    }
    return scope
  }
}
