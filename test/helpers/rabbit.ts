import { spawn, execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import amqplib from 'amqplib'
import type { BrokerSink } from '../../lib/brokers/types.js'
import { recordingLogger, type LogEntry } from './logger.js'

const run = promisify(execFile)

export const RABBIT_URL = 'amqp://guest:guest@127.0.0.1:5672'

/** Whether a RabbitMQ answers at `url` within a couple of seconds. */
export async function rabbitReachable (url = RABBIT_URL): Promise<boolean> {
  try {
    const connection = await amqplib.connect(url, { timeout: 2000 })
    await connection.close()
    return true
  } catch {
    return false
  }
}

/**
 * `skip` value for tests that need the shared RabbitMQ: skipped loudly on a developer machine
 * without one, never in CI, where the tests then fail on their own.
 */
export async function rabbitSkipReason (): Promise<string | false> {
  if (await rabbitReachable()) return false
  if (process.env.CI !== undefined) return false
  const reason = `RabbitMQ is not reachable at ${RABBIT_URL.replace(/:[^:@/]*@/, ':***@')}; start it to run these tests (they fail in CI)`
  console.warn(`\n*** SKIPPING AMQP BROKER TESTS: ${reason} ***\n`)
  return reason
}

let counter = 0

/** An exchange name no other test (or run) uses, so tests never see each other's messages. */
export function uniqueExchange (label: string): string {
  counter += 1
  return `drizzle-test-${label}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`
}

/** Deletes test exchanges (they are durable, so they would pile up on the shared node). */
export async function deleteExchanges (names: string[], url = RABBIT_URL): Promise<void> {
  const connection = await amqplib.connect(url, { timeout: 2000 })
  try {
    const channel = await connection.createChannel()
    for (const name of names) await channel.deleteExchange(name)
  } finally {
    await connection.close()
  }
}

/** Publishes raw bytes the way a foreign (e.g. Python/pika) process would: no origin, plain JSON. */
export async function rawPublish (exchange: string, topic: string, body: string | Buffer, url = RABBIT_URL): Promise<void> {
  const connection = await amqplib.connect(url, { timeout: 2000 })
  try {
    const channel = await connection.createConfirmChannel()
    await channel.assertExchange(exchange, 'direct', { durable: true })
    channel.publish(exchange, topic, typeof body === 'string' ? Buffer.from(body) : body, { contentType: 'application/json' })
    await channel.waitForConfirms()
  } finally {
    await connection.close()
  }
}

export interface Delivery { topic: string, data: unknown, event: string | undefined }

export interface FakeSink extends BrokerSink {
  deliveries: Delivery[]
  entries: LogEntry[]
}

/** Stands in for the plugin: records deliveries and log lines. */
export function fakeSink (): FakeSink {
  const log = recordingLogger()
  const deliveries: Delivery[] = []
  return {
    deliveries,
    entries: log.entries,
    log,
    deliver (topic, data, event) { deliveries.push({ topic, data, event }) }
  }
}

/** Polls `predicate` every 10 ms; fails after `timeout` ms with `what` in the message. */
export async function waitFor (predicate: () => boolean | Promise<boolean>, what: string, timeout = 5000): Promise<void> {
  const deadline = Date.now() + timeout
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeout} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => {
        if (address !== null && typeof address === 'object') resolve(address.port)
        else reject(new Error('no port'))
      })
    })
  })
}

// Debian's /usr/sbin wrappers switch to the rabbitmq user when run as root, which loses our
// environment; the real scripts live in /usr/lib/rabbitmq/bin. Elsewhere (Homebrew, tarballs) the
// scripts on PATH are the real ones.
const DEBIAN_BIN = '/usr/lib/rabbitmq/bin'

function rabbitScript (name: string): string {
  const debian = join(DEBIAN_BIN, name)
  return existsSync(debian) ? debian : name
}

/** Whether this machine can start a private RabbitMQ node (the server scripts are installed). */
export async function canStartPrivateRabbit (): Promise<boolean> {
  if (existsSync(join(DEBIAN_BIN, 'rabbitmq-server'))) return true
  try {
    await run('sh', ['-c', 'command -v rabbitmq-server && command -v rabbitmqctl'])
    return true
  } catch {
    return false
  }
}

export interface PrivateRabbit {
  url: string
  node: string
  /** Starts the node (first time) and waits until it accepts AMQP connections. */
  start (): Promise<void>
  /** `rabbitmqctl stop_app`: the Erlang node stays up, RabbitMQ closes every client connection. */
  stopApp (): Promise<void>
  /** `rabbitmqctl start_app` and wait until AMQP connections work again. */
  startApp (): Promise<void>
  /** Runs `rabbitmqctl -n <node> ...args` and returns its standard output. */
  ctl (...args: string[]): Promise<string>
  /** Stops and halts the node and removes its files. Idempotent. */
  destroy (): Promise<void>
}

/**
 * A RabbitMQ node of our own, so restarting it harms no other test or process. Everything it writes
 * (Mnesia, logs, Erlang cookie via HOME) lives in a temporary directory; it listens on 127.0.0.1 only,
 * on free ports, and registers with the machine's epmd under a unique name.
 */
export async function privateRabbit (): Promise<PrivateRabbit> {
  const dir = await mkdtemp(join(tmpdir(), 'drizzle-rabbit-'))
  const port = await freePort()
  const distPort = await freePort()
  const node = `drizzle-test-${process.pid}@localhost`
  const url = `amqp://guest:guest@127.0.0.1:${port}`
  await writeFile(join(dir, 'rabbitmq.conf'), `listeners.tcp.1 = 127.0.0.1:${port}\n`)
  await writeFile(join(dir, 'rabbitmq-env.conf'), '')
  const env = {
    ...process.env,
    HOME: dir,
    RABBITMQ_NODENAME: node,
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
    RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_PID_FILE: join(dir, 'pid'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}'
  }
  const ctl = async (...args: string[]): Promise<string> => {
    const { stdout } = await run(rabbitScript('rabbitmqctl'), ['-n', node, ...args], { env, timeout: 30_000 })
    return stdout
  }
  const waitForAmqp = () => waitFor(() => rabbitReachable(url), `private RabbitMQ node ${node}`, 40_000)
  let started = false
  let destroyed = false

  return {
    url,
    node,
    ctl,
    async start () {
      started = true
      const server = spawn(rabbitScript('rabbitmq-server'), ['-detached'], { env, cwd: dir, stdio: 'ignore' })
      await new Promise((resolve, reject) => { server.once('exit', resolve); server.once('error', reject) })
      await waitForAmqp()
    },
    async stopApp () { await ctl('stop_app') },
    async startApp () {
      await ctl('start_app')
      await waitForAmqp()
    },
    async destroy () {
      if (destroyed) return
      destroyed = true
      if (started) await ctl('stop').catch(() => killFromPidFile(join(dir, 'pid')))
      await rm(dir, { recursive: true, force: true })
    }
  }
}

async function killFromPidFile (file: string): Promise<void> {
  try {
    const pid = Number((await readFile(file, 'utf8')).trim())
    if (Number.isSafeInteger(pid) && pid > 0) process.kill(pid, 'SIGKILL')
  } catch {}
}
