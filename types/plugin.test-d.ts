// Type-level tests of the plugin's public surface: compiled with `tsc -p types` (npm run test:types).
// Lines marked @ts-expect-error must fail to compile; the rest must compile.
import Fastify, { type FastifyInstance } from 'fastify'
import Type from 'typebox'
import { expectTypeOf } from 'expect-type'
import drizzle, { action, type ActionContext, type DrizzleConnection, type InferApi, type Message } from '../lib/index.js'

const app = Fastify()
await app.register(drizzle, { path: '/ws', maxPayload: 1024, rateLimit: { max: 10, timeWindow: 1000 }, allowedOrigins: ['https://a.example'] })
// @ts-expect-error unknown option value type
await app.register(drizzle, { maxPayload: '1mb' })
// @ts-expect-error slowConsumer takes 'drop' | 'close'
await app.register(drizzle, { slowConsumer: 'ignore' })

const Todo = Type.Object({ id: Type.Integer(), title: Type.String() })

export const todos = app.drizzle.resource('todos', {
  async list (message, ctx) {
    expectTypeOf(message.resource).toEqualTypeOf<string>()
    expectTypeOf(message.request_id).toEqualTypeOf<string | number>()
    expectTypeOf(ctx).toEqualTypeOf<ActionContext>()
    expectTypeOf(ctx.connection).toEqualTypeOf<DrizzleConnection>()
    expectTypeOf(this).toEqualTypeOf<FastifyInstance>()
    return [{ id: 1, title: 'a' }]
  },
  create: action({
    schema: { data: Type.Object({ title: Type.String() }), reply: Todo },
    preHandler: [async (_message, ctx) => { ctx.log.info('pre') }],
    async handler (message) {
      expectTypeOf(message.data.title).toEqualTypeOf<string>()
      return { id: 1, title: message.data.title }
    }
  }),
  remove: {
    schema: { reply: Type.Object({ removed: Type.Boolean() }) },
    handler: () => ({ removed: true })
  },
  count: (message: Message<{ done: boolean }>): number => message.data.done ? 1 : 0
})

action({
  schema: { reply: Todo },
  // @ts-expect-error the reply must match the reply schema
  handler: () => ({ id: 'x', title: 1 })
})

export const rooms = app.drizzle.topic('rooms/:id', { authorize: (ctx, params) => ctx.request.headers.authorization !== undefined && params.id !== 'x' })
export const news = app.drizzle.topic<'news', { headline: string }>('news')

type Api = InferApi<typeof todos | typeof rooms | typeof news>
expectTypeOf<Api['resources']['todos']['list']['reply']>().toEqualTypeOf<Array<{ id: number, title: string }>>()
expectTypeOf<Api['resources']['todos']['create']['data']>().toEqualTypeOf<{ title: string }>()
expectTypeOf<Api['resources']['todos']['create']['reply']>().toEqualTypeOf<{ id: number, title: string }>()
expectTypeOf<Api['resources']['todos']['remove']['reply']>().toEqualTypeOf<{ removed: boolean }>()
expectTypeOf<Api['resources']['todos']['count']['data']>().toEqualTypeOf<{ done: boolean }>()
expectTypeOf<Api['resources']['todos']['count']['reply']>().toEqualTypeOf<number>()
expectTypeOf<keyof Api['topics']>().toEqualTypeOf<`rooms/${string}` | 'news'>()
expectTypeOf<Api['topics']['news']>().toEqualTypeOf<{ headline: string }>()

app.drizzle.addHook('preHandler', async (message, ctx) => { expectTypeOf(message.action).toEqualTypeOf<string>(); expectTypeOf(ctx.resource).toEqualTypeOf<string>() })
app.drizzle.addHook('preValidation', (_message, _ctx, done) => done())
app.drizzle.addHook('onSend', async (_message, _ctx, payload) => payload)
app.drizzle.addHook('onError', async (_message, _ctx, error) => { expectTypeOf(error).toEqualTypeOf<unknown>() })
app.drizzle.addHook('onConnect', async (connection) => { expectTypeOf(connection.id).toEqualTypeOf<string>() })
app.drizzle.addHook('onSubscribe', async (_connection, topic) => { expectTypeOf(topic).toEqualTypeOf<string>() })
// @ts-expect-error not a hook name
app.drizzle.addHook('onFoo', async () => {})

expectTypeOf(app.drizzle.publish('todos', { id: 1 })).toEqualTypeOf<Promise<void>>()
expectTypeOf(app.drizzle.publish(['a', 'b'], null, { event: 'created' })).toEqualTypeOf<Promise<void>>()
// @ts-expect-error event must be a string
app.drizzle.publish('a', 1, { event: 1 })

// A topic declared without a data type carries unknown data, not {}.
type Untyped = InferApi<typeof rooms>
expectTypeOf<Untyped['topics'][`rooms/${string}`]>().toEqualTypeOf<unknown>()
