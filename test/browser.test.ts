// The example page in real headless Chromium: the built fastify-drizzle/client (dist/browser/client.js,
// the package's client bundled into one file) performs an action from a click, and the page shows a
// publication sent by another client. The page loads the BUILT client, so the test proves the built
// code works in a browser (no Node-only import slipped in). Needs Debian's chromium (apt-get install
// chromium); without it the test is skipped loudly, except in CI where it fails.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import WebSocket from 'ws'
import { chromium, type Browser } from 'playwright-core'
import { buildApp, type ExampleApi } from '../example/app.js'
import { DrizzleClient } from '../lib/client/index.js'
import { ensureBuiltClient } from './helpers/built-client.js'

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync']
function chromiumMissing (): string | undefined {
  if (existsSync(CHROMIUM)) return undefined
  const message = `Chromium not found at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`
  if (process.env.CI !== undefined) throw new Error(message)
  console.warn(`\n*** SKIPPING the browser test: ${message} ***\n`)
  return message
}

test('example page: a click creates a todo, and a todo created by another client appears live', { skip: chromiumMissing(), timeout: 90_000 }, async t => {
  ensureBuiltClient()
  const { app } = await buildApp({ logger: false })
  t.after(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })

  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 })
  t.after(() => browser.close())
  const page = await browser.newPage()
  page.setDefaultTimeout(10_000)
  const pageErrors: string[] = []
  page.on('pageerror', err => pageErrors.push(err.message))
  page.on('console', message => { if (message.type() === 'error') pageErrors.push(message.text()) })

  await page.goto(address + '/')
  await page.waitForSelector('#status[data-state="open"]')

  // An action performed from the page; the list is fed by the "todos" topic.
  await page.fill('#title', 'from the browser')
  await page.click('#add')
  await page.waitForSelector('#todos li:has-text("from the browser")')
  assert.equal(await page.inputValue('#title'), '')

  // Another client, in Node: its action publishes on "todos", and the page shows it.
  const other = new DrizzleClient<ExampleApi>(address.replace('http', 'ws') + '/ws', { WebSocket })
  t.after(() => other.close())
  const created = await other.request('todos', 'create', { title: 'from node' })
  await page.waitForSelector(`#todos li[data-id="${created.id}"]:has-text("from node")`)
  // And a publication straight from the server.
  await app.drizzle.publish('todos', { id: 99, title: 'from the server', done: false })
  await page.waitForSelector('#todos li[data-id="99"]')

  // Server errors reach the page as DrizzleClientError (maxLength 200 in the example's schema).
  await page.fill('#title', 'x'.repeat(201))
  await page.click('#add')
  await page.waitForSelector('#error:has-text("VALIDATION_ERROR")')

  const titles = await page.locator('#todos li').allTextContents()
  assert.deepEqual(titles, ['from the browser', 'from node', 'from the server'])
  assert.deepEqual(pageErrors, [])
})
