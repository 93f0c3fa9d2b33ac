import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { buildApp } from '../example/app.js'
import { connect, listen } from './helpers/client.js'

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
