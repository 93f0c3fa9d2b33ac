// The example page in real headless Chromium, served with the BUILT fastify-drizzle/client
// (dist/esm/client.js, exactly what browsers get from the package): an action performed from a click,
// and a publication sent by another client shown live. test/quickstart.test.ts runs the same page as
// `npm run example` serves it (the client bundled from source, no dist/).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { buildApp, type ExampleApi } from '../example/app.js'
import { DrizzleClient } from '../lib/client.js'
import { chromiumMissing, launchChromium, newPage } from './helpers/chromium.js'

const root = new URL('..', import.meta.url)
const builtClient = fileURLToPath(new URL('dist/esm/client.js', root))
const sourceClient = fileURLToPath(new URL('lib/client.ts', root))

/**
 * The page loads the BUILT client, so the test proves the published file works in a browser (no
 * Node-only import slipped in). `npm test` builds first; run alone, the test builds when dist is
 * missing or older than lib/client.ts.
 */
function ensureBuiltClient (): void {
  if (isFresh()) return
  try {
    execFileSync(process.execPath, ['scripts/build.js'], { cwd: fileURLToPath(root), stdio: 'inherit', timeout: 120_000 })
  } catch (err) {
    // tsc emits even when some other file has a type error (that is the typecheck's job to report):
    // the browser test only needs client.js, so it goes on if that was written.
    if (!isFresh()) throw err
    console.warn('build reported errors, but dist/esm/client.js was written: testing it')
  }
}

function isFresh (): boolean {
  return existsSync(builtClient) && statSync(builtClient).mtimeMs >= statSync(sourceClient).mtimeMs
}

test('example page: a click creates a todo, and a todo created by another client appears live', { skip: chromiumMissing(), timeout: 90_000 }, async t => {
  ensureBuiltClient()
  const { app } = await buildApp({ logger: false, page: { clientFile: builtClient } })
  t.after(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })

  const browser = await launchChromium(t)
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
