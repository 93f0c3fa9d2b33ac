// Type-level tests of the `http` and `asyncapi` options and `app.drizzle.asyncapi()` (docs/http-and-asyncapi.md).
import Fastify from 'fastify'
import { expectTypeOf } from 'expect-type'
import drizzle, { type AsyncApiDocument, type AsyncApiOptions, type DrizzleOptions, type HttpOptions } from '../lib/index.js'

const app = Fastify()
await app.register(drizzle, { http: true, asyncapi: true })
await app.register(drizzle, { http: { prefix: '/api' }, asyncapi: { path: '/docs/asyncapi.json', serverUrl: 'wss://api.example.com', info: { title: 'Todos', version: '1.0.0', description: 'd' } } })
await app.register(drizzle, { http: {}, asyncapi: {} })
// @ts-expect-error http takes a boolean or { prefix }
await app.register(drizzle, { http: 'yes' })
// @ts-expect-error prefix is a string
await app.register(drizzle, { http: { prefix: 1 } })
// @ts-expect-error asyncapi has no such key
await app.register(drizzle, { asyncapi: { url: 'ws://x' } })
// @ts-expect-error info.version is a string
await app.register(drizzle, { asyncapi: { info: { version: 1 } } })

expectTypeOf<DrizzleOptions['http']>().toEqualTypeOf<boolean | HttpOptions | undefined>()
expectTypeOf<DrizzleOptions['asyncapi']>().toEqualTypeOf<boolean | AsyncApiOptions | undefined>()

const doc = app.drizzle.asyncapi()
expectTypeOf(doc).toEqualTypeOf<AsyncApiDocument>()
expectTypeOf(doc.asyncapi).toEqualTypeOf<'3.0.0'>()
expectTypeOf(doc.info.title).toEqualTypeOf<string>()
expectTypeOf(doc.servers).toEqualTypeOf<Record<string, { host: string, protocol: 'ws' | 'wss', pathname?: string, description?: string }>>()
app.drizzle.asyncapi({ serverUrl: 'wss://api.example.com' })
app.drizzle.asyncapi({ serverUrl: new URL('wss://api.example.com') })
// @ts-expect-error serverUrl is a string or a URL
app.drizzle.asyncapi({ serverUrl: 1 })
