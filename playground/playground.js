// The playground page: reads the app's AsyncAPI document, lists its actions and topics, and drives
// them through the package's own client. Everything the server or another client sends is written
// with textContent, never as HTML: names and data are not ours to trust.
import { DrizzleClient } from './client.js'

const MAX_LOG = 500
const MAX_PUBLICATIONS = 200
const MAX_ITEMS = 1000

const $ = (id) => document.getElementById(id)
const base = document.body.dataset.base
const wsUrl = new URL(document.body.dataset.ws, document.location.href)
wsUrl.protocol = document.location.protocol === 'https:' ? 'wss:' : 'ws:'

let doc
const subscriptions = new Map()

// ---- frames in both directions ------------------------------------------------------------------

function logFrame (direction, text) {
  const li = document.createElement('li')
  li.className = direction
  li.textContent = typeof text === 'string' ? text : '(binary frame)'
  const log = $('log')
  log.append(li)
  while (log.childElementCount > MAX_LOG) log.firstElementChild.remove()
  const panel = $('log-panel')
  panel.scrollTop = panel.scrollHeight
}

/** The browser's WebSocket, with every frame sent and received written to the log. */
class LoggedWebSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols)
    this.addEventListener('message', event => logFrame('in', event.data))
  }

  send (data) {
    logFrame('out', data)
    super.send(data)
  }
}

const client = new DrizzleClient(wsUrl.href, { WebSocket: LoggedWebSocket })
const showState = (state, text) => { $('status').dataset.state = state; $('status').textContent = text ?? state }
client.on('open', ({ reconnected }) => showState('open', reconnected ? 'open (reconnected)' : 'open'))
client.on('close', ({ code, reason, reconnecting }) => showState(reconnecting ? 'connecting' : 'closed', `closed ${code}${reason ? ` ${reason}` : ''}${reconnecting ? ', reconnecting…' : ''}`))
client.on('publication', showPublication)

// ---- the document -------------------------------------------------------------------------------

/** Follows a local `$ref` ("#/a/b") through the document. */
function resolve (node) {
  let current = node
  for (let hops = 0; current !== null && typeof current === 'object' && typeof current.$ref === 'string' && hops < 32; hops++) {
    current = current.$ref.slice(2).split('/').map(p => p.replace(/~1/g, '/').replace(/~0/g, '~'))
      .reduce((at, key) => (at !== null && typeof at === 'object' && Object.hasOwn(at, key) ? at[key] : undefined), doc)
  }
  return current
}

function actionsOf () {
  const out = []
  for (const op of Object.values(doc.operations ?? {})) {
    if (op.action !== 'receive') continue
    const payload = resolve(resolve(op.messages?.[0])?.payload)
    const resource = payload?.properties?.resource?.const
    const action = payload?.properties?.action?.const
    if (typeof resource !== 'string' || typeof action !== 'string' || resource.startsWith('$')) continue
    out.push({ resource, action, summary: op.summary ?? '', schema: resolve(payload.properties.data), stream: isStream(op) })
  }
  return out
}

/** A streaming action's reply lists the `more` frames it sends before the final reply. */
function isStream (op) {
  if (op['x-drizzle-stream'] === true) return true
  return (op.reply?.messages ?? []).some(m => resolve(resolve(m)?.payload)?.properties?.more !== undefined)
}

function topicsOf () {
  const out = []
  for (const [key, channel] of Object.entries(doc.channels ?? {})) {
    if (key === 'drizzle' || typeof channel.title !== 'string' || channel.title.startsWith('$')) continue
    const publication = resolve(Object.values(channel.messages ?? {})[0])
    out.push({
      pattern: channel.title,
      summary: channel.description ?? '',
      presence: channel['x-drizzle-presence'] !== undefined && channel['x-drizzle-presence'] !== false,
      schema: resolve(publication?.payload?.properties?.data)
    })
  }
  return out
}

// ---- a JSON value to start from, made from a schema ---------------------------------------------

function sample (schema, depth = 0) {
  const s = resolve(schema)
  if (s === null || typeof s !== 'object' || depth > 8) return null
  if (s.default !== undefined) return s.default
  if (Array.isArray(s.examples) && s.examples.length > 0) return s.examples[0]
  if (s.const !== undefined) return s.const
  if (Array.isArray(s.enum) && s.enum.length > 0) return s.enum[0]
  const variants = s.anyOf ?? s.oneOf
  if (Array.isArray(variants) && variants.length > 0) return sample(variants[0], depth + 1)
  const type = Array.isArray(s.type) ? s.type[0] : s.type
  switch (type) {
    case 'string': return 'text'.padEnd(s.minLength ?? 0, 'x').slice(0, s.maxLength ?? Infinity)
    case 'integer': case 'number': return s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum + 1 : 0)
    case 'boolean': return false
    case 'null': return null
    case 'array': return []
    default: {
      const out = {}
      for (const [name, prop] of Object.entries(s.properties ?? {})) out[name] = sample(prop, depth + 1)
      return out
    }
  }
}

const pretty = (value) => JSON.stringify(value, null, 2)

// ---- the catalog --------------------------------------------------------------------------------

function entry (label, tag, onSelect) {
  const li = document.createElement('li')
  const button = document.createElement('button')
  button.type = 'button'
  button.dataset.name = label
  button.textContent = label
  if (tag !== undefined) {
    const span = document.createElement('span')
    span.className = 'tag'
    span.textContent = tag
    button.append(span)
  }
  button.addEventListener('click', () => {
    for (const b of document.querySelectorAll('nav button[aria-current]')) b.removeAttribute('aria-current')
    button.setAttribute('aria-current', 'true')
    onSelect()
  })
  li.append(button)
  return li
}

function fillCatalog () {
  const actions = actionsOf()
  const topics = topicsOf()
  $('actions').replaceChildren(...actions.map(a => entry(`${a.resource}.${a.action}`, a.stream ? 'stream' : undefined, () => openAction(a))))
  $('topics').replaceChildren(...topics.map(t => entry(t.pattern, t.presence ? 'presence' : undefined, () => openTopic(t))))
  if (actions.length === 0) $('actions').replaceChildren(note('no actions declared'))
  if (topics.length === 0) $('topics').replaceChildren(note('no topics declared'))
}

function note (text) {
  const li = document.createElement('li')
  li.className = 'muted'
  li.textContent = text
  return li
}

function show (panel) {
  $('welcome').hidden = true
  $('action-panel').hidden = panel !== 'action'
  $('topic-panel').hidden = panel !== 'topic'
}

// ---- actions ------------------------------------------------------------------------------------

let current

function openAction (a) {
  current = a
  show('action')
  $('action-title').textContent = `${a.resource}.${a.action}${a.stream ? ' (stream)' : ''}`
  $('action-summary').textContent = a.summary
  $('editor').value = pretty(sample(a.schema) ?? {})
  $('reply').textContent = ''
  $('reply').className = ''
  $('items').replaceChildren()
  $('items').hidden = !a.stream
  $('editor').focus()
}

async function sendAction (event) {
  event.preventDefault()
  const a = current
  let data
  try {
    data = JSON.parse($('editor').value)
  } catch (err) {
    return showReply('error', `Not JSON: ${err.message}`)
  }
  showReply('', a.stream ? 'streaming…' : 'waiting…')
  try {
    if (a.stream) {
      $('items').replaceChildren()
      // next() by hand rather than for await: the final reply is the generator's return value.
      const stream = client.stream(a.resource, a.action, data)
      let step
      while (!(step = await stream.next()).done) addItem(step.value)
      showReply('ok', `stream ended after ${$('items').childElementCount} item(s), final reply:\n${pretty(step.value)}`)
    } else {
      showReply('ok', pretty(await client.request(a.resource, a.action, data)))
    }
  } catch (err) {
    showReply('error', describeFailure(err))
  }
}

function addItem (item) {
  const li = document.createElement('li')
  li.textContent = JSON.stringify(item)
  $('items').append(li)
  while ($('items').childElementCount > MAX_ITEMS) $('items').firstElementChild.remove()
}

function describeFailure (err) {
  const head = err.code === undefined ? err.message : `${err.code}${err.statusCode ? ` (${err.statusCode})` : ''}: ${err.message}`
  const details = Array.isArray(err.details) ? err.details.map(d => `  at ${d.path === '' ? '(data)' : d.path}: ${d.message}`) : []
  return [head, ...details].join('\n')
}

function showReply (kind, text) {
  $('reply').className = kind
  $('reply').textContent = text
}

// ---- topics -------------------------------------------------------------------------------------

function openTopic (t) {
  show('topic')
  $('topic-title').textContent = t.pattern
  $('topic-summary').textContent = t.summary
  $('topic-name').value = t.pattern.split('/').map(s => (s.startsWith(':') ? '1' : s)).join('/')
  $('presence').hidden = !t.presence
  $('members-panel').hidden = true
  $('topic-state').textContent = ''
  $('topic-name').focus()
}

async function subscribe (event) {
  event.preventDefault()
  const name = $('topic-name').value
  if (subscriptions.has(name)) return topicState(`already subscribed to ${name}`)
  const off = client.subscribe(name, () => {})
  subscriptions.set(name, off)
  topicState(`subscribing to ${name}…`)
  try {
    await off.ready
    topicState(`subscribed to ${name}`)
  } catch (err) {
    subscriptions.delete(name)
    topicState(describeFailure(err))
  }
}

function unsubscribe () {
  const name = $('topic-name').value
  const off = subscriptions.get(name)
  if (off === undefined) return topicState(`not subscribed to ${name}`)
  off()
  subscriptions.delete(name)
  topicState(`unsubscribed from ${name}`)
}

async function presence () {
  const name = $('topic-name').value
  try {
    const reply = await client.request('$presence', 'get', { topic: name })
    const members = Array.isArray(reply?.members) ? reply.members : []
    $('members').replaceChildren(...members.map(m => note(`${m.user ?? '(anonymous)'} · ${m.connection}`)))
    if (members.length === 0) $('members').replaceChildren(note('nobody'))
    $('members-panel').hidden = false
    topicState(`${members.length} member(s) in ${name}`)
  } catch (err) {
    topicState(describeFailure(err))
  }
}

function topicState (text) {
  $('topic-state').textContent = text
}

function showPublication (frame) {
  const li = document.createElement('li')
  const head = document.createElement('span')
  head.className = 'event'
  head.textContent = `${frame.topic}${frame.event === undefined ? '' : ` · ${frame.event}`}`
  li.append(head, document.createTextNode(JSON.stringify(frame.data)))
  const list = $('publications')
  list.prepend(li)
  while (list.childElementCount > MAX_PUBLICATIONS) list.lastElementChild.remove()
}

// ---- wiring -------------------------------------------------------------------------------------

$('action-panel').addEventListener('submit', sendAction)
$('editor').addEventListener('keydown', event => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('action-panel').requestSubmit()
})
$('topic-panel').addEventListener('submit', subscribe)
$('unsubscribe').addEventListener('click', unsubscribe)
$('presence').addEventListener('click', presence)
$('clear').addEventListener('click', () => $('log').replaceChildren())

try {
  const response = await fetch(`${base}/asyncapi.json`)
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`)
  doc = await response.json()
  fillCatalog()
  document.title = `${doc.info?.title ?? 'fastify-drizzle'} · playground`
} catch (err) {
  $('actions').replaceChildren(note(`could not read the API document: ${err.message}`))
  $('topics').replaceChildren()
}
