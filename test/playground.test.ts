// The playground page (option `playground`): its routes, headers and option checks through inject,
// its size, and the page itself in real headless Chromium on the example app, with a screenshot of
// every step written to a folder the test names.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import Fastify, { type FastifyInstance } from 'fastify'
import Type from 'typebox'
import WebSocket from 'ws'
import drizzle, { action } from '../lib/index.js'
import { buildApp, type ExampleApi } from '../example/app.js'
import { DrizzleClient } from '../lib/client/index.js'
import { bundledClient, ensureBuiltClient } from './helpers/built-client.js'
import { chromiumMissing, launchChromium, newPage } from './helpers/chromium.js'

async function appWith (options: Record<string, unknown>): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  await app.register(drizzle, options)
  app.drizzle.resource('notes', {
    add: action({ schema: { data: Type.Object({ text: Type.String({ minLength: 3 }) }) }, handler: async (m) => m.data })
  })
  app.drizzle.topic('notes/:id')
  return app
}

async function withEnv<T> (name: string, value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const before = process.env[name]
  if (value === undefined) delete process.env[name]
  else process.env[name] = value
  try {
    return await fn()
  } finally {
    if (before === undefined) delete process.env[name]
    else process.env[name] = before
  }
}

test('off by default: no page, no assets', async t => {
  const app = await appWith({})
  t.after(() => app.close())
  for (const url of ['/ws/playground', '/ws/playground/playground.js', '/ws/playground/client.js', '/ws/playground/asyncapi.json']) {
    assert.equal((await app.inject(url)).statusCode, 404, url)
  }
})

test('playground: true serves the page, its assets, the client and the document, with a strict CSP', async t => {
  const app = await appWith({ playground: true })
  t.after(() => app.close())
  const page = await app.inject('/ws/playground')
  assert.equal(page.statusCode, 200)
  assert.match(page.headers['content-type'] as string, /^text\/html/)
  const csp = page.headers['content-security-policy'] as string
  assert.match(csp, /default-src 'none'/)
  assert.match(csp, /script-src 'self'/)
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/)
  assert.equal(page.headers['x-content-type-options'], 'nosniff')
  assert.match(page.body, /data-ws="\/ws"/)
  assert.match(page.body, /src="\/ws\/playground\/playground.js"/)
  assert.doesNotMatch(page.body, /\{\{|https?:\/\//, 'no placeholder left, nothing loaded from another origin')

  const script = await app.inject('/ws/playground/playground.js')
  assert.equal(script.statusCode, 200)
  assert.match(script.headers['content-type'] as string, /^text\/javascript/)
  assert.match(script.body, /from '\.\/client\.js'/)
  const css = await app.inject('/ws/playground/playground.css')
  assert.match(css.headers['content-type'] as string, /^text\/css/)
  assert.match(css.body, /prefers-color-scheme: dark/)

  const client = await app.inject('/ws/playground/client.js')
  assert.equal(client.statusCode, 200)
  assert.match(client.body, /export \{[^}]*\bDrizzleClient\b/)
  assert.doesNotMatch(client.body, /^\s*import\s/m, 'one self-contained module')

  const doc = (await app.inject('/ws/playground/asyncapi.json')).json()
  assert.equal(doc.asyncapi, '3.0.0')
  assert.ok(Object.values(doc.operations).some((op: any) => op.title === 'notes.add'))
  assert.ok(Object.values(doc.channels).some((c: any) => c.title === 'notes/:id'))
  // The document route of the `asyncapi` option stays off: the page has its own.
  assert.equal((await app.inject('/ws/asyncapi.json')).statusCode, 404)
})

test('every asset together stays under 100 KB gzipped', async t => {
  ensureBuiltClient()
  const app = await appWith({ playground: true })
  t.after(() => app.close())
  let total = 0
  for (const url of ['/ws/playground', '/ws/playground/playground.js', '/ws/playground/playground.css', '/ws/playground/client.js']) {
    const res = await app.inject(url)
    assert.equal(res.statusCode, 200, url)
    total += gzipSync(res.rawPayload).length
  }
  t.diagnostic(`playground assets: ${total} bytes gzipped`)
  assert.ok(total < 100 * 1024, `${total} bytes gzipped`)
})

test('a custom path, and the WebSocket path written into the page escaped for HTML', async t => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(drizzle, { path: '/live"<x>', playground: { path: '/try/' } })
  const page = await app.inject('/try')
  assert.equal(page.statusCode, 200)
  assert.match(page.body, /data-ws="\/live&quot;&lt;x&gt;"/)
  assert.doesNotMatch(page.body, /"<x>/)
  assert.equal((await app.inject('/try/playground.css')).statusCode, 200)
  assert.equal((await app.inject('/live"<x>/playground')).statusCode, 404)
})

test('invalid playground options are refused at registration, saying what was given', async () => {
  const cases: Array<[unknown, RegExp]> = [
    ['yes', /Invalid option "playground": expected a boolean or \{ path\?.*received a string \("yes"\)/],
    [{ open: true }, /unknown key "open"/],
    [{ production: 'yes' }, /Invalid option "playground.production": expected a boolean, received a string \("yes"\)/],
    [{ path: 'nope' }, /Invalid option "playground.path"/],
    [{ path: '/' }, /Invalid option "playground.path"/],
    [null, /Invalid option "playground"/]
  ]
  for (const [value, message] of cases) {
    const app = Fastify({ logger: false })
    await assert.rejects(async () => { await app.register(drizzle, { playground: value as never }) },
      (err: any) => err.code === 'FST_DRIZZLE_INVALID_OPTION' && message.test(err.message), JSON.stringify(value))
    await app.close()
  }
})

test('NODE_ENV=production refuses playground: true unless { production: true } is given', async () => {
  await withEnv('NODE_ENV', 'production', async () => {
    const refused = Fastify({ logger: false })
    await assert.rejects(async () => { await refused.register(drizzle, { playground: true }) },
      (err: any) => err.code === 'FST_DRIZZLE_INVALID_OPTION' && /NODE_ENV is "production"/.test(err.message))
    await refused.close()
    const off = await appWith({ playground: false })
    assert.equal((await off.inject('/ws/playground')).statusCode, 404)
    await off.close()
    const asked = await appWith({ playground: { production: true } })
    assert.equal((await asked.inject('/ws/playground')).statusCode, 200)
    await asked.close()
  })
})

test('the page in Chromium on the example app: catalog, an action, a publication from another client, a validation error', { skip: chromiumMissing(), timeout: 90_000 }, async t => {
  ensureBuiltClient()
  const shots = process.env.PLAYGROUND_SCREENSHOTS ?? join(tmpdir(), 'fastify-drizzle-playground')
  mkdirSync(shots, { recursive: true })
  t.diagnostic(`screenshots in ${shots}`)
  const browser = await launchChromium(t)
  const { app } = await buildApp({ logger: false, page: { clientFile: bundledClient } })
  t.after(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const { page, pageErrors } = await newPage(browser)
  await page.setViewportSize({ width: 1280, height: 720 })
  const shot = (name: string) => page.screenshot({ path: join(shots, `${name}.png`) })

  const started = Date.now()
  await page.goto(address + '/ws/playground')
  await page.waitForSelector('#status[data-state="open"]')
  await page.waitForSelector('#actions button[data-name="todos.create"]')
  const loadMs = Date.now() - started
  t.diagnostic(`page loaded, catalog filled and socket open in ${loadMs} ms`)
  const names = (list: string) => page.locator(`${list} button`).evaluateAll(buttons => buttons.map(b => (b as HTMLElement).dataset.name))
  assert.deepEqual(await names('#actions'), ['todos.list', 'todos.create', 'todos.watch', 'todos.export'])
  assert.equal(await page.textContent('#actions button[data-name="todos.export"] .tag'), 'stream')
  const topics = await names('#topics') as string[]
  assert.ok(topics.includes('rooms/:id') && topics.includes('todos'), topics.join(', '))
  await shot('1-catalog')

  // Keyboard only: Tab past the skip link to the first action, Enter opens it with the editor focused,
  // Ctrl+Enter sends.
  await page.keyboard.press('Tab')
  await page.keyboard.press('Tab')
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'todos.list')
  await page.keyboard.press('Enter')
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'editor')
  await page.keyboard.press('Control+Enter')
  await page.waitForSelector('#reply.ok')
  assert.deepEqual(JSON.parse(await page.textContent('#reply') as string), [])

  // An action from the editor, prefilled from the schema.
  await page.click('#actions button[data-name="todos.create"]')
  assert.deepEqual(JSON.parse(await page.inputValue('#editor')), { title: 'text' })
  await page.fill('#editor', '{"title": "from the playground"}')
  await page.focus('#editor')
  await page.keyboard.press('Control+Enter')
  await page.waitForSelector('#reply.ok:has-text("from the playground")')
  assert.deepEqual(JSON.parse(await page.textContent('#reply') as string), { id: 1, title: 'from the playground', done: false })
  assert.ok(await page.locator('#log li.out:has-text("\\"action\\":\\"create\\"")').count() >= 1, 'the request frame is logged')
  await shot('2-action-reply')

  // A validation error shows its code and its path.
  await page.fill('#editor', '{"title": ""}')
  await page.click('#send')
  await page.waitForSelector('#reply.error:has-text("VALIDATION_ERROR")')
  assert.match(await page.textContent('#reply') as string, /at \/data\/title: must not have fewer than 1 characters/)
  await shot('3-validation-error')

  // A topic: subscribe, then another client's action publishes on it.
  await page.click('#topics button[data-name="todos"]')
  assert.equal(await page.inputValue('#topic-name'), 'todos')
  await page.click('#subscribe')
  await page.waitForSelector('#topic-state:has-text("subscribed to todos")')
  const other = new DrizzleClient<ExampleApi>(address.replace('http', 'ws') + '/ws', { WebSocket })
  t.after(() => other.close())
  await other.request('todos', 'create', { title: 'from another client' })
  await page.waitForSelector('#publications li:has-text("from another client")')
  assert.match(await page.locator('#publications li').first().textContent() as string, /^todos · created/)
  await shot('4-publication')

  // A stream shows its items as they come, then how it ended.
  await page.click('#actions button[data-name="todos.export"]')
  await page.click('#send')
  await page.waitForSelector('#reply.ok:has-text("stream ended after 2 item(s)")')
  assert.deepEqual((await page.locator('#items li').allTextContents()).map(text => JSON.parse(text).title), ['from the playground', 'from another client'])
  await shot('5-stream')

  // A refused subscription says why.
  await page.click('#topics button[data-name="rooms/:id"]')
  await page.fill('#topic-name', 'rooms/private-1')
  await page.click('#subscribe')
  await page.waitForSelector('#topic-state:has-text("FORBIDDEN")')
  await shot('6-forbidden')

  // Presence: the page and another client in the same room; the page lists both members.
  await page.fill('#topic-name', 'rooms/1')
  await page.click('#subscribe')
  await page.waitForSelector('#topic-state:has-text("subscribed to rooms/1")')
  const joined = other.subscribe('rooms/1', () => {})
  await joined.ready
  assert.equal(await page.isVisible('#presence'), true, 'a presence topic offers the Presence button')
  await page.click('#presence')
  await page.waitForSelector('#topic-state:has-text("2 member(s) in rooms/1")')
  assert.equal(await page.locator('#members li').count(), 2)
  await page.waitForSelector('#publications li:has-text("rooms/1 · $join")')
  await shot('7-presence')

  // Readable in a dark color scheme too (the page follows prefers-color-scheme).
  await page.emulateMedia({ colorScheme: 'dark' })
  const colors = await page.evaluate(() => [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color])
  assert.deepEqual(colors, ['rgb(23, 25, 28)', 'rgb(230, 231, 232)'])
  await shot('8-dark')

  assert.deepEqual(pageErrors, [])
})
