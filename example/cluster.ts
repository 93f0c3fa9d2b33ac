// Two instances of the example app on one Redis: `npm run example:cluster`.
// Connect clients to ws://127.0.0.1:3001/ws and ws://127.0.0.1:3002/ws, then run `npm run example:worker`:
// the worker's publication reaches the subscribers of both. Ctrl-C stops both instances.
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const app = fileURLToPath(new URL('./app.ts', import.meta.url))
const ports = (process.env.PORTS ?? '3001,3002').split(',')

const children: ChildProcess[] = ports.map(port => spawn(process.execPath, ['--import', 'tsx', app], {
  env: { ...process.env, PORT: port, DRIZZLE_BROKER: 'redis' },
  stdio: 'inherit'
}))

function stop (): void {
  for (const child of children) child.kill('SIGTERM')
}
process.once('SIGINT', stop)
process.once('SIGTERM', stop)
for (const child of children) child.once('exit', code => { if (code !== 0) stop() })
