import type { FastifyInstance } from 'fastify'
import type { Static, TSchema } from 'typebox'
import type { ActionContext } from './context.js'
import type { DrizzleConnection } from './context.js'
import type { Envelope } from './protocol.js'
import type { TopicParams } from './topics.js'

// The public, type-level surface of resources and topics. Runtime checks live in resources.ts and
// topics.ts; these types only guide TypeScript users and feed the typed client.

export type MaybePromise<T> = T | Promise<T>

/** A validated request as handlers receive it; `data` is typed from the action's schema when it has one. */
export interface Message<D = unknown> extends Envelope {
  data: D & Envelope['data']
}

type DataOf<S> = S extends TSchema ? Static<S> : unknown
type ReplyIn<S> = S extends { reply: infer R extends TSchema } ? MaybePromise<Static<R>> : unknown

export type ActionHandler<D = unknown, R = unknown> = (this: FastifyInstance, message: Message<D>, ctx: ActionContext) => R

export type Done = (err?: Error | null) => void
// One signature per hook kind (not a union of async and callback forms) so TypeScript can type the
// parameters of inline hooks; an async hook simply ignores `done`.
export type ActionHook = (this: FastifyInstance, message: Message<any>, ctx: ActionContext, done: Done) => MaybePromise<void>
export type OnSendHook = (this: FastifyInstance, message: Message<any>, ctx: ActionContext, payload: unknown, done: (err: Error | null, payload?: unknown) => void) => MaybePromise<unknown>
export type OnErrorHook = (this: FastifyInstance, message: Message<any>, ctx: ActionContext, error: unknown, done: Done) => MaybePromise<void>
export type ConnectionHook = (this: FastifyInstance, connection: DrizzleConnection, done: Done) => MaybePromise<void>
export type SubscriptionHook = (this: FastifyInstance, connection: DrizzleConnection, topic: string, done: Done) => MaybePromise<void>

type OneOrMany<T> = T | T[]

export interface ActionHooks {
  onRequest?: OneOrMany<ActionHook>
  preValidation?: OneOrMany<ActionHook>
  preHandler?: OneOrMany<ActionHook>
  onSend?: OneOrMany<OnSendHook>
  onResponse?: OneOrMany<ActionHook>
  onError?: OneOrMany<OnErrorHook>
  onTimeout?: OneOrMany<ActionHook>
}

export interface ActionSchema {
  /** Checks `message.data` (compiled once with TypeBox's compiler: no coercion, no stripping). */
  data?: TSchema
  /** Serializes the reply with fast-json-stringify, like a Fastify response schema: unknown properties are dropped. */
  reply?: TSchema
}

export interface ActionObject<S extends ActionSchema = ActionSchema> extends ActionHooks {
  schema?: S
  /** Milliseconds before ACTION_TIMEOUT; overrides the plugin's actionTimeout (0 disables). */
  timeout?: number
  // Method syntax on purpose: its parameter is checked bivariantly, so a handler typed by action()
  // or annotated by the user (Message<{ done: boolean }>) fits where Message<unknown> is expected.
  handler (this: FastifyInstance, message: Message<DataOf<S['data']>>, ctx: ActionContext): ReplyIn<S>
}

/** How an action may be written inline in `resource()`: a function, or an object with a handler. */
export type ActionFor<S extends ActionSchema> =
  | ActionHandler<any, unknown>
  | ActionObject<S>

/**
 * Identity helper that lets TypeScript type `message.data` (and check the reply) from the action's
 * TypeBox schemas: `create: action({ schema: { data: Todo }, handler (message) { message.data.title } })`.
 */
export function action<const D extends TSchema | undefined = undefined, const R extends TSchema | undefined = undefined, Ret = unknown> (
  definition: ActionHooks & {
    schema?: { data?: D, reply?: R }
    timeout?: number
    handler: ActionHandler<DataOf<D>, R extends TSchema ? MaybePromise<Static<R>> : Ret>
  }
): ActionHooks & { schema: { data: D, reply: R }, timeout?: number, handler: ActionHandler<DataOf<D>, R extends TSchema ? MaybePromise<Static<R>> : Ret> } {
  return definition as ActionHooks & { schema: { data: D, reply: R }, handler: ActionHandler<DataOf<D>, R extends TSchema ? MaybePromise<Static<R>> : Ret> }
}

/** What `resource()` returns: the name, and (type-level only) the actions, for the typed client. */
export interface DrizzleResource<N extends string = string, A = unknown> {
  readonly name: N
  readonly actions: readonly string[]
  /** Type-level only. */
  readonly '~actions'?: A
}

export interface TopicOptions<D = unknown> {
  /** Decides whether a client may subscribe itself; return false (or throw a 401/403 error) to refuse. */
  authorize?: (ctx: ActionContext, params: TopicParams) => MaybePromise<boolean>
  /** Schema of the published data (documentation and client typing). */
  schema?: TSchema
  /**
   * Keep the topic's members (`$presence/get`, `drizzle.presence(topic)`) and send `$join`/`$leave`
   * frames to its subscribers; `{ events: false }` keeps the members without the frames.
   */
  presence?: boolean | { events?: boolean }
  /**
   * Keep the last `size` publications, dropped `ttl` ms (default 300000) after the last one: every
   * publication gets a position and subscribers may recover what they missed (README "History and recovery").
   */
  history?: false | { size: number, ttl?: number }
  /** Type-level only. */
  '~data'?: D
}

/** What `topic()` returns: the pattern, and (type-level only) the published data type. */
export interface DrizzleTopic<P extends string = string, D = unknown> {
  readonly pattern: P
  /** Type-level only. */
  readonly '~data'?: D
}

// ---- inference for the client -----------------------------------------------------------------

type HandlerOf<X> = X extends (...args: any[]) => any ? X : X extends { handler: infer H } ? H : never

export type ActionData<X> =
  X extends { schema: { data: infer S extends TSchema } }
    ? Static<S>
    : HandlerOf<X> extends (message: Message<infer D>, ...rest: any[]) => any ? D : unknown

export type ActionReply<X> =
  X extends { schema: { reply: infer S extends TSchema } }
    ? Static<S>
    : HandlerOf<X> extends (...args: any[]) => infer R ? FinalReply<Awaited<R>> : unknown

/** A streaming handler's reply is its generator's return value (`null` when it returns nothing). */
type FinalReply<R> =
  R extends AsyncGenerator<any, infer Ret, any> ? ([Ret] extends [void] ? null : Ret)
    : R extends AsyncIterable<any> ? null
      : R

/** What a streaming action yields (the items of `client.stream`); `never` for a plain action. */
export type ActionItem<X> =
  HandlerOf<X> extends (...args: any[]) => infer R ? (Awaited<R> extends AsyncIterable<infer I> ? I : never) : unknown

/** `rooms/:id/messages` -> `rooms/${string}/messages` */
export type TopicString<P extends string> =
  P extends `${infer Head}/${infer Tail}` ? `${TopicString<Head>}/${TopicString<Tail>}` : P extends `:${string}` ? string : P

/**
 * The type a client needs, from the values `resource()` and `topic()` returned:
 * `export type Api = InferApi<typeof todos | typeof rooms>`.
 */
export interface InferApi<T extends DrizzleResource<string, any> | DrizzleTopic<string, any>> {
  resources: {
    [R in Extract<T, DrizzleResource<string, any>> as R['name']]: {
      [K in keyof NonNullable<R['~actions']>]: {
        data: ActionData<NonNullable<R['~actions']>[K]>
        reply: ActionReply<NonNullable<R['~actions']>[K]>
        item: ActionItem<NonNullable<R['~actions']>[K]>
      }
    }
  }
  topics: {
    [Tp in Extract<T, DrizzleTopic<string, any>> as TopicString<Tp['pattern']>]: Tp extends DrizzleTopic<string, infer D> ? D : unknown
  }
}

/** The shape of an API type, for clients that are not given one. */
export interface AnyApi {
  resources: Record<string, Record<string, { data: unknown, reply: unknown, item?: unknown }>>
  topics: Record<string, unknown>
}
