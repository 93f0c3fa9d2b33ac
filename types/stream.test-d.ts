// Type-level tests of streaming actions (DESIGN section 11): compiled with `tsc -p types`.
// Lines marked @ts-expect-error must fail to compile; the rest must compile.
import Fastify from 'fastify'
import Type from 'typebox'
import { expectTypeOf } from 'expect-type'
import WebSocket from 'ws'
import drizzle, { action, type ActionItem, type InferApi, type Message } from '../lib/index.js'
import { DrizzleClient, type StreamItem } from '../lib/client/index.js'

const app = Fastify()
await app.register(drizzle)
export const rows = app.drizzle.resource('rows', {
  async * query (message: Message<{ q: string }>) {
    yield { id: 1, q: message.data.q }
    return { total: 1 }
  },
  async * tokens () { yield 'a'; yield 'b' },
  progress: action({
    schema: { data: Type.Object({ job: Type.String() }) },
    async * handler (message) { yield { job: message.data.job, percent: 50 } }
  }),
  async plain () { return 42 }
})
type Api = InferApi<typeof rows>

const client = new DrizzleClient<Api>('ws://127.0.0.1/ws', { WebSocket })

// Items are typed from the generator's yield type; the return value is the final reply.
for await (const row of client.stream('rows', 'query', { q: 'x' })) {
  expectTypeOf(row).toEqualTypeOf<{ id: number, q: string }>()
}
for await (const token of client.stream('rows', 'tokens', undefined, { signal: AbortSignal.timeout(100) })) {
  expectTypeOf(token).toEqualTypeOf<string>()
}
for await (const step of client.stream('rows', 'progress', { job: 'j' })) {
  expectTypeOf(step).toEqualTypeOf<{ job: string, percent: number }>()
}
const stream = client.stream('rows', 'query', { q: 'x' })
const step = await stream.next()
if (step.done === true) expectTypeOf(step.value).toEqualTypeOf<{ total: number }>()
// request() on a streaming action resolves with the final reply: the return value, null when none.
expectTypeOf(client.request('rows', 'query', { q: 'x' })).toEqualTypeOf<Promise<{ total: number }>>()
expectTypeOf(client.request('rows', 'tokens')).toEqualTypeOf<Promise<null>>()
expectTypeOf(client.request('rows', 'plain')).toEqualTypeOf<Promise<number>>()
// A plain action yields nothing.
expectTypeOf<StreamItem<Api, 'rows', 'plain'>>().toEqualTypeOf<never>()
expectTypeOf<ActionItem<() => AsyncGenerator<Date, void>>>().toEqualTypeOf<Date>()

// @ts-expect-error data of the wrong shape
client.stream('rows', 'query', { q: 1 })
// @ts-expect-error data is required by the action's schema
client.stream('rows', 'progress')
// @ts-expect-error unknown action
client.stream('rows', 'missing')

// Without a type argument items are unknown.
const loose = new DrizzleClient('ws://127.0.0.1/ws', { WebSocket })
for await (const item of loose.stream('any', 'thing')) expectTypeOf(item).toEqualTypeOf<unknown>()
await Promise.all([client.close(), loose.close()])
