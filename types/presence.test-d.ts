// Type-level tests of presence and users (README "Presence"): compiled with `tsc -p types`.
// Lines marked @ts-expect-error must fail to compile; the rest must compile.
import Fastify from 'fastify'
import { expectTypeOf } from 'expect-type'
import WebSocket from 'ws'
import drizzle, { type DrizzleConnection, type InferApi, type PresenceMember } from '../lib/index.js'
import { DrizzleClient, type PresenceMember as ClientPresenceMember, type Publication } from '../lib/client/index.js'

const app = Fastify()
await app.register(drizzle, { identify: async (request) => request.headers['x-user'] ?? null })
// @ts-expect-error identify is a function of the request
await app.register(drizzle, { identify: 'x-user' })

export const rooms = app.drizzle.topic('rooms/:id', { presence: true })
export const board = app.drizzle.topic('board', { presence: { events: false } })
// @ts-expect-error presence is a boolean or { events?: boolean }
app.drizzle.topic('bad', { presence: 'yes' })
// @ts-expect-error unknown presence option
app.drizzle.topic('bad2', { presence: { event: false } })

expectTypeOf(app.drizzle.presence('rooms/1')).toEqualTypeOf<Promise<PresenceMember[]>>()
expectTypeOf<PresenceMember>().toEqualTypeOf<{ connection: string, user: string | null }>()
expectTypeOf<DrizzleConnection['user']>().toEqualTypeOf<string | null>()
expectTypeOf(app.drizzle.publishToUser('42', { n: 1 }, { event: 'note' })).toEqualTypeOf<Promise<void>>()
app.drizzle.publishToUser(42, 'a number id is fine')
expectTypeOf(app.drizzle.disconnectUser('42', { code: 4001, reason: 'banned' })).toEqualTypeOf<Promise<void>>()
app.drizzle.disconnectUser('42')
// @ts-expect-error the close code is a number
app.drizzle.disconnectUser('42', { code: '4001' })

type Api = InferApi<typeof rooms | typeof board>
const client = new DrizzleClient<Api>('ws://127.0.0.1/ws', { WebSocket })
expectTypeOf(client.presence('rooms/42')).toEqualTypeOf<Promise<ClientPresenceMember[]>>()
client.presence('board', { timeout: 1000 })
// @ts-expect-error not a declared topic
client.presence('lobby')

const sub = client.subscribe('rooms/42', () => {})
const off = sub.on('join', (member, frame) => {
  expectTypeOf(member).toEqualTypeOf<ClientPresenceMember>()
  expectTypeOf(frame).toEqualTypeOf<Publication<ClientPresenceMember>>()
})
expectTypeOf(off).toEqualTypeOf<() => void>()
sub.on('leave', member => { expectTypeOf(member.user).toEqualTypeOf<string | null>() })
// @ts-expect-error only join and leave
sub.on('update', () => {})
// Publications to the user arrive on the `$user` topic.
client.listen('$user', (data, frame) => { expectTypeOf(frame.topic).toEqualTypeOf<string>() })
