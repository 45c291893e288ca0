// The reference library (Hugging Face tokenizers' Node binding, pinned in package.json) as the
// tokenizer tests and benchmark use it (docs/tokenizer-sentencepiece.md, "Reference tests").
//
//   node tokenize.mjs corpus TOKENIZER_JSON CORPUS
//       JSON on stdout: for every line of CORPUS (split on "\n") and for the whole file, the ids
//       with and without special tokens and their decodes (special tokens kept and skipped).
//   node tokenize.mjs saved PATH STRING...
//       PATH is a saved model folder (its tokenizer.json) or a tokenizer.json file; JSON on
//       stdout: vocab size (added tokens included), the added tokens, and for each STRING its ids,
//       tokens and ids without special tokens. For checking tokenizers that smelt edited.
//   node tokenize.mjs bench TOKENIZER_JSON FILE
//       Encodes each line of FILE separately (encodeBatch over 1000 lines at a time, which keeps
//       the binding's per-call cost out of the figure), without special tokens, and prints
//       "bytes wall_seconds cpu_seconds tokens" of the encoding loop (CPU time of the whole
//       process, all threads). Set TOKENIZERS_PARALLELISM=false and RAYON_NUM_THREADS=1 for one
//       thread.
import fs from 'node:fs'
import path from 'node:path'
import { Tokenizer } from 'tokenizers'

function load(p) {
  const file = fs.statSync(p).isDirectory() ? path.join(p, 'tokenizer.json') : p
  return Tokenizer.fromFile(file)
}

async function record(t, text) {
  const withSpecial = await t.encode(text, null, { addSpecialTokens: true })
  const plain = await t.encode(text, null, { addSpecialTokens: false })
  const ids = withSpecial.getIds()
  const idsPlain = plain.getIds()
  return {
    ids,
    tokens: withSpecial.getTokens(),
    ids_plain: idsPlain,
    decoded: await t.decode(ids, false),
    decoded_skip: await t.decode(ids, true),
    decoded_plain: await t.decode(idsPlain, false),
  }
}

const [mode, ...args] = process.argv.slice(2)
if (mode === 'corpus' && args.length === 2) {
  const t = load(args[0])
  const corpus = fs.readFileSync(args[1], 'utf8')
  const lines = []
  for (const line of corpus.split('\n')) lines.push({ text: line, ...(await record(t, line)) })
  const out = { vocab_size: t.getVocabSize(true), lines, whole: await record(t, corpus) }
  process.stdout.write(JSON.stringify(out))
} else if (mode === 'saved' && args.length >= 1) {
  const t = load(args[0])
  const vocab = t.getVocab(true)
  const base = t.getVocab(false)
  const addedTokens = Object.entries(vocab)
    .filter(([tok, id]) => base[tok] !== id)
    .map(([tok, id]) => ({ token: tok, id }))
    .sort((a, b) => a.id - b.id)
  const strings = []
  for (const s of args.slice(1)) strings.push({ text: s, ...(await record(t, s)) })
  process.stdout.write(JSON.stringify({ vocab_size: t.getVocabSize(true), added_tokens: addedTokens, strings }))
} else if (mode === 'bench' && args.length === 2) {
  const t = load(args[0])
  const text = fs.readFileSync(args[1], 'utf8')
  const lines = text.split('\n')
  const start = process.hrtime.bigint()
  const cpuStart = process.cpuUsage()
  let n = 0
  for (let i = 0; i < lines.length; i += 1000) {
    const batch = await t.encodeBatch(lines.slice(i, i + 1000), { addSpecialTokens: false })
    for (const e of batch) n += e.getLength()
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const cpu = process.cpuUsage(cpuStart)
  const cpuSeconds = (cpu.user + cpu.system) / 1e6
  process.stdout.write(`${Buffer.byteLength(text, 'utf8')} ${seconds} ${cpuSeconds} ${n}\n`)
} else {
  console.error('usage: node tokenize.mjs corpus TOKENIZER_JSON CORPUS | saved PATH STRING... | bench TOKENIZER_JSON FILE')
  process.exit(2)
}
