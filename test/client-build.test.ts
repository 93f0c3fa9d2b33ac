// The built client must load in a browser as is: the module tree the package exports
// (dist/esm/client/) imports nothing but its own files at run time and uses no Node-only global, and
// the one-file bundle (dist/browser/client.js) imports nothing at all.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, relative, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import ts from 'typescript'
import { builtClientDir, bundledClient, ensureBuiltClient } from './helpers/built-client.js'

/** Globals browsers do not have; a built client file that reads one would throw in a page. */
const NODE_ONLY = new Set(['Buffer', 'process', 'require', 'module', 'exports', '__dirname', '__filename', 'global', 'setImmediate', 'clearImmediate'])

/** Every module specifier of a JavaScript file: static imports, re-exports, import() and require(). */
function specifiers (source: string): string[] {
  return ts.preProcessFile(source, true, true).importedFiles.map(file => file.fileName)
}

/** Specifiers that leave `dir` (a file of `file`'s folder may import only its siblings). */
function foreignImports (file: string, source: string, dir: string): string[] {
  return specifiers(source).filter(spec => {
    if (!spec.startsWith('./') && !spec.startsWith('../')) return true
    const target = resolve(dirname(file), spec)
    return relative(dir, target).startsWith('..') || !existsSync(target)
  })
}

/** Node-only globals read by the code, and import(x) calls whose specifier no scan can see. */
function nodeOnlyUses (source: string): string[] {
  const scanner = ts.createScanner(ts.ScriptTarget.Latest, true, ts.LanguageVariant.Standard, source)
  const found: string[] = []
  let previous = ts.SyntaxKind.Unknown
  for (let token = scanner.scan(); token !== ts.SyntaxKind.EndOfFileToken; token = scanner.scan()) {
    // After a dot it is a property (`err.process`), not the global.
    if (token === ts.SyntaxKind.Identifier && previous !== ts.SyntaxKind.DotToken && NODE_ONLY.has(scanner.getTokenText())) found.push(scanner.getTokenText())
    if (token === ts.SyntaxKind.OpenParenToken && previous === ts.SyntaxKind.ImportKeyword) found.push('import()')
    previous = token
  }
  return found
}

test('the scans catch what they look for (so a clean result means something)', () => {
  const dir = resolve('lib/client')
  const file = resolve(dir, 'index.ts')
  assert.deepEqual(foreignImports(file, "import { x } from '../types.js'\nimport y from './errors.ts'\nexport * from 'ws'\nconst z = await import('node:fs')", dir),
    ['../types.js', 'ws', 'node:fs'])
  assert.deepEqual(foreignImports(file, "import type { A } from './nope.js'", dir), ['./nope.js'], 'a sibling that does not exist')
  assert.deepEqual(nodeOnlyUses('const b = Buffer.from(s); process.exitCode = 1; err.process(); import(name)'), ['Buffer', 'process', 'import()'])
  assert.deepEqual(nodeOnlyUses("// process and Buffer in a comment\nconst s = 'Buffer process'"), [])
})

test('dist/esm/client/ imports only its own files and reads no Node-only global', () => {
  ensureBuiltClient()
  const files = readdirSync(builtClientDir).filter(name => name.endsWith('.js'))
  assert.ok(files.includes('index.js'), 'the entry the package exports')
  assert.ok(files.length > 1, 'the client is split into modules')
  let relativeImports = 0
  for (const name of files) {
    const file = resolve(builtClientDir, name)
    const source = readFileSync(file, 'utf8')
    assert.deepEqual(foreignImports(file, source, builtClientDir), [], `${name} imports from outside dist/esm/client/`)
    assert.deepEqual(nodeOnlyUses(source), [], `${name} uses a Node-only global`)
    relativeImports += specifiers(source).length
  }
  assert.ok(relativeImports > 0, 'the entry reaches its modules through relative imports')
})

test('dist/browser/client.js is one module: no imports, the same exports as the package entry', async () => {
  ensureBuiltClient()
  const source = readFileSync(bundledClient, 'utf8')
  assert.deepEqual(specifiers(source), [])
  assert.deepEqual(nodeOnlyUses(source), [])
  const bundle = await import(pathToFileURL(bundledClient).href) as Record<string, unknown>
  const entry = await import(pathToFileURL(resolve(builtClientDir, 'index.js')).href) as Record<string, unknown>
  assert.deepEqual(Object.keys(bundle).sort(), Object.keys(entry).sort())
  assert.deepEqual(Object.keys(bundle).sort(), ['DrizzleClient', 'DrizzleClientError'])
})
