// Type-level tests of topic history (README "History and recovery"): compiled with `tsc -p types`.
// Lines marked @ts-expect-error must fail to compile; the rest must compile.
import Fastify from 'fastify'
import { expectTypeOf } from 'expect-type'
import WebSocket from 'ws'
import drizzle, { type InferApi, type Position } from '../lib/index.js'
import { DrizzleClient, type Position as ClientPosition, type Publication, type RecoveryResult, type Unsubscribe } from '../lib/client/index.js'

const app = Fastify()
await app.register(drizzle)
export const rooms = app.drizzle.topic<'rooms/:id', { text: string }>('rooms/:id', { history: { size: 100, ttl: 300_000 } })
app.drizzle.topic('feed', { history: { size: 10 } })
app.drizzle.topic('plain', { history: false })
// @ts-expect-error size is required
app.drizzle.topic('nosize', { history: { ttl: 1000 } })
// @ts-expect-error history is an object or false
app.drizzle.topic('yes', { history: true })

expectTypeOf(app.drizzle.position('rooms/1')).toEqualTypeOf<Promise<Position>>()
app.drizzle.resource('rooms', {
  async load (_message, ctx) {
    const position = await ctx.position('rooms/1')
    expectTypeOf(position).toEqualTypeOf<Position>()
    expectTypeOf(position.offset).toEqualTypeOf<number>()
    expectTypeOf(position.epoch).toEqualTypeOf<string>()
    return { position }
  }
})

type Api = InferApi<typeof rooms>
const client = new DrizzleClient<Api>('ws://127.0.0.1/ws', { WebSocket })
const since: ClientPosition = { offset: 17, epoch: 'e1' }
const stop = client.subscribe('rooms/42', (data, frame) => {
  expectTypeOf(data).toEqualTypeOf<{ text: string }>()
  expectTypeOf(frame).toEqualTypeOf<Publication<{ text: string }>>()
  expectTypeOf(frame.offset).toEqualTypeOf<number | undefined>()
}, {
  since,
  onRecovery (result) {
    expectTypeOf(result).toEqualTypeOf<RecoveryResult>()
    expectTypeOf(result.recovered).toEqualTypeOf<boolean>()
  }
})
expectTypeOf(stop).toEqualTypeOf<Unsubscribe>()
client.subscribe('rooms/42', () => {}, {})
// A server position is a client position.
client.subscribe('rooms/42', () => {}, { since: null as unknown as Position })
// @ts-expect-error since needs an epoch
client.subscribe('rooms/42', () => {}, { since: { offset: 1 } })
// @ts-expect-error the offset is a number
client.subscribe('rooms/42', () => {}, { since: { offset: '1', epoch: 'e1' } })
// @ts-expect-error unknown option
client.subscribe('rooms/42', () => {}, { from: 1 })
