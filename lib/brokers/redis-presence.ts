import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { JOIN_EVENT, LEAVE_EVENT, type BrokerPresence, type PresenceMember } from './presence.js'
import type { BrokerLogger } from './types.js'

// Presence on Redis (README "Presence", PROTOCOL.md "Presence on Redis"). Keys, under the broker's prefix:
//   $presence:instances          ZSET  instance id -> the time (Redis clock, ms) it is considered dead
//   $presence:members:<topic>    HASH  connection id -> "<instance> <events 0|1><member JSON>"
//   $presence:topics:<instance>  SET   the topics where that instance has members
// Each instance renews its score every ttl/3 (the heartbeat). Readers list only members of instances
// whose score is in the future, so the members of an instance killed without closing vanish from
// presence at most `ttl` after its last heartbeat; the next heartbeat of any live instance then
// removes them and publishes their `$leave`, in the same script, so it happens exactly once. Every
// key also expires 3 ttl after its last renewal: when every instance is gone, nothing stays.
// The scripts run on one standalone Redis (keys are built inside them): not Redis Cluster.

/** Deletes an instance's members, publishing `$leave` for those of topics with events. */
const SWEEP = `
local function sweep (prefix, inst)
  local tkey = prefix .. '$presence:topics:' .. inst
  local head = inst .. ' '
  for _, topic in ipairs(redis.call('SMEMBERS', tkey)) do
    local mkey = prefix .. '$presence:members:' .. topic
    local all = redis.call('HGETALL', mkey)
    for i = 1, #all, 2 do
      local v = all[i + 1]
      if string.sub(v, 1, #head) == head then
        redis.call('HDEL', mkey, all[i])
        if string.sub(v, #head + 1, #head + 1) == '1' then
          redis.call('PUBLISH', prefix .. topic, '{"data":' .. string.sub(v, #head + 2) .. ',"event":"${LEAVE_EVENT}"}')
        end
      end
    end
  end
  redis.call('DEL', tkey)
end
local function now ()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

/** KEYS: members, own topics, channel. ARGV: connection, value, topic, message ('' = none), key ttl. */
const JOIN_SCRIPT = `
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if added == 1 and ARGV[4] ~= '' then redis.call('PUBLISH', KEYS[3], ARGV[4]) end
return added
`

/** KEYS: members, own topics, channel. ARGV: connection, topic, message ('' = none), '1' when the instance's last member of the topic. */
const LEAVE_SCRIPT = `
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[4] == '1' then redis.call('SREM', KEYS[2], ARGV[2]) end
if removed == 1 and ARGV[3] ~= '' then redis.call('PUBLISH', KEYS[3], ARGV[3]) end
return removed
`

/** KEYS: members, instances. Returns the member JSON of the members of live instances. */
const MEMBERS_SCRIPT = SWEEP + `
local ms = now()
local live = {}
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  if sp then
    local inst = string.sub(v, 1, sp - 1)
    local ok = live[inst]
    if ok == nil then
      local score = redis.call('ZSCORE', KEYS[2], inst)
      ok = score ~= false and tonumber(score) >= ms
      live[inst] = ok
    end
    if ok then out[#out + 1] = string.sub(v, sp + 2) end
  end
end
return out
`

/**
 * KEYS: instances, own topics. ARGV: instance, ttl, key ttl, prefix. Renews this instance, sweeps the
 * dead ones. Returns 1 when this instance was not listed (first beat, swept as dead after a pause
 * longer than ttl, or Redis lost its data): its members must then be written again.
 */
const HEARTBEAT_SCRIPT = SWEEP + `
local ms = now()
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('PEXPIRE', ARGV[4] .. '$presence:members:' .. topic, ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
for _, inst in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)) do
  redis.call('ZREM', KEYS[1], inst)
  sweep(ARGV[4], inst)
end
if known == false then return 1 end
return 0
`

/** KEYS: instances. ARGV: instance, prefix. An instance closing: its remaining members leave. */
const DEPART_SCRIPT = SWEEP + `
redis.call('ZREM', KEYS[1], ARGV[1])
sweep(ARGV[2], ARGV[1])
return 1
`

interface Script { source: string, sha: string }

function script (source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') }
}

const SCRIPTS = {
  join: script(JOIN_SCRIPT),
  leave: script(LEAVE_SCRIPT),
  members: script(MEMBERS_SCRIPT),
  heartbeat: script(HEARTBEAT_SCRIPT),
  depart: script(DEPART_SCRIPT)
}

export interface RedisPresenceSettings {
  prefix: string
  /** This broker's id: instance id in Redis and origin of its publications. */
  origin: string
  /** Milliseconds an instance that stopped renewing stays listed. */
  ttl: number
  /** Runs a command on the publishing connection once it is ready, within the command timeout. */
  run: <T>(command: (connection: Redis) => Promise<T>) => Promise<T>
  log: () => BrokerLogger
}

interface LocalMember {
  member: PresenceMember
  events: boolean
  /** Whether its own join command completed; until then a rewrite leaves it to that command. */
  written: boolean
}

/** The Redis side of presence, kept by one RedisBroker (see the key layout above). */
export class RedisPresence implements BrokerPresence {
  /** This instance's members, by topic: what it writes again when Redis lost them. */
  private readonly local = new Map<string, Map<string, LocalMember>>()
  /**
   * Members whose last join or leave failed (Redis away or slow): the next heartbeat that succeeds
   * applies their current state, so a member that left during an outage is no zombie of a live instance.
   */
  private readonly dirty = new Map<string, { topic: string, member: PresenceMember, events: boolean }>()
  /** Per member, the tail of its join/leave commands, so a leave never overtakes its join. */
  private readonly pending = new Map<string, Promise<unknown>>()
  private timer: ReturnType<typeof setInterval> | undefined
  private started: Promise<void> | undefined
  private closed = false

  constructor (private readonly settings: RedisPresenceSettings) {}

  async join (topic: string, member: PresenceMember, announce: boolean): Promise<void> {
    let members = this.local.get(topic)
    if (members === undefined) {
      members = new Map()
      this.local.set(topic, members)
    }
    const local: LocalMember = { member, events: announce, written: false }
    members.set(member.connection, local)
    await this.start()
    try {
      await this.serially(topic, member.connection, () => this.write(topic, member, announce, true))
    } catch (err) {
      this.dirty.set(topic + '\n' + member.connection, { topic, member, events: announce })
      throw err
    } finally {
      // Written, or failed: from now on a rewrite (after Redis is back) takes care of it.
      local.written = true
    }
  }

  async leave (topic: string, member: PresenceMember, announce: boolean): Promise<void> {
    const members = this.local.get(topic)
    if (members === undefined || !members.delete(member.connection)) return
    if (members.size === 0) this.local.delete(topic)
    try {
      await this.serially(topic, member.connection, () => this.remove(topic, member, announce))
    } catch (err) {
      this.dirty.set(topic + '\n' + member.connection, { topic, member, events: announce })
      throw err
    }
  }

  private remove (topic: string, member: PresenceMember, announce: boolean): Promise<unknown> {
    const { prefix } = this.settings
    const message = announce ? this.message(member, LEAVE_EVENT, true) : ''
    const last = this.local.get(topic) === undefined
    return this.settings.run(c => evalScript(c, SCRIPTS.leave,
      [membersKey(prefix, topic), this.topicsKey(), prefix + topic], [member.connection, topic, message, last ? '1' : '0']))
  }

  async members (topic: string): Promise<PresenceMember[]> {
    const { prefix } = this.settings
    const values = await this.settings.run(c => evalScript(c, SCRIPTS.members, [membersKey(prefix, topic), this.instancesKey()], [])) as string[]
    const members: PresenceMember[] = []
    for (const value of values) {
      const member = parseMember(value)
      if (member !== undefined) members.push(member)
    }
    return members
  }

  /** Stops the heartbeat; the members still listed leave (with `$leave` where events are on). */
  async close (): Promise<void> {
    this.closed = true
    clearInterval(this.timer)
    if (this.started === undefined) return
    this.local.clear()
    await this.settings.run(c => evalScript(c, SCRIPTS.depart, [this.instancesKey()], [this.settings.origin, this.settings.prefix]))
      .catch(err => this.settings.log().warn({ broker: 'redis', err }, 'Redis presence: could not remove this instance\'s members at close; they expire'))
  }

  /** The first join starts the heartbeat and waits for its first beat: members of an unlisted instance are invisible. */
  private start (): Promise<void> {
    if (this.started === undefined) {
      this.started = this.beat().catch(() => {})
      const every = Math.max(50, Math.floor(this.settings.ttl / 3))
      this.timer = setInterval(() => { this.beat().catch(() => {}) }, every)
      this.timer.unref()
    }
    return this.started
  }

  private async beat (): Promise<void> {
    if (this.closed) return
    const { prefix, origin, ttl } = this.settings
    try {
      const unknown = await this.settings.run(c => evalScript(c, SCRIPTS.heartbeat, [this.instancesKey(), this.topicsKey()],
        [origin, String(ttl), String(3 * ttl), prefix]))
      if (unknown === 1) await this.rewrite()
      await this.repair()
    } catch (err) {
      this.settings.log().debug({ broker: 'redis', err }, 'Redis presence heartbeat failed; retrying at the next one')
    }
  }

  /**
   * Writes every local member again after Redis lost them (swept after a long pause, or Redis
   * restarted empty). Those missing are announced to every instance, this one included (no origin):
   * their `$leave` may have been published by the sweep.
   */
  private async rewrite (): Promise<void> {
    for (const [topic, members] of this.local) {
      for (const { member, events, written } of members.values()) {
        if (!written) continue
        await this.serially(topic, member.connection, () => this.write(topic, member, events, false))
      }
    }
  }

  /** Applies the current state of the members whose last command failed (see `dirty`). */
  private async repair (): Promise<void> {
    for (const [key, { topic, member, events }] of this.dirty) {
      this.dirty.delete(key)
      const present = this.local.get(topic)?.has(member.connection) === true
      await this.serially(topic, member.connection, () => present ? this.write(topic, member, events, true) : this.remove(topic, member, events))
        .catch(() => { this.dirty.set(key, { topic, member, events }) })
    }
  }

  private write (topic: string, member: PresenceMember, announce: boolean, fromHere: boolean): Promise<unknown> {
    // Left meanwhile: nothing to write.
    if (this.local.get(topic)?.has(member.connection) !== true) return Promise.resolve()
    const { prefix, origin } = this.settings
    const value = `${origin} ${announce ? 1 : 0}${JSON.stringify(member)}`
    const message = announce ? this.message(member, JOIN_EVENT, fromHere) : ''
    return this.settings.run(c => evalScript(c, SCRIPTS.join, [membersKey(prefix, topic), this.topicsKey(), prefix + topic],
      [member.connection, value, topic, message, String(3 * this.settings.ttl)]))
  }

  /** The broker message of a presence event; tagged with our origin when this instance delivers it locally itself. */
  private message (member: PresenceMember, event: string, fromHere: boolean): string {
    return JSON.stringify(fromHere ? { data: member, event, origin: this.settings.origin } : { data: member, event })
  }

  private serially (topic: string, connection: string, op: () => Promise<unknown>): Promise<unknown> {
    const key = topic + '\n' + connection
    const previous = this.pending.get(key) ?? Promise.resolve()
    const next = previous.then(op, op)
    const tail = next.catch(() => {})
    this.pending.set(key, tail)
    tail.then(() => { if (this.pending.get(key) === tail) this.pending.delete(key) })
    return next
  }

  private instancesKey (): string { return this.settings.prefix + '$presence:instances' }
  private topicsKey (): string { return `${this.settings.prefix}$presence:topics:${this.settings.origin}` }
}

function membersKey (prefix: string, topic: string): string {
  return `${prefix}$presence:members:${topic}`
}

/** A member as stored by an instance; anything else found in the hash (written by hand) is skipped. */
function parseMember (json: string): PresenceMember | undefined {
  try {
    const value = JSON.parse(json) as Partial<PresenceMember> | null
    if (value === null || typeof value !== 'object' || typeof value.connection !== 'string') return undefined
    const user = typeof value.user === 'string' ? value.user : null
    return { connection: value.connection, user }
  } catch {
    return undefined
  }
}

/** EVALSHA, and EVAL when Redis does not have the script yet (first use, or after a restart). */
async function evalScript (connection: Redis, { source, sha }: Script, keys: string[], args: string[]): Promise<unknown> {
  try {
    return await connection.evalsha(sha, keys.length, ...keys, ...args)
  } catch (err) {
    if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
    return await connection.eval(source, keys.length, ...keys, ...args)
  }
}
