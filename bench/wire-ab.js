// Two builds of fastify-drizzle (or a build and bare @fastify/websocket) in one process, each behind a
// real TCP socket on 127.0.0.1, driven in turn by the same lean raw client (pre-masked frames, replies
// counted by their bytes): CPU per request of the whole process, paired round by round. The client
// and the kernel cost the same for both, so the difference between them is the servers'. For A/B of
// the hot path when the machine is too busy for `npm run bench` to agree with itself.
//   node bench/wire-ab.js [libA] [libB|bare] [--conns=100] [--rounds=8] [--ms=1500]
// lib paths are directories of a build (default: node_modules/.cache/fastify-drizzle-bench/, made by
// `node bench/run.js`), relative to bench/.
import net from 'node:net'
import Fastify from 'fastify'

const args = process.argv.slice(2)
const opt = (name, fallback) => Number(args.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const libs = args.filter(a => !a.startsWith('--'))
const A = libs[0] ?? '../node_modules/.cache/fastify-drizzle-bench/'
const B = libs[1] ?? 'bare'
const CONNS = opt('conns', 100)
const ROUNDS = opt('rounds', 8)
const MS = opt('ms', 1500)

async function drizzleApp (lib) {
  const { default: drizzle } = await import(lib + 'index.js')
  const app = Fastify({ logger: false })
  await app.register(drizzle, { rateLimit: false, maxInFlight: 100_000, maxConnections: 100_000 })
  app.drizzle.resource('bench', { async echo (message) { return message.data } })
  return app
}

async function bareApp () {
  const { default: websocket } = await import('@fastify/websocket')
  const app = Fastify({ logger: false })
  await app.register(websocket, { options: { maxPayload: 1024 * 1024, perMessageDeflate: false } })
  const echo = async (data) => data
  app.get('/ws', { websocket: true }, (socket) => {
    socket.on('message', (raw) => {
      let msg
      try { msg = JSON.parse(raw.toString()) } catch { return }
      if (msg === null || typeof msg !== 'object' || typeof msg.resource !== 'string' || typeof msg.action !== 'string' ||
        (typeof msg.request_id !== 'string' && typeof msg.request_id !== 'number')) return
      const id = msg.request_id
      echo(msg.data).then(data => socket.send(JSON.stringify({ data: data ?? null, request_id: id })))
    })
  })
  return app
}

const payload = Buffer.from(JSON.stringify({ resource: 'bench', action: 'echo', data: { id: 12345, name: 'bench-user', tags: ['alpha', 'beta'], active: true }, request_id: 17 }))
const mask = [0x11, 0x22, 0x33, 0x44]
const frame = Buffer.concat([Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff, ...mask]), Buffer.from(payload.map((b, i) => b ^ mask[i & 3]))])
const replyBytes = 4 + JSON.stringify({ data: { id: 12345, name: 'bench-user', tags: ['alpha', 'beta'], active: true }, request_id: 17 }).length - 2 // 7-bit header: 2 bytes

/** Opens CONNS raw WebSocket connections (handshake by hand) that each send a request once the last reply is whole. */
async function clients (port) {
  const socks = await Promise.all(Array.from({ length: CONNS }, () => new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1')
    s.setNoDelay(true)
    s.once('error', reject)
    s.write('GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
    s.once('data', (head) => { if (!head.toString().startsWith('HTTP/1.1 101')) reject(new Error(head.toString())); resolve(s) })
  })))
  const state = { running: false, done: 0 }
  for (const s of socks) {
    let pending = 0
    s.on('data', (chunk) => {
      pending += chunk.length
      while (pending >= replyBytes) {
        pending -= replyBytes
        state.done++
        if (state.running) s.write(frame)
      }
    })
  }
  return { socks, state }
}

async function measure (c) {
  c.state.running = true
  for (const s of c.socks) s.write(frame)
  await new Promise(resolve => setTimeout(resolve, 200))
  const d0 = c.state.done
  const cpu0 = process.cpuUsage()
  await new Promise(resolve => setTimeout(resolve, MS))
  const cpu = process.cpuUsage(cpu0)
  const done = c.state.done - d0
  c.state.running = false
  await new Promise(resolve => setTimeout(resolve, 100))
  return (cpu.user + cpu.system) / done
}

const apps = [await drizzleApp(A), B === 'bare' ? await bareApp() : await drizzleApp(B)]
const conns = []
for (const app of apps) {
  await app.listen({ host: '127.0.0.1', port: 0 })
  conns.push(await clients(app.server.address().port))
}
const ratios = []
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? [0, 1] : [1, 0]
  const us = []
  for (const i of order) us[i] = await measure(conns[i])
  ratios.push(us[0] / us[1])
  console.log(`round ${r}: A ${us[0].toFixed(2)} µs/req  B ${us[1].toFixed(2)} µs/req  A/B ${(us[0] / us[1]).toFixed(3)}`)
}
ratios.sort((x, y) => x - y)
console.log(`A/B median ${ratios[ratios.length >> 1].toFixed(3)} (${ratios[0].toFixed(3)}–${ratios[ratios.length - 1].toFixed(3)})  A=${A} B=${B}`)
for (const c of conns) for (const s of c.socks) s.destroy()
await Promise.all(apps.map(app => app.close()))
