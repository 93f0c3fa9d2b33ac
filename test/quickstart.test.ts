// The README's first command, as a newcomer runs it: `npm run example` in a fresh clone (no dist/,
// nothing built), then the page at / in real headless Chromium. The page must connect and an action
// must work; and when the client script cannot load, the page must say why instead of "connecting…".
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Page } from 'playwright-core'
import { buildApp } from '../example/app.js'
import { chromiumMissing, launchChromium, newPage } from './helpers/chromium.js'
import { freePort } from './helpers/redis.js'

const root = fileURLToPath(new URL('..', import.meta.url))
/** What a clone does not have: installs, builds, coverage, and this checkout's git data. */
const NOT_IN_A_CLONE = new Set(['node_modules', 'dist', 'coverage', '.nyc_output', '.git'])

/**
 * This working tree as a fresh clone after `npm ci`: every file but the ones above, and the installed
 * node_modules linked in (installing again would only test npm). dist/ does not exist there.
 */
async function freshClone (t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'drizzle-clone-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  await cp(root, dir, {
    recursive: true,
    filter: source => {
      const [top = ''] = relative(root, source).split(/[\\/]/)
      return !NOT_IN_A_CLONE.has(top)
    }
  })
  await symlink(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir')
  return dir
}

interface Example { child: ChildProcess, output: () => string }

/**
 * Runs exactly `npm run example` in `cwd` with PORT set, in its own process group (npm, its shell and
 * node), and resolves once Fastify logs that it listens. Stopped after the test with SIGTERM, which
 * the example handles by closing the app.
 */
async function runExample (t: TestContext, cwd: string, port: number): Promise<Example> {
  const child = spawn('npm', ['run', 'example'], {
    cwd,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const exited = once(child, 'exit')
  t.after(() => stopGroup(child, exited))
  const deadline = Date.now() + 60_000
  while (!output.includes('Server listening at')) {
    if (child.exitCode !== null) assert.fail(`npm run example exited with ${child.exitCode} before listening:\n${output}`)
    if (Date.now() > deadline) assert.fail(`npm run example did not listen within 60 s:\n${output}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return { child, output: () => output }
}

async function stopGroup (child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null) return
  signalGroup(child.pid, 'SIGTERM')
  const timer = setTimeout(() => signalGroup(child.pid as number, 'SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

function signalGroup (pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    // The group is gone already.
  }
}

async function statusOf (page: Page): Promise<{ state: string | null, text: string }> {
  const status = page.locator('#status')
  return { state: await status.getAttribute('data-state'), text: (await status.textContent()) ?? '' }
}

test('quick start: `npm run example` in a fresh clone serves a page that connects and works', { skip: chromiumMissing(), timeout: 120_000 }, async t => {
  const clone = await freshClone(t)
  assert.equal(existsSync(join(clone, 'dist')), false, 'the clone has no dist/')
  const port = await freePort()
  const example = await runExample(t, clone, port)
  const address = `http://127.0.0.1:${port}`
  const browser = await launchChromium(t)

  await t.test('the page connects, and a click creates a todo through the client', async () => {
    const { page, pageErrors } = await newPage(browser)
    const clientResponse = page.waitForResponse(`${address}/client.js`)
    await page.goto(`${address}/`)
    assert.equal((await clientResponse).status(), 200)
    await page.waitForSelector('#status[data-state="open"]')
    await page.fill('#title', 'first hour')
    await page.click('#add')
    await page.waitForSelector('#todos li:has-text("first hour")')
    // The REST route beside shows the same todo: the action ran on the server.
    assert.deepEqual(await (await fetch(`${address}/todos`)).json(), [{ id: 1, title: 'first hour', done: false }])
    assert.deepEqual(pageErrors, [])
    await page.close()
  })

  await t.test('a client script that is not there: the page says so, with the status', async () => {
    const { page } = await newPage(browser)
    await page.route('**/client.js', route => route.fulfill({ status: 404, contentType: 'text/plain', body: '/client.js: gone' }))
    await page.goto(`${address}/`)
    await page.waitForSelector('#status[data-state="failed"]')
    assert.deepEqual(await statusOf(page), { state: 'failed', text: 'Could not load the client (/client.js): 404 /client.js: gone' })
    await page.close()
  })

  await t.test('a client script that does not parse: the page says so, with the error', async () => {
    const { page } = await newPage(browser)
    await page.route('**/client.js', route => route.fulfill({ status: 200, contentType: 'text/javascript', body: 'export const = ;' }))
    await page.goto(`${address}/`)
    await page.waitForSelector('#status[data-state="failed"]')
    const { text } = await statusOf(page)
    assert.match(text, /^Could not load the client \(\/client\.js\): \S/)
    assert.doesNotMatch(text, /connecting/)
    await page.close()
  })

  await t.test('a page script that is not there: the page says so', async () => {
    const { page } = await newPage(browser)
    await page.route('**/app.js', route => route.fulfill({ status: 404, contentType: 'text/plain', body: 'gone' }))
    await page.goto(`${address}/`)
    await page.waitForSelector('#status[data-state="failed"]')
    assert.deepEqual(await statusOf(page), { state: 'failed', text: 'Could not load the page script (/app.js)' })
    await page.close()
  })

  assert.equal(existsSync(join(clone, 'dist')), false, 'nothing was built: the page did not need dist/')
  assert.match(example.output(), /"url":"\/client\.js".*\n.*"statusCode":200/, 'the example served the client itself')
})

test('quick start: a client that cannot be bundled reaches the page as the server\'s reason', { skip: chromiumMissing(), timeout: 60_000 }, async t => {
  // A Node-only import in the client's source: esbuild refuses to bundle it for browsers.
  const clientEntry = fileURLToPath(new URL('./fixtures/client-node-import.ts', import.meta.url))
  const { app } = await buildApp({ logger: false, page: { clientEntry } })
  t.after(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const browser = await launchChromium(t)
  const { page } = await newPage(browser)
  await page.goto(`${address}/`)
  await page.waitForSelector('#status[data-state="failed"]')
  const { text } = await statusOf(page)
  assert.match(text, /^Could not load the client \(\/client\.js\): 500 \/client\.js: could not bundle .*client-node-import\.ts: .*node:fs/s)
})
