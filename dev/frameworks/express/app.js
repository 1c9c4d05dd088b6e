// An Express upstream for the bypass regression suite (tests/test_bypass.py): it serves the paid
// routes of dev/stack.py's ROUTES (the upstream paths of the rewritten ones) with Express's own
// routing, default settings, and answers each with a fixed marker, so a test can tell whether a
// request reached paid content.
//
//   node app.js --express 4|5 [--method-override] [--port N]      (PORT in the environment too)
//
// --method-override installs the `method-override` middleware as its README shows: the
// X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override headers and the `_method` query
// parameter (each only on POST, the middleware's default).
'use strict'

const args = process.argv.slice(2)
const flag = (name) => args.includes(name)
const option = (name, fallback) => {
  const i = args.indexOf(name)
  return i === -1 ? fallback : args[i + 1]
}

const major = option('--express', '4')
if (major !== '4' && major !== '5') {
  console.error(`--express must be 4 or 5, not ${major}`)
  process.exit(2)
}
const express = require(`express${major}`)
const port = Number(option('--port', process.env.PORT || '18080'))

const app = express()

if (flag('--method-override')) {
  const methodOverride = require('method-override')
  app.use(methodOverride('X-HTTP-Method-Override'))
  app.use(methodOverride('X-HTTP-Method'))
  app.use(methodOverride('X-Method-Override'))
  app.use(methodOverride('_method'))
}

// The marker: a header (so HEAD shows it too) and a JSON body.
const paid = (name) => (req, res) => {
  res.set('x-paid-content', name)
  res.json({ paid_content: name })
}

app.get('/free', (req, res) => res.json({ free: true }))
app.get('/api/quote', paid('quote'))
app.post('/api/echo', paid('echo'))
app.get('/api/fail', paid('fail'))
app.post('/api/fail', paid('fail'))
app.get('/api/sats', paid('sats'))
app.get('/api/once', paid('once'))
app.get('/v1/headers', paid('headers')) // route `headers`: /api/headers rewritten
app.get('/v1/ticker/:symbol', paid('ticker')) // routes ticker, ticker-once, flash
app.get('/v1/ws/:room', paid('chat')) // routes chat, short

const server = app.listen(port, '127.0.0.1', () => {
  console.log(`express ${require(`express${major}/package.json`).version} on 127.0.0.1:${port}`)
})
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
