import { test } from 'node:test'
import assert from 'node:assert/strict'
import { fileURLToPath } from 'node:url'
import WebSocket from 'ws'
import { buildApp } from '../example/app.js'
import { connect, listen } from './helpers/client.js'
import { recordingLogger, type LogEntry } from './helpers/logger.js'

// The example is what the README's quick start runs: it must keep working, black-box.

async function example (t: import('node:test').TestContext) {
  const { app } = await buildApp({ logger: false })
  t.after(() => app.close())
  return { app, url: await listen(app) }
}

function upgradeStatus (url: string, origin: string): Promise<number> {
  return new Promise(resolve => {
    const ws = new WebSocket(url, { origin })
    ws.on('open', () => { ws.terminate(); resolve(101) })
    ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); ws.terminate() })
    ws.on('error', () => {})
  })
}

test('the example serves todos over WebSocket and REST, and publishes creations', async t => {
  const { app, url } = await example(t)
  const watcher = await connect(t, url)
  const creator = await connect(t, url)
  assert.deepEqual((await watcher.request('todos', 'watch')).data, { watching: 'todos' })
  const created = await creator.request('todos', 'create', { title: 'milk' })
  assert.deepEqual(created.data, { id: 1, title: 'milk', done: false })
  assert.deepEqual(await watcher.waitFor(f => f.topic === 'todos'), { topic: 'todos', data: created.data, event: 'created' })
  assert.deepEqual((await creator.request('todos', 'list')).data, [created.data])
  assert.deepEqual((await app.inject('/todos')).json(), [created.data])
  assert.equal((await creator.request('todos', 'create', { title: '' })).code, 'VALIDATION_ERROR')
  assert.equal((await creator.request('$topic', 'subscribe', { topic: 'rooms/private-1' })).code, 'FORBIDDEN')
  assert.equal((await creator.request('$topic', 'subscribe', { topic: 'rooms/lobby' })).data.subscribed, true)
})

test('the example lets local development pages in and refuses foreign origins', async t => {
  const { url } = await example(t)
  const port = new URL(url).port
  assert.equal(await upgradeStatus(url, 'http://localhost:5173'), 101)
  assert.equal(await upgradeStatus(url, `http://127.0.0.1:${port}`), 101)
  assert.equal(await upgradeStatus(url, 'https://evil.example'), 403)
  assert.equal(await upgradeStatus(url, 'null'), 403)
})

test('the example bundles the client from its source for the page, and says why when it cannot', async t => {
  const { app } = await buildApp({ logger: false })
  t.after(() => app.close())
  const served = await app.inject('/client.js')
  assert.equal(served.statusCode, 200)
  assert.equal(served.headers['content-type'], 'text/javascript; charset=utf-8')
  // One ES module bundled from lib/ (no dist/ involved), exporting the client, with its source map.
  assert.match(served.body, /^\/\/ lib\/client/m)
  assert.match(served.body, /export \{[^}]*\bDrizzleClient\b[^}]*\}/)
  assert.match(served.body, /sourceMappingURL=data:application\/json;base64,/)

  const logs: LogEntry[] = []
  const clientEntry = fileURLToPath(new URL('./fixtures/client-node-import.ts', import.meta.url))
  const broken = await buildApp({ logger: recordingLogger(logs), page: { clientEntry } })
  t.after(() => broken.app.close())
  const refused = await broken.app.inject('/client.js')
  assert.equal(refused.statusCode, 500)
  assert.equal(refused.headers['content-type'], 'text/plain; charset=utf-8')
  assert.match(refused.body, /^\/client\.js: could not bundle .*client-node-import\.ts: .*"node:fs"/s)
  // Logged once, with esbuild's error, for the developer's terminal.
  const logged = logs.filter(entry => entry.msg === 'could not bundle the client')
  assert.equal(logged.length, 1)
  assert.equal(logged[0]?.level, 'error')
  assert.match(String((logged[0]?.obj.err as Error | undefined)?.message), /node:fs/)
})
