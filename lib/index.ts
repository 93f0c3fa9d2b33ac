// Brings @fastify/websocket's declarations (app.injectWS, the websocket route option) into every app
// that imports this package, so a test can call app.injectWS without importing @fastify/websocket itself.
/// <reference types="@fastify/websocket" preserve="true" />
import { drizzle } from './plugin.js'

export default drizzle
export { drizzle, drizzle as fastifyDrizzle }
export { memoryBroker } from './brokers/memory.js'
export type { Broker, BrokerFeature, BrokerSink, DeliveryMeta, PublishOptions } from './brokers/types.js'
export type { BrokerHistory, HistoryEntry, HistoryPolicy, HistoryRead, Position } from './brokers/types.js'
export type { DrizzleOptions, RateLimitOptions, OriginCheck, HttpOptions, AsyncApiOptions, PlaygroundOptions } from './options.js'
export type { AsyncApiDocument, AsyncApiServer, AsyncApiCallOptions } from './asyncapi.js'
export type { DrizzleConnection, DrizzleConnectionStore } from './context.js'
export type { BrokerPresence, PresenceMember } from './brokers/presence.js'
export type { DisconnectOptions } from './users.js'
export { ActionContext } from './context.js'
export { DrizzleScope } from './scope.js'
export * as errors from './errors.js'
export type { Envelope, RequestIdValue, ErrorDetail } from './protocol.js'
export { action } from './types.js'
export type {
  Message, ActionHandler, ActionHook, OnSendHook, OnErrorHook, ConnectionHook, SubscriptionHook, ActionHooks, ActionSchema,
  ActionObject, DrizzleResource, DrizzleTopic, TopicOptions, InferApi, AnyApi, ActionData, ActionReply, ActionItem, TopicString, MaybePromise
} from './types.js'
export type { TopicParams } from './topics.js'

declare module 'fastify' {
  interface FastifyInstance {
    drizzle: import('./scope.js').DrizzleScope
  }
}
