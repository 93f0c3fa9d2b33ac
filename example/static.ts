// Serves the example's browser page: GET / (index.html), GET /app.js (the page's script) and
// GET /client.js (fastify-drizzle/client as `npm run build` bundles it into dist/browser/client.js, one
// self-contained ES module: lib/client/ imports nothing at runtime, so the page needs no import map).
// Plain routes over readFile keep the example free of @fastify/static; a real app would use it.
import { readFile } from 'node:fs/promises'
import type { FastifyInstance } from 'fastify'

const here = new URL('.', import.meta.url)

export interface StaticOptions {
  /** The built client module; defaults to dist/browser/client.js of this package. */
  clientFile?: URL | string
}

export function registerStatic (app: FastifyInstance, options: StaticOptions = {}): void {
  const clientFile = options.clientFile ?? new URL('../dist/browser/client.js', here)
  serveFile(app, '/', new URL('public/index.html', here), 'text/html; charset=utf-8')
  serveFile(app, '/app.js', new URL('public/app.js', here), 'text/javascript; charset=utf-8')
  serveFile(app, '/client.js', clientFile, 'text/javascript; charset=utf-8', 'run `npm run build` first: the page loads the built client')
}

/** Reads the file on every request, so edits (and rebuilds of the client) show on reload. */
function serveFile (app: FastifyInstance, path: string, file: URL | string, type: string, missing = 'file not found'): void {
  app.get(path, async (_request, reply) => {
    let body: Buffer
    try {
      body = await readFile(file)
    } catch {
      return reply.code(404).type('text/plain; charset=utf-8').send(`${path}: ${missing}`)
    }
    return reply.type(type).header('cache-control', 'no-store').send(body)
  })
}
