import type { OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { FastifyReply } from 'fastify'
import { abortContext } from './context.js'
import { ConnectionClosedError } from './errors.js'
import type { Invocation } from './invocation.js'
import type { WireError } from './protocol.js'
import type { StreamWriter } from './stream.js'

// A streaming action over HTTP (option `http`): the response is NDJSON (`application/x-ndjson`), one
// JSON object per line, mirroring the WebSocket frames without `request_id`:
//   {"data":<item>,"more":true}        each item
//   {"data":<return value or null>}    the end, exactly once
//   {"code","error","statusCode","details"?}   or the error that ended the stream
// The status (200) and headers go out when the handler returns its stream, so an error after that
// is a line, not a status. A response that ends with neither final line was cut short (the server
// shut down). Backpressure is the response's own: the generator is pulled only while `write()` has
// not asked to wait for 'drain'. A client that disconnects stops the stream at its next step, which
// runs the generator's `finally`.

export const NDJSON = 'application/x-ndjson; charset=utf-8'

export class HttpStream implements StreamWriter {
  private readonly res: ServerResponse
  private closed = false
  private finished = false

  /**
   * Takes the response over from Fastify, with the headers the scope's hooks set on the reply. A
   * client leaving aborts the handler's ctx.signal (a CONNECTION_CLOSED error), as on WebSocket.
   */
  constructor (reply: FastifyReply, invocation: Invocation, private readonly shuttingDown: () => boolean) {
    reply.hijack()
    this.res = reply.raw
    this.res.once('close', () => {
      this.closed = true
      if (!this.finished) abortContext(invocation.ctx, new ConnectionClosedError())
    })
    this.res.writeHead(200, { ...reply.getHeaders(), 'content-type': NDJSON } as OutgoingHttpHeaders)
  }

  get gone (): boolean {
    return this.closed || this.res.destroyed || this.shuttingDown()
  }

  item (_invocation: Invocation, json: string): void {
    this.res.write('{"data":' + json + ',"more":true}\n')
  }

  writable (): boolean {
    return !this.res.writableNeedDrain
  }

  onWritable (wake: () => void): void {
    if (this.gone) {
      setImmediate(wake)
      return
    }
    const done = (): void => {
      this.res.off('drain', done)
      this.res.off('close', done)
      wake()
    }
    this.res.once('drain', done)
    this.res.once('close', done)
  }

  /** The final line, then the end of the response (Fastify runs the route's onResponse, drizzle's hooks with it). */
  reply (json: string): void {
    this.end('{"data":' + json + '}\n')
  }

  fail (error: WireError): void {
    const line: Record<string, unknown> = { code: error.code, error: error.message, statusCode: error.statusCode }
    if (error.details !== undefined) line.details = error.details
    let text: string
    try {
      text = JSON.stringify(line)
    } catch {
      text = JSON.stringify({ code: error.code, error: error.message, statusCode: error.statusCode })
    }
    this.end(text + '\n')
  }

  /**
   * The handler ended. A stream stopped without an answer leaves its response open: one whose client
   * left is destroyed (ending it would keep the socket until the keep-alive timeout), one cut short by
   * shutdown is ended.
   */
  ended (): void {
    if (this.finished) return
    this.finished = true
    if (this.closed || this.res.destroyed) this.res.destroy()
    else if (!this.res.writableEnded) this.res.end()
  }

  private end (line: string): void {
    if (this.finished) return
    this.finished = true
    if (!this.gone) this.res.end(line)
    else this.res.destroy()
  }
}
