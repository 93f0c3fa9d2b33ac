// Metrics and traces: `npm run example:observability`, then
//   curl http://127.0.0.1:3000/metrics        (Prometheus text format; drizzle_* beside Node's own)
// and send a frame with a traceparent, e.g. with websocat:
//   {"resource":"todos","action":"create","data":{"title":"milk"},"request_id":1,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
// The spans (todos/create, its publish) are printed to the console. A real app registers
// @opentelemetry/sdk-node with an OTLP exporter instead, the same way: before the server is ready.
import Fastify, { type FastifyInstance } from 'fastify'
import { Registry, collectDefaultMetrics } from 'prom-client'
import drizzle from '../lib/index.js'

/** The app: its own registry (so tests can build it twice), served at GET /metrics. */
export async function buildObservedApp (options: { logger?: boolean } = {}): Promise<{ app: FastifyInstance, registry: Registry }> {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  const app = Fastify({ logger: options.logger ?? true })
  await app.register(drizzle, { metrics: { registry } })
  app.get('/metrics', async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()))
  app.drizzle.resource('todos', {
    async create (message, ctx) {
      await ctx.publish('todos', message.data, { event: 'created' })
      return message.data
    },
    async watch (_message, ctx) {
      await ctx.subscribe('todos')
      return { watching: 'todos' }
    }
  })
  return { app, registry }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  // The SDK first: the plugin looks for one once, when the server becomes ready.
  const { trace } = await import('@opentelemetry/api')
  const { BasicTracerProvider, ConsoleSpanExporter, SimpleSpanProcessor } = await import('@opentelemetry/sdk-trace-base')
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new ConsoleSpanExporter())] }))
  const { app } = await buildObservedApp()
  await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
  }
}
