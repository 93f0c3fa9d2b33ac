// The built client, for tests that check what users get rather than the source: the module tree the
// package exports (dist/esm/client/) and the one-file bundle a page loads (dist/browser/client.js).
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = new URL('../../', import.meta.url)
export const builtClientDir = fileURLToPath(new URL('dist/esm/client/', root))
export const bundledClient = fileURLToPath(new URL('dist/browser/client.js', root))
const sources = [
  ...readdirSync(new URL('lib/client/', root)).map(name => fileURLToPath(new URL(`lib/client/${name}`, root))),
  fileURLToPath(new URL('scripts/build.js', root))
]

/**
 * Builds when dist is missing or older than the client's sources: `npm test` builds first, and a
 * test file run alone still checks the current code.
 */
export function ensureBuiltClient (): void {
  if (isFresh()) return
  try {
    execFileSync(process.execPath, ['scripts/build.js'], { cwd: fileURLToPath(root), stdio: 'inherit', timeout: 120_000 })
  } catch (err) {
    // tsc emits even when some other file has a type error (that is the typecheck's job to report):
    // these tests only need the client, so they go on if it was written.
    if (!isFresh()) throw err
    console.warn('build reported errors, but the client was written: testing it')
  }
}

function isFresh (): boolean {
  const built = [bundledClient, builtClientDir + 'index.js']
  if (!built.every(file => existsSync(file))) return false
  const oldest = Math.min(...built.map(file => statSync(file).mtimeMs))
  return sources.every(file => statSync(file).mtimeMs <= oldest)
}
