// Summarizes V8 .cpuprofile files (from `node bench/run.js --profile=<impl>`, written to
// bench/profiles/): top functions by self time, and by self time aggregated per file.
//   node bench/profile.js [file.cpuprofile ...] [--top=30]
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { basename, join } from 'node:path'

const args = process.argv.slice(2)
const top = Number(args.find(a => a.startsWith('--top='))?.slice(6) ?? 30)
let files = args.filter(a => !a.startsWith('--'))
if (files.length === 0) {
  const dir = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, 'profiles')
  if (!existsSync(dir)) {
    console.error('no bench/profiles/: run e.g. `node bench/run.js --only=rt --impls=drizzle --profile=drizzle` first')
    process.exit(1)
  }
  files = readdirSync(dir).filter(f => f.endsWith('.cpuprofile')).map(f => join(dir, f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs).slice(0, 1)
}

function shortUrl (url) {
  if (url === '') return ''
  const b = url.indexOf('/fastify-drizzle-bench/')
  if (b !== -1) return 'lib/' + url.slice(b + 23).replace(/\.js$/, '.ts')
  const i = url.indexOf('node_modules/')
  if (i !== -1) return url.slice(i + 13)
  const j = url.indexOf('/dist/esm/')
  if (j !== -1) return 'dist/esm/' + url.slice(j + 10)
  return url.replace(/^file:\/\//, '').replace(/^.*\/work\/[^/]+\//, '')
}

for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8'))
  const byId = new Map(profile.nodes.map(n => [n.id, n]))
  const self = new Map()
  const deltas = profile.timeDeltas
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]
    self.set(id, (self.get(id) ?? 0) + (deltas[i] ?? 0))
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const byFunction = new Map()
  const byFile = new Map()
  for (const [id, us] of self) {
    const { callFrame: f } = byId.get(id)
    const url = shortUrl(f.url)
    const key = `${f.functionName || '(anonymous)'}  ${url}${url ? ':' + (f.lineNumber + 1) : ''}`
    byFunction.set(key, (byFunction.get(key) ?? 0) + us)
    const fileKey = url === '' ? f.functionName : url.split(':')[0]
    byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + us)
  }
  const pct = (us) => (us / total * 100).toFixed(1).padStart(5) + '%'
  console.log(`${basename(file)}: ${(total / 1e6).toFixed(2)} s sampled`)
  console.log('\nTop functions by self time:')
  for (const [key, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us)}  ${key}`)
  console.log('\nSelf time by file:')
  for (const [key, us] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`${pct(us)}  ${key}`)
}
