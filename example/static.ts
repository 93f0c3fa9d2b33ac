// Serves the example's browser page: GET / (index.html), GET /app.js (the page's script) and
// GET /client.js (fastify-drizzle/client as one ES module).
//
// By default /client.js is bundled from the client's SOURCE in memory with esbuild, on every request:
// `npm ci && npm run example` works on a fresh clone (nothing needs `npm run build` first) and an
// edit to the client shows on reload. The entry is the `lib/client` module (a file or a folder with
// an index), bundled for the browser, so a Node-only import that slipped into the client fails here
// with esbuild's message instead of in the page. The browser test passes `clientFile` to serve the
// built bundle (dist/browser/client.js, made by `npm run build`) instead.
// Plain routes over readFile keep the example free of @fastify/static; a real app would use it.
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import type { FastifyInstance, FastifyReply } from 'fastify'

const here = new URL('.', import.meta.url)
const JS = 'text/javascript; charset=utf-8'

export interface StaticOptions {
  /** Serve this built client module as is, instead of bundling the client from source. */
  clientFile?: URL | string
  /** The client's source entry to bundle (a module path esbuild resolves); defaults to lib/client. */
  clientEntry?: string
}

export function registerStatic (app: FastifyInstance, options: StaticOptions = {}): void {
  serveFile(app, '/', new URL('public/index.html', here), 'text/html; charset=utf-8')
  serveFile(app, '/app.js', new URL('public/app.js', here), JS)
  if (options.clientFile !== undefined) serveFile(app, '/client.js', options.clientFile, JS)
  else serveBundle(app, '/client.js', options.clientEntry ?? fileURLToPath(new URL('../lib/client', here)))
}

/** Reads the file on every request, so edits (and rebuilds of the client) show on reload. */
function serveFile (app: FastifyInstance, path: string, file: URL | string, type: string): void {
  app.get(path, async (_request, reply) => {
    let body: Buffer
    try {
      body = await readFile(file)
    } catch {
      return fail(reply, 404, `${path}: file not found`)
    }
    return reply.type(type).header('cache-control', 'no-store').send(body)
  })
}

function serveBundle (app: FastifyInstance, path: string, entry: string): void {
  app.get(path, async (request, reply) => {
    let code: string
    try {
      code = await bundle(entry)
    } catch (err) {
      // The page shows this text in its status line (it fetches it when the import fails).
      request.log.error({ err }, 'could not bundle the client')
      return fail(reply, 500, `${path}: could not bundle ${entry}: ${(err as Error).message}`)
    }
    return reply.type(JS).header('cache-control', 'no-store').send(code)
  })
}

/** One self-contained ES module for browsers; the inline source map points devtools at lib/. */
async function bundle (entry: string): Promise<string> {
  const result = await build({
    stdin: { contents: `export * from ${JSON.stringify(entry)}`, resolveDir: fileURLToPath(here), loader: 'ts', sourcefile: 'client-entry.ts' },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    sourcemap: 'inline',
    logLevel: 'silent'
  })
  const [output] = result.outputFiles
  if (output === undefined) throw new Error('esbuild produced no output')
  return output.text
}

function fail (reply: FastifyReply, status: number, message: string): FastifyReply {
  return reply.code(status).type('text/plain; charset=utf-8').header('cache-control', 'no-store').send(message)
}
