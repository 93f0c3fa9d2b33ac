import type { FastifyBaseLogger } from 'fastify'

export interface LogEntry { level: string, obj: Record<string, unknown>, msg: string | undefined }

/** A logger that records what it is given: enough of FastifyBaseLogger for the plugin and brokers. */
export function recordingLogger (entries: LogEntry[] = []): FastifyBaseLogger & { entries: LogEntry[] } {
  const record = (level: string) => (obj: unknown, msg?: string): void => {
    entries.push({ level, obj: obj !== null && typeof obj === 'object' ? obj as Record<string, unknown> : { value: obj }, msg })
  }
  const logger = {
    entries,
    level: 'trace',
    fatal: record('fatal'),
    error: record('error'),
    warn: record('warn'),
    info: record('info'),
    debug: record('debug'),
    trace: record('trace'),
    silent: () => {},
    child: () => logger
  }
  return logger as unknown as FastifyBaseLogger & { entries: LogEntry[] }
}
