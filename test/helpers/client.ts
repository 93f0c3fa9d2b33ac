import type { FastifyInstance } from 'fastify'
import Fastify from 'fastify'
import { once } from 'node:events'
import type { TestContext } from 'node:test'
import WebSocket from 'ws'
import drizzle, { type DrizzleOptions } from '../../lib/index.js'

export type Frame = Record<string, any>

/** A test client over a WebSocket: records every frame and lets tests await frames by predicate. */
export class TestClient {
  readonly frames: Frame[] = []
  readonly raw: string[] = []
  private waiters: Array<{ match: (f: Frame) => boolean, resolve: (f: Frame) => void }> = []
  closeCode: number | undefined
  readonly closed: Promise<number>

  constructor (readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const text = data.toString()
      this.raw.push(text)
      const frame = JSON.parse(text) as Frame
      this.frames.push(frame)
      this.waiters = this.waiters.filter(w => {
        if (!w.match(frame)) return true
        w.resolve(frame)
        return false
      })
    })
    this.closed = new Promise(resolve => ws.once('close', (code: number) => { this.closeCode = code; resolve(code) }))
  }

  send (frame: unknown): void {
    this.ws.send(typeof frame === 'string' || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame))
  }

  /** Resolves with the first frame (already received or future) that matches; fails after `ms`. */
  waitFor (match: (f: Frame) => boolean, ms = 2000): Promise<Frame> {
    const seen = this.frames.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching frame within ${ms} ms; got ${JSON.stringify(this.frames.slice(-5))}`)), ms)
      this.waiters.push({ match, resolve: f => { clearTimeout(timer); resolve(f) } })
    })
  }

  reply (requestId: unknown, ms?: number): Promise<Frame> {
    return this.waitFor(f => f.request_id === requestId && !('topic' in f), ms)
  }

  async request (resource: string, action: string, data?: unknown, requestId: string | number = nextId()): Promise<Frame> {
    this.send(data === undefined ? { resource, action, request_id: requestId } : { resource, action, data, request_id: requestId })
    return this.reply(requestId)
  }

  publications (topic?: string): Frame[] {
    return this.frames.filter(f => 'topic' in f && (topic === undefined || f.topic === topic))
  }

  /** Asserts nothing more arrives for `ms` (used to prove a frame is NOT delivered). */
  async quiet (ms = 100): Promise<number> {
    const before = this.frames.length
    await new Promise(resolve => setTimeout(resolve, ms))
    return this.frames.length - before
  }

  terminate (): void { this.ws.terminate() }
}

let counter = 0
export function nextId (): number { return ++counter }

/** The injected sockets of each app made by build(), terminated before that app closes. */
const injectedSockets = new WeakMap<FastifyInstance, Set<WebSocket>>()

/** Builds an app with the plugin, runs `setup` before ready, and closes it after the test. */
export async function build (t: TestContext, options: DrizzleOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>, fastifyOptions: Record<string, unknown> = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, ...fastifyOptions })
  await app.register(drizzle, { heartbeatInterval: 0, closeGracePeriod: 200, ...options })
  if (setup !== undefined) await setup(app)
  await app.ready()
  const sockets = new Set<WebSocket>()
  injectedSockets.set(app, sockets)
  // The sockets first: node:test runs t.after hooks in the order registered, and an injected socket
  // still open when the app closes holds app.close() for its 1 s close timeout (README: Testing).
  t.after(async () => {
    for (const ws of sockets) ws.terminate()
    await app.close()
  })
  return app
}

/** A client through injectWS (no network); terminated after the test, before build()'s app closes. */
export async function inject (t: TestContext, app: FastifyInstance, headers: Record<string, string> = {}, path = '/ws'): Promise<TestClient> {
  let client: TestClient | undefined
  const ws = await app.injectWS(path, { headers }, { onInit (socket: WebSocket) { client = new TestClient(socket) } } as any)
  client ??= new TestClient(ws)
  injectedSockets.get(app)?.add(ws)
  t.after(() => ws.terminate())
  return client
}

/** A client over a real socket to a listening app; closed after the test. */
export async function connect (t: TestContext, url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
  const ws = new WebSocket(url, options)
  const client = new TestClient(ws)
  t.after(() => ws.terminate())
  await once(ws, 'open')
  return client
}

export async function listen (app: FastifyInstance): Promise<string> {
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  return address.replace('http', 'ws') + '/ws'
}

export const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))
