import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import { Redis } from 'ioredis'

// Shared by the Redis broker tests and the plugin's cross-process tests. Network: 127.0.0.1 only.

export const REDIS_URL = 'redis://127.0.0.1:6379'

export async function waitFor (what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(20)
  }
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

export function canReach (url: string): Promise<boolean> {
  const client = new Redis(url, { lazyConnect: true, retryStrategy: () => null, connectTimeout: 1000, maxRetriesPerRequest: 0, disconnectTimeout: 50 })
  client.on('error', () => {})
  return client.connect().then(() => client.ping()).then(() => true, () => false).finally(() => client.disconnect())
}

export function hasCommand (command: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(command, ['--version'], (err) => resolve(err === null))
  })
}

export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

/** Starts our own redis-server (never the shared one) and resolves when it accepts connections. */
export async function startRedisServer (port: number): Promise<ChildProcess> {
  const server = spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'
  ], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  server.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await waitFor(`redis-server on port ${port}\n${output}`, () => {
    if (server.exitCode !== null) assert.fail(`redis-server exited: ${output}`)
    return output.includes('Ready to accept connections')
  })
  return server
}

export async function killServer (server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return
  const exited = once(server, 'exit')
  server.kill('SIGKILL')
  await exited
}
