import { existsSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, FastifyReply } from 'fastify'
import { buildAsyncApi, serverOf } from './asyncapi.js'
import type { Runtime } from './runtime.js'

// `playground: true` serves one page that makes every action and topic of the app tryable from a
// browser (README, "Playground"). Its files ship in the package (playground/ and the client bundle
// dist/browser/client.js): no CDN, so it works offline and behind a strict firewall. The page reads
// the app's AsyncAPI document from its own route, so it needs the `asyncapi` option neither on nor off.

const ASSETS: Record<string, string> = {
  'playground.js': 'text/javascript; charset=utf-8',
  'playground.css': 'text/css; charset=utf-8'
}

// The page and its script run only code of this package; inline scripts and other origins are refused
// even if a name in the app's own document tried to inject markup (the page writes text, never HTML).
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

/** The package's root: the folder of the package.json above this file (lib/ from source, dist/esm/ once built). */
function packageRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json')) || !isOurs(join(dir, 'package.json'))) {
    const up = dirname(dir)
    if (up === dir) throw new Error('fastify-drizzle: playground assets not found (no package.json above lib/)')
    dir = up
  }
  return dir
}

function isOurs (file: string): boolean {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown }).name === 'fastify-drizzle'
  } catch {
    return false
  }
}

export function addPlaygroundRoutes (rt: Runtime, app: FastifyInstance): void {
  const options = rt.options.playground
  if (options === false) return
  const root = packageRoot()
  const base = options.path
  const page = renderPage(readFileSync(join(root, 'playground', 'index.html'), 'utf8'), base, rt.options.path)

  app.get(base, (_request, reply) => { secure(reply).type('text/html; charset=utf-8').send(page) })
  for (const [name, type] of Object.entries(ASSETS)) {
    const file = join(root, 'playground', name)
    app.get(`${base}/${name}`, async (_request, reply) => secure(reply).type(type).send(await readFile(file)))
  }
  let client: Promise<string> | undefined
  app.get(`${base}/client.js`, async (_request, reply) => {
    client ??= clientBundle(root)
    return secure(reply).type(ASSETS['playground.js'] as string).send(await client)
  })
  app.get(`${base}/asyncapi.json`, (request, reply) => {
    secure(reply).type('application/json; charset=utf-8').send(JSON.stringify(buildAsyncApi(rt, serverOf(rt, request))))
  })
}

function secure (reply: FastifyReply): FastifyReply {
  return reply.header('content-security-policy', CSP).header('x-content-type-options', 'nosniff').header('cache-control', 'no-cache')
}

/** The page knows where its assets and the WebSocket route are from two attributes, escaped for HTML. */
function renderPage (template: string, base: string, wsPath: string): string {
  return template.replaceAll('{{base}}', escapeAttribute(base)).replaceAll('{{ws}}', escapeAttribute(wsPath))
}

function escapeAttribute (value: string): string {
  return value.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/**
 * The package's client as one browser module: the built bundle, or, in a source checkout that was
 * never built (the example run with tsx), the client's source bundled once with esbuild, a dev
 * dependency that an installed package never needs.
 */
async function clientBundle (root: string): Promise<string> {
  const built = join(root, 'dist', 'browser', 'client.js')
  if (existsSync(built)) return (await readFile(built, 'utf8')).replace(/\n\/\/# sourceMappingURL=.*\n?$/, '\n')
  const esbuild = 'esbuild'
  const { build } = await import(esbuild) as typeof import('esbuild')
  const result = await build({ entryPoints: [join(root, 'lib', 'client', 'index.ts')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', write: false, logLevel: 'silent' })
  return result.outputFiles[0]?.text ?? ''
}
