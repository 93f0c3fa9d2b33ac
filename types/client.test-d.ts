// Type-level tests of fastify-drizzle/client: compiled with `tsc -p types` (npm run test:types).
// Lines marked @ts-expect-error must fail to compile; the rest must compile.
import Fastify from 'fastify'
import Type from 'typebox'
import { expectTypeOf } from 'expect-type'
import WebSocket from 'ws'
import drizzle, { action, type InferApi, type Message } from '../lib/index.js'
import { DrizzleClient, DrizzleClientError, type Publication, type Unsubscribe } from '../lib/client/index.js'

const app = Fastify()
await app.register(drizzle)
const Todo = Type.Object({ id: Type.Integer(), title: Type.String() })
export const todos = app.drizzle.resource('todos', {
  async list () { return [{ id: 1, title: 'a' }] },
  create: action({
    schema: { data: Type.Object({ title: Type.String() }), reply: Todo },
    async handler (message) { return { id: 1, title: message.data.title } }
  }),
  count: (message: Message<{ done: boolean }>): number => message.data.done ? 1 : 0
})
export const rooms = app.drizzle.topic('rooms/:id')
export const news = app.drizzle.topic<'news', { headline: string }>('news')
// A topic declared with a schema types its data from it, with no type argument.
export const scores = app.drizzle.topic('scores/:match', { schema: Type.Object({ home: Type.Integer(), away: Type.Integer() }) })
type Api = InferApi<typeof todos | typeof rooms | typeof news | typeof scores>

const client = new DrizzleClient<Api>('ws://127.0.0.1/ws', { WebSocket, timeout: 5000, reconnect: { baseDelay: 100, maxDelay: 5000, maxAttempts: 10 } })

// Replies are inferred from the reply schema or the handler's return type.
expectTypeOf(client.request('todos', 'create', { title: 'x' })).toEqualTypeOf<Promise<{ id: number, title: string }>>()
expectTypeOf(client.request('todos', 'list')).toEqualTypeOf<Promise<Array<{ id: number, title: string }>>>()
expectTypeOf(client.request('todos', 'count', { done: true }, { timeout: 100, signal: AbortSignal.timeout(100) })).toEqualTypeOf<Promise<number>>()
// An action without a data type takes data or none.
client.request('todos', 'list', undefined, { timeout: 100 })

// @ts-expect-error unknown resource
client.request('users', 'list')
// @ts-expect-error unknown action
client.request('todos', 'remove')
// @ts-expect-error data of the wrong shape
client.request('todos', 'create', { title: 1 })
// @ts-expect-error data is required when the action's schema requires it
client.request('todos', 'create')
// @ts-expect-error unknown request option
client.request('todos', 'list', undefined, { retries: 3 })

// Topics: declared patterns, data typed from topic<P, D>().
const stop = client.subscribe('news', (data, frame) => {
  expectTypeOf(data).toEqualTypeOf<{ headline: string }>()
  expectTypeOf(frame).toEqualTypeOf<Publication<{ headline: string }>>()
})
expectTypeOf(stop).toEqualTypeOf<Unsubscribe>()
expectTypeOf(stop.ready).toEqualTypeOf<Promise<void>>()
client.subscribe('rooms/42', () => {})
client.subscribe('scores/final', (data, frame) => {
  expectTypeOf(data).toEqualTypeOf<{ home: number, away: number }>()
  expectTypeOf(frame.data).toEqualTypeOf<{ home: number, away: number }>()
})
// @ts-expect-error the schema makes the data typed, not unknown
client.subscribe('scores/final', (data: { home: string }) => data)
// @ts-expect-error not a declared topic
client.subscribe('weather', () => {})
// listen() takes any topic (the server may subscribe the socket to undeclared ones).
client.listen('news', data => { expectTypeOf(data).toEqualTypeOf<{ headline: string }>() })
client.listen('__all__', data => { expectTypeOf(data).toEqualTypeOf<unknown>() })

// Events.
client.on('error', err => {
  expectTypeOf(err).toEqualTypeOf<DrizzleClientError>()
  expectTypeOf(err.type).toEqualTypeOf<'timeout' | 'disconnect' | 'server' | 'protocol'>()
  expectTypeOf(err.code).toEqualTypeOf<string | undefined>()
  expectTypeOf(err.statusCode).toEqualTypeOf<number | undefined>()
})
client.on('open', e => { expectTypeOf(e.reconnected).toEqualTypeOf<boolean>() })
client.on('close', e => { expectTypeOf(e.code).toEqualTypeOf<number>() })
client.on('reconnect', e => { expectTypeOf(e.delay).toEqualTypeOf<number>() })
// @ts-expect-error not an event
client.on('message', () => {})
expectTypeOf(client.close()).toEqualTypeOf<Promise<void>>()

// Without a type argument everything is loose: any names, any data, unknown replies.
const loose = new DrizzleClient('ws://127.0.0.1/ws', { WebSocket })
expectTypeOf(loose.request('anything', 'goes', { a: 1 })).toEqualTypeOf<Promise<unknown>>()
loose.subscribe('any/topic', data => { expectTypeOf(data).toEqualTypeOf<unknown>() })

// The first argument may be a function re-read on every attempt, returning a URL or a socket.
const fresh = new DrizzleClient<Api>(async () => `ws://127.0.0.1/ws?token=${Date.now()}`, { WebSocket })
const injected = new DrizzleClient<Api>(() => app.injectWS('/ws'))
// @ts-expect-error not a URL, a URL function or a socket function
const wrong = new DrizzleClient<Api>(42)
await Promise.all([fresh.close(), injected.close(), wrong.close()])
