// A Wechaty Puppet Service gateway for waas: runs one Wechaty puppet (the thing that
// actually drives a WeChat account) and serves it over gRPC, the protocol waas's
// `puppet.kind = "service"` speaks. It is the stock PuppetServer from
// wechaty-puppet-service, like `wechaty gateway`, minus that CLI's registration with
// the public Chatie discovery service (which it needs before it listens at all).
//
// Environment:
//   WECHATY_PUPPET                  puppet module (default wechaty-puppet-wechat4u;
//                                   e.g. wechaty-puppet-padlocal with a token)
//   WECHATY_PUPPET_TOKEN            the puppet's own token, if it needs one
//   WECHATY_PUPPET_SERVICE_TOKEN    the token waas sends (puppet.service.token); required
//   PORT                            gRPC port (default 8788)
//   HOST                            listen address (default 0.0.0.0)
//   MEMORY                          where the login session is kept, so a restart does
//                                   not need a new QR scan (default ./data/gateway)
//   WECHATY_PUPPET_SERVICE_TLS_SERVER_CERT / _KEY   PEM text: serve TLS (a v3
//                                   certificate with a subjectAltName; waas's rustls
//                                   rejects the built-in v1 "insecure" certificate)
//   WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_SERVER=true   plaintext (private networks)

import fs from 'node:fs'
import path from 'node:path'
import { MemoryCard } from 'memory-card'
import { PuppetServer } from 'wechaty-puppet-service'

const puppetName = process.env.WECHATY_PUPPET || 'wechaty-puppet-wechat4u'
const token = process.env.WECHATY_PUPPET_SERVICE_TOKEN
const port = Number(process.env.PORT || 8788)
const host = process.env.HOST || '0.0.0.0'
const memoryName = process.env.MEMORY || 'data/gateway'

if (!token) {
  console.error('WECHATY_PUPPET_SERVICE_TOKEN is required: the token waas will send (puppet.service.token)')
  process.exit(2)
}

fs.mkdirSync(path.dirname(path.resolve(memoryName)), { recursive: true })
const memory = new MemoryCard({ name: memoryName })
await memory.load()

const { default: Puppet } = await import(puppetName)
const puppet = new Puppet(process.env.WECHATY_PUPPET_TOKEN ? { token: process.env.WECHATY_PUPPET_TOKEN } : {})
puppet.setMemory(memory.multiplex('puppet'))

const server = new PuppetServer({ endpoint: `${host}:${port}`, puppet, token })
await server.start()
console.info(`gateway: ${puppetName} served as a Wechaty Puppet Service on ${host}:${port}`)

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    console.info(`gateway: ${signal}, stopping`)
    await server.stop().catch(e => console.error(e))
    await memory.save().catch(e => console.error(e))
    process.exit(0)
  })
}
