import { execFile } from 'node:child_process'
import { promisify } from 'node:util'

const run = promisify(execFile)

/**
 * The Python that black-box tests publish from, as a Celery task or a cron job would. Debian's
 * python3 (where .ci/run installs python3-redis and python3-pika: PyPI is not reachable here), not
 * whichever python3 comes first on PATH. DRIZZLE_PYTHON overrides it.
 */
export const PYTHON = process.env.DRIZZLE_PYTHON ?? '/usr/bin/python3'

/** Why Python with `module` cannot run here, or undefined when it can. In CI a missing module fails. */
export async function pythonMissing (module: string): Promise<string | undefined> {
  const ok = await run(PYTHON, ['-c', `import ${module}`]).then(() => true, () => false)
  if (ok) return undefined
  const reason = `${PYTHON} cannot import ${module} (install python3-${module} with apt-get; .ci/run does)`
  if (process.env.CI !== undefined) throw new Error(reason)
  console.warn(`\n  SKIPPED: ${reason}\n`)
  return reason
}

/** Runs a Python script with arguments; rejects on a non-zero exit or after `timeout` ms. */
export async function python (script: string, args: string[] = [], timeout = 10_000): Promise<string> {
  const { stdout } = await run(PYTHON, ['-c', script, ...args], { timeout })
  return stdout
}
