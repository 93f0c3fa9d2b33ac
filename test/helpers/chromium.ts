import { existsSync } from 'node:fs'
import type { TestContext } from 'node:test'
import { chromium, type Browser, type Page } from 'playwright-core'

// Real headless Chromium for the browser tests: Debian's chromium (apt-get install chromium; .ci/run
// installs it). Without it the tests are skipped loudly, except in CI where they fail.

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync']

/** The reason to skip a browser test, or undefined when Chromium is there (in CI, throws instead). */
export function chromiumMissing (): string | undefined {
  if (existsSync(CHROMIUM)) return undefined
  const message = `Chromium not found at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`
  if (process.env.CI !== undefined) throw new Error(message)
  console.warn(`\n*** SKIPPING the browser test: ${message} ***\n`)
  return message
}

/** A browser closed after the test. */
export async function launchChromium (t: TestContext): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 })
  t.after(() => browser.close())
  return browser
}

/** A new page whose uncaught errors and console errors are collected in the returned array. */
export async function newPage (browser: Browser): Promise<{ page: Page, pageErrors: string[] }> {
  const page = await browser.newPage()
  page.setDefaultTimeout(10_000)
  const pageErrors: string[] = []
  page.on('pageerror', err => pageErrors.push(err.message))
  page.on('console', message => { if (message.type() === 'error') pageErrors.push(message.text()) })
  return { page, pageErrors }
}
