// The example page: performs todos.create through fastify-drizzle/client and shows every todo
// published on the "todos" topic, whoever created it (this page, another tab, a REST call, a job).

const $ = id => document.getElementById(id)
const list = $('todos')
const status = $('status')
const errorLine = $('error')
const shown = new Set()

function setStatus (state, text) {
  status.dataset.state = state
  status.textContent = text
}

// Loaded with import() rather than a static import: if /client.js cannot load (not served, a
// syntax error, a failed bundle) the page says why instead of staying on "connecting…" forever.
const DrizzleClient = await loadClient('/client.js')

async function loadClient (url) {
  try {
    const { DrizzleClient } = await import(url)
    if (typeof DrizzleClient !== 'function') throw new TypeError(`${url} does not export DrizzleClient`)
    return DrizzleClient
  } catch (err) {
    setStatus('failed', `Could not load the client (${url}): ${await explain(url, err)}`)
    throw err
  }
}

/** Browsers report a failed module fetch without its status: ask the server what went wrong. */
async function explain (url, err) {
  try {
    const response = await fetch(url, { cache: 'no-store' })
    if (!response.ok) return `${response.status} ${(await response.text()).slice(0, 500)}`
  } catch {
    // The server is unreachable: the import's own message says as much.
  }
  return err.message
}

const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
const client = new DrizzleClient(`${scheme}//${window.location.host}/ws`)
// Exposed for debugging in the console (and for the browser test).
window.drizzle = client

function showTodo (todo, fresh) {
  if (shown.has(todo.id)) return
  shown.add(todo.id)
  const item = document.createElement('li')
  item.textContent = todo.title
  item.dataset.id = String(todo.id)
  if (fresh) item.className = 'new'
  list.append(item)
}

// Live updates. The subscription is renewed by the client after every reconnect.
client.subscribe('todos', todo => showTodo(todo, true)).ready.catch(err => {
  errorLine.textContent = `Could not subscribe to todos: ${err.message}`
})

// Publications missed while disconnected are not replayed (pub/sub is at-most-once): reload the list
// on every open, the first one included.
client.on('open', () => {
  setStatus('open', 'connected')
  client.request('todos', 'list').then(todos => { for (const todo of todos) showTodo(todo, false) }, showError)
})
client.on('close', () => setStatus('closed', 'disconnected'))
client.on('reconnect', ({ delay }) => setStatus('reconnecting', `reconnecting in ${Math.round(delay)} ms…`))
client.on('error', err => console.warn('drizzle:', err.type, err.message))

$('new-todo').addEventListener('submit', async event => {
  event.preventDefault()
  const input = $('title')
  errorLine.textContent = ''
  try {
    // The reply is the created todo; the list is fed by the topic, so nothing to add here.
    await client.request('todos', 'create', { title: input.value }, { timeout: 5000 })
    input.value = ''
  } catch (err) {
    showError(err)
  }
})

function showError (err) {
  errorLine.textContent = err.type === 'server' ? `${err.code}: ${err.message}` : `Request failed (${err.type ?? 'error'}): ${err.message}`
}
