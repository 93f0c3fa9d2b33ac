// The README's Testing recipe, run as part of the suite. The README shows the region between the
// markers below verbatim, except that it imports the client as 'fastify-drizzle/client' where this
// file imports '../lib/client/index.js'; the last test checks that it does. Each test's teardown (what it
// registers with t.after) is timed from outside the region and must take under 200 ms.
import { beforeEach, type TestContext } from 'node:test'
import { readFileSync } from 'node:fs'

// #region testing-recipe
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { DrizzleClient } from '../lib/client/index.js'
import { buildApp, type ExampleApi } from '../example/app.js'

test('todos.create replies, typed, and a watcher gets the publication', async (t) => {
  const { app } = await buildApp({ logger: false })      // your app factory: plugin and resources
  await app.ready()
  const client = new DrizzleClient<ExampleApi>(() => app.injectWS('/ws'))   // no network
  // One hook, the client first: an open socket would hold app.close() for its close timeout.
  t.after(async () => { await client.close(); await app.close() })

  const published = new Promise((resolve) => client.listen('todos', resolve))
  await client.request('todos', 'watch')
  const todo = await client.request('todos', 'create', { title: 'milk' })   // typed from the schemas
  assert.deepEqual(todo, { id: 1, title: 'milk', done: false })
  assert.deepEqual(await published, todo)
})

test('the wire protocol by hand: one frame in, one frame out', async (t) => {
  const { app } = await buildApp({ logger: false })
  await app.ready()
  const frames: unknown[] = []
  const ws = await app.injectWS('/ws', {}, {
    onInit (socket) { socket.on('message', (raw) => frames.push(JSON.parse(String(raw)))) }   // before any frame
  })
  t.after(async () => { ws.terminate(); await app.close() })   // terminate, not close: see below

  ws.send(JSON.stringify({ resource: 'todos', action: 'create', data: { title: 'milk' }, request_id: 1 }))
  await once(ws, 'message')
  assert.deepEqual(frames, [{ data: { id: 1, title: 'milk', done: false }, request_id: 1 }])
})
// #endregion testing-recipe

const TEARDOWN_LIMIT_MS = 200

// A file-level beforeEach runs for tests, never suites: its context is the test's own TestContext.
beforeEach(context => timeTeardown(context as TestContext))

/** Times every hook the test registers with t.after; a slow one fails that test. */
function timeTeardown (t: TestContext): void {
  const register = t.after.bind(t)
  t.after = (fn, options) => register(async function timed (this: unknown, ...args) {
    const started = performance.now()
    await fn?.apply(this, args)
    const ms = performance.now() - started
    assert.ok(ms < TEARDOWN_LIMIT_MS, `teardown of "${t.name}" took ${ms.toFixed(1)} ms (limit ${TEARDOWN_LIMIT_MS} ms)`)
  }, options)
}

test('the README\'s Testing section shows the recipe above, as it is run here', () => {
  const source = readFileSync(new URL(import.meta.url), 'utf8')
  const region = /\/\/ #region testing-recipe\n([\s\S]*?)\/\/ #endregion testing-recipe\n/.exec(source)?.[1]
  assert.ok(region !== undefined, 'the region markers are in this file')
  const shown = region.replaceAll("from '../lib/client/index.js'", "from 'fastify-drizzle/client'")

  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const section = /\n## Testing\n([\s\S]*?)\n## /.exec(readme)?.[1]
  assert.ok(section !== undefined, 'the README has a Testing section')
  const block = /```ts\n([\s\S]*?)```\n/.exec(section)?.[1]
  assert.equal(block, shown, 'the first ts block of the README\'s Testing section is the recipe (copy the region over)')
})
