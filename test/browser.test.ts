// The example page in real headless Chromium, served with the BUILT fastify-drizzle/client
// (dist/browser/client.js, the package's client bundled into one file by `npm run build`): an action
// performed from a click, and a publication sent by another client shown live. The page loads the
// built client, so the test proves the built code works in a browser (no Node-only import slipped
// in). test/quickstart.test.ts runs the same page as `npm run example` serves it (bundled from source).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { buildApp, type ExampleApi } from '../example/app.js'
import { DrizzleClient } from '../lib/client/index.js'
import { bundledClient, ensureBuiltClient } from './helpers/built-client.js'
import { chromiumMissing, launchChromium, newPage } from './helpers/chromium.js'

test('example page: a click creates a todo, and a todo created by another client appears live', { skip: chromiumMissing(), timeout: 90_000 }, async t => {
  ensureBuiltClient()
  // The browser is launched (and so closed, t.after hooks running in order) before the app: a page
  // still connected while the app closes would only slow the shutdown down.
  const browser = await launchChromium(t)
  const { app } = await buildApp({ logger: false, page: { clientFile: bundledClient } })
  t.after(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const { page, pageErrors } = await newPage(browser)

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
