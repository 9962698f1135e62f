// Drives the Node.js original (a checkout given by path, never part of this project) for the
// side-by-side figures of `python -m bench --node-original DIR`:
//
//   node bench/node_original.mjs serve DIR SOCKET_DIR   -> prints "NODE_READY <pipe>", serves
//   node bench/node_original.mjs get DIR PIPE COUNT     -> warms up, prints "READY", waits for a
//       line on stdin, then GETs one 100-byte value COUNT times in a row with the original's own
//       client and prints {"calls", "wall_s", "cpu_s"} as JSON.
import { pathToFileURL } from 'node:url'
import { join } from 'node:path'
import { once } from 'node:events'

const [mode, dir, ...rest] = process.argv.slice(2)
const load = (file) => import(pathToFileURL(join(dir, 'src', file)).href)

if (mode === 'serve') {
  const { Broker } = await load('broker.js')
  process.env.TMPDIR = rest[0] // the pipe goes into the bench's private temp dir
  const broker = new Broker({ logLevel: 'error', pipeId: 'bench' })
  const pipe = await broker.start()
  console.log(`NODE_READY ${pipe}`)
} else if (mode === 'get') {
  const { Client } = await load('client.js')
  const [pipe, countText] = rest
  const count = Number(countText)
  const client = new Client(pipe, { timeout: 60000 })
  await client.set('hit', 'v'.repeat(98), 600000)
  for (let i = 0; i < Math.min(200, count); i++) await client.get('hit')
  console.log('READY')
  process.stdin.setEncoding('utf8')
  await once(process.stdin, 'data')
  const cpu0 = process.cpuUsage()
  const start = process.hrtime.bigint()
  for (let i = 0; i < count; i++) await client.get('hit')
  const wall = Number(process.hrtime.bigint() - start) / 1e9
  const cpu = process.cpuUsage(cpu0)
  console.log(JSON.stringify({ calls: count, wall_s: wall, cpu_s: (cpu.user + cpu.system) / 1e6 }))
  process.exit(0)
} else {
  console.error(`unknown mode ${mode}`)
  process.exit(2)
}
