// Example: a todo list served over REST and WebSocket side by side.
//   npm run example            -> in-memory broker (one process)
//   DRIZZLE_BROKER=redis npm run example -> publications cross processes through Redis
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import Type from 'typebox'
import drizzle, { action, type Broker, type InferApi } from '../lib/index.js'
import { registerStatic, type StaticOptions } from './static.js'

const Todo = Type.Object({ id: Type.Integer(), title: Type.String(), done: Type.Boolean() })
const NewTodo = Type.Object({ title: Type.String({ minLength: 1, maxLength: 200 }) })

export interface ExampleOptions {
  broker?: Broker
  /** Fastify's logger on or off (default on), or a logger instance (tests record what is logged). */
  logger?: boolean | FastifyBaseLogger
  /** Where GET /client.js comes from: bundled from lib/ by default (see static.ts). */
  page?: StaticOptions
}

export async function buildApp (options: ExampleOptions = {}): Promise<{ app: FastifyInstance, api: ReturnType<typeof declare> }> {
  const app: FastifyInstance = typeof options.logger === 'object'
    ? Fastify({ loggerInstance: options.logger })
    : Fastify({ logger: options.logger ?? true })
  // The playground (GET /ws/playground) lets you try every action and topic; never in production.
  await app.register(drizzle, { broker: options.broker, allowedOrigins: localOrigins, playground: process.env.NODE_ENV !== 'production' })
  const api = declare(app)
  registerStatic(app, options.page) // the browser page: GET / (open http://127.0.0.1:3000)
  return { app, api }
}

function declare (app: FastifyInstance) {
  const todos = new Map<number, { id: number, title: string, done: boolean }>()
  let nextId = 1

  // REST routes live beside the resource.
  app.get('/todos', async () => [...todos.values()])

  const resource = app.drizzle.resource('todos', {
    async list () {
      return [...todos.values()]
    },
    create: action({
      schema: { data: NewTodo, reply: Todo },
      async handler (message, ctx) {
        const todo = { id: nextId++, title: message.data.title, done: false }
        todos.set(todo.id, todo)
        await ctx.publish('todos', todo, { event: 'created' })
        return todo
      }
    }),
    async watch (_message, ctx) {
      await ctx.subscribe('todos')
      return { watching: 'todos' }
    },
    // A streaming reply: one frame per todo ({"more": true}), then the count as the final reply.
    async * export () {
      for (const todo of todos.values()) yield todo
      return { count: todos.size }
    }
  })

  // Rooms clients may join themselves, except the private ones; members see who is there.
  const rooms = app.drizzle.topic('rooms/:id', {
    authorize: (_ctx, params) => !String(params.id).startsWith('private-'),
    presence: true
  })
  const todoTopic = app.drizzle.topic<'todos', { id: number, title: string, done: boolean }>('todos')
  return { resource, rooms, todoTopic }
}

export type ExampleApi = InferApi<ReturnType<typeof declare>[keyof ReturnType<typeof declare>]>

/**
 * The plugin lets only same-origin browsers in by default. For local development the example also
 * accepts pages served from any port of this machine (a dev server, a test page); ALLOWED_ORIGINS
 * (comma-separated, or *) replaces that.
 */
function localOrigins (origin: string, request: { headers: Record<string, string | string[] | undefined> }): boolean {
  const allowed = process.env.ALLOWED_ORIGINS
  if (allowed !== undefined) return allowed === '*' || allowed.split(',').includes(origin)
  try {
    const { hostname, host } = new URL(origin)
    return ['localhost', '127.0.0.1', '[::1]'].includes(hostname) || host === request.headers.host
  } catch {
    return false
  }
}

async function brokerFromEnv (): Promise<Broker | undefined> {
  if (process.env.DRIZZLE_BROKER === 'redis') {
    const { redisBroker } = await import('../lib/brokers/redis.js')
    return redisBroker({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' })
  }
  return undefined
}

// Started directly (not imported by a test): listen and close cleanly on SIGTERM/SIGINT.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { app } = await buildApp({ broker: await brokerFromEnv() })
  const port = Number(process.env.PORT ?? 3000)
  await app.listen({ port, host: process.env.HOST ?? '127.0.0.1' })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
  }
}
