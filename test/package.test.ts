// The package as users get it: `npm pack`, then a fresh app in the OS temp dir that installs the
// tarball with the oldest Fastify 5 we support and nothing else a user would have to guess
// (fastify, fastify-drizzle, typebox, typescript, @types/node). The app's own tsc type-checks
// test/fixtures/consumer (strict, skipLibCheck: false) as ESM and as CommonJS, then runs it.
// Needs the npm registry (or npm's cache) and a build in dist/, which `npm test` makes first.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The oldest Fastify 5 the package is tested with, exactly; the peer range in package.json starts here. */
const OLDEST_FASTIFY = '5.0.0'
const root = fileURLToPath(new URL('..', import.meta.url))
const fixture = join(root, 'test/fixtures/consumer')
const pkg = readJson(join(root, 'package.json'))
// npm install may be slow on a cold cache and tsc takes tens of seconds on a loaded 2-core machine.
const INSTALL_TIMEOUT = 240_000
const TSC_TIMEOUT = 400_000
const RUN_TIMEOUT = 30_000

function readJson (file: string): any {
  return JSON.parse(readFileSync(file, 'utf8'))
}

interface Run { code: number, stdout: string, output: string }

/** Runs a command to its end; never throws, so a failure can be reported with everything it printed. */
function run (file: string, args: string[], cwd: string, timeout: number): Promise<Run> {
  return new Promise(resolve => {
    execFile(file, args, { cwd, timeout, env: cleanEnv(), maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      const killed = err?.killed === true ? `\n(killed after ${timeout} ms)` : ''
      resolve({ code, stdout, output: `$ ${file} ${args.join(' ')} (in ${cwd})\n${stdout}${stderr}${killed}` })
    })
  })
}

/**
 * The environment without what `npm test` exported for this repository: npm_config_local_prefix
 * (and the like) would point the temp app's npm at this checkout, and c8's NODE_V8_COVERAGE would
 * record tsc and npm. Where npm finds its cache, registry, certificates and proxies is kept.
 */
function cleanEnv (): NodeJS.ProcessEnv {
  const keep = new Set(['cache', 'cafile', 'registry', 'userconfig', 'globalconfig', 'proxy', 'https_proxy', 'noproxy', 'strict_ssl'])
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    const lower = key.toLowerCase()
    if (key === 'NODE_V8_COVERAGE') continue
    if (lower.startsWith('npm_config_') ? keep.has(lower.slice('npm_config_'.length)) : !lower.startsWith('npm_')) env[key] = value
  }
  return env
}

/** Every file under `dir`, relative to it. */
function walk (dir: string, base = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap(entry => {
    const path = join(dir, entry.name)
    return entry.isDirectory() ? walk(path, base) : [relative(base, path)]
  })
}

/** `npm pack` skips the build here (--ignore-scripts), so a build older than the sources would be tested instead of them. */
function assertFreshBuild (): void {
  const built = ['dist/esm/index.js', 'dist/cjs/index.cjs', 'dist/cjs/index.d.cts'].map(f => join(root, f))
  const missing = built.filter(f => !existsSync(f))
  assert.deepEqual(missing, [], 'no build in dist/: run `npm run build` first (`npm test` does)')
  const builtAt = Math.min(...built.map(f => statSync(f).mtimeMs))
  const sources = [...walk(join(root, 'lib')).map(f => join(root, 'lib', f)), join(root, 'scripts/build.js'), join(root, 'tsconfig.json')]
  const newer = sources.filter(f => statSync(f).mtimeMs > builtAt).map(f => relative(root, f))
  assert.deepEqual(newer, [], 'dist/ is older than these sources: run `npm run build` first')
}

async function pack (destination: string): Promise<{ tarball: string, files: string[] }> {
  const packed = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', destination], root, INSTALL_TIMEOUT)
  assert.equal(packed.code, 0, packed.output)
  const [info] = JSON.parse(packed.stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  assert.ok(info !== undefined, packed.output)
  return { tarball: join(destination, info.filename), files: info.files.map(f => f.path) }
}

test('package.json: fastify is a peer (and dev) dependency only; peers name tested majors; LICENSE and links', () => {
  assert.equal(pkg.dependencies.fastify, undefined)
  assert.equal(pkg.peerDependencies.fastify, `^${OLDEST_FASTIFY}`)
  assert.ok(pkg.devDependencies.fastify)
  for (const peer of ['ioredis', 'amqplib']) {
    const major = readJson(join(root, 'node_modules', peer, 'package.json')).version.split('.')[0]
    assert.match(pkg.peerDependencies[peer], new RegExp(`^\\^${major}\\.\\d+\\.\\d+$`), `${peer}: the peer range is the dev-installed (tested) major`)
  }
  assert.ok(pkg.files.includes('LICENSE'))
  assert.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) 2026 fastify-drizzle contributors\n/)
  assert.match(pkg.repository.url, /github\.com\/fastify-drizzle\/fastify-drizzle/)
  assert.ok(pkg.homepage)
  assert.ok(pkg.bugs.url)
  for (const [subpath, entry] of Object.entries<any>(pkg.exports)) {
    if (typeof entry === 'string') continue
    assert.match(entry.require.types, /\.d\.cts$/, `${subpath}: require must reach CommonJS declarations`)
    assert.match(entry.import.types, /\.d\.ts$/, `${subpath}: import must reach ESM declarations`)
  }
})

test('the packed tarball installs, type-checks and runs in an app with only fastify ' + OLDEST_FASTIFY + ', typebox, typescript and @types/node', { timeout: 1_200_000 }, async t => {
  assertFreshBuild()
  const dir = mkdtempSync(join(tmpdir(), 'fastify-drizzle-consumer-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const { tarball, files } = await pack(dir)

  await t.test('the tarball: LICENSE, no sources, no declaration maps', () => {
    for (const file of ['LICENSE', 'README.md', 'package.json', 'dist/cjs/index.d.cts', 'dist/cjs/client/index.d.cts', 'PROTOCOL.md', 'dist/cjs/brokers/redis.d.cts', 'dist/cjs/brokers/amqp.d.cts']) {
      assert.ok(files.includes(file), `${file} is not in the tarball: ${files.join(', ')}`)
    }
    assert.deepEqual(files.filter(f => f.startsWith('lib/') || f.endsWith('.d.ts.map') || f.startsWith('test/')), [])
  })

  await t.test('arethetypeswrong: no problem for node16 (from CommonJS and from ESM) and bundler', async () => {
    const cli = join(root, 'node_modules/@arethetypeswrong/cli')
    const attw = join(cli, readJson(join(cli, 'package.json')).bin.attw)
    // The node16 profile leaves node10 out: subpaths need `exports`, which node10 resolution ignores (README, Install).
    const checked = await run(process.execPath, [attw, tarball, '--profile', 'node16', '--format', 'ascii', '--no-color'], dir, RUN_TIMEOUT * 2)
    assert.equal(checked.code, 0, checked.output)
  })

  const app = join(dir, 'app')
  cpSync(fixture, app, { recursive: true })
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true }) + '\n')
  const installed = await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--save-exact',
    `fastify@${OLDEST_FASTIFY}`, tarball, `typebox@${pkg.dependencies.typebox}`, `typescript@${pkg.devDependencies.typescript}`, '@types/node@^20'], app, INSTALL_TIMEOUT)
  assert.equal(installed.code, 0, installed.output)

  await t.test('one Fastify, the app\'s own: the package brings no copy of its own', () => {
    const copies = walk(join(app, 'node_modules')).filter(f => /(^|\/)fastify\/package\.json$/.test(f))
    assert.deepEqual(copies, ['fastify/package.json'])
    assert.equal(readJson(join(app, 'node_modules/fastify/package.json')).version, OLDEST_FASTIFY)
  })

  await t.test('the shipped JavaScript never loads fastify at run time', () => {
    const dist = join(app, 'node_modules/fastify-drizzle/dist')
    const loadsFastify = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*)['"]fastify['"]/
    const offenders = walk(dist).filter(f => /\.(c|m)?js$/.test(f) && loadsFastify.test(readFileSync(join(dist, f), 'utf8')))
    assert.deepEqual(offenders, [])
  })

  await t.test('source maps carry their sources (lib/ is not shipped)', () => {
    const dist = join(app, 'node_modules/fastify-drizzle/dist')
    const maps = walk(dist).filter(f => f.endsWith('.js.map'))
    assert.ok(maps.length > 0)
    const bare = maps.filter(f => {
      const map = JSON.parse(readFileSync(join(dist, f), 'utf8'))
      return !Array.isArray(map.sourcesContent) || map.sourcesContent.length !== map.sources.length
    })
    assert.deepEqual(bare, [])
  })

  // One program per module kind, as an app is one or the other (a program importing the package both
  // ways loads both copies of the declarations). Both type-checks start now and run side by side.
  const tsc = join(app, 'node_modules/typescript/bin/tsc')
  const kinds = [['ESM', 'app.mts', 'build/app.mjs'], ['CommonJS', 'app.cts', 'build/app.cjs']] as const
  const checks = kinds.map(([kind, source]) => {
    const project = `tsconfig.${kind.toLowerCase()}.json`
    writeFileSync(join(app, project), JSON.stringify({ extends: './tsconfig.json', files: [source] }) + '\n')
    return run(process.execPath, [tsc, '-p', project, '--pretty', 'false'], app, TSC_TIMEOUT)
  })
  for (const [i, [kind, source, output]] of kinds.entries()) {
    await t.test(`${kind} (${source}, nodenext): tsc --strict with skipLibCheck false, then it runs`, async () => {
      const checked = await checks[i]
      assert.ok(checked !== undefined)
      assert.equal(checked.code, 0, checked.output)
      const ran = await run(process.execPath, [output], app, RUN_TIMEOUT)
      assert.equal(ran.code, 0, ran.output)
      assert.match(ran.output, new RegExp(`consumer ${kind === 'ESM' ? 'esm' : 'cjs'}: ok`))
    })
  }
})
