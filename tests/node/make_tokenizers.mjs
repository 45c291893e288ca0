// Builds the tokenizer.json files that tests/tokenizer_reference_test.cpp compares smelt with the
// reference library on (docs/tokenizer-sentencepiece.md, "Reference tests"): one per tokenizer
// style real models use, in the shape those models' files have, with vocabularies and merges
// learned here from a training text (a simple BPE / frequency count; the binding exposes no
// trainer options). Each file is loaded back by the reference library before it is kept.
//
// usage: node make_tokenizers.mjs OUT_DIR CORPUS [STYLE...]
//        -> OUT_DIR/<style>/tokenizer.json for the named styles (default: all), names on stdout
import fs from 'node:fs'
import path from 'node:path'
import { Tokenizer } from 'tokenizers'

const [outDir, corpusPath, ...only] = process.argv.slice(2)
if (!outDir || !corpusPath) {
  console.error('usage: node make_tokenizers.mjs OUT_DIR CORPUS [STYLE...]')
  process.exit(2)
}

// The training text: the corpus's even lines (odd lines stay partly unseen) and seeded word
// salad from its words, so merges are learned from a few thousand word types.
function trainingText() {
  const lines = fs.readFileSync(corpusPath, 'utf8').split('\n').filter((l) => l.trim() !== '')
  let seed = 7
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  }
  const words = lines.join(' ').split(/\s+/).filter(Boolean)
  const text = lines.filter((_, i) => i % 2 === 0)
  for (let i = 0; i < 1500; i++) {
    const n = 2 + rand(10)
    const w = []
    for (let k = 0; k < n; k++) w.push(words[rand(words.length)])
    text.push(w.join(' '))
  }
  return text
}

// GPT-2's byte -> printable character table (the ByteLevel alphabet), in byte order.
function bytesToUnicode() {
  const bs = []
  for (let b = 33; b <= 126; b++) bs.push(b)
  for (let b = 161; b <= 172; b++) bs.push(b)
  for (let b = 174; b <= 255; b++) bs.push(b)
  const cs = [...bs]
  let n = 0
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b)
      cs.push(256 + n++)
    }
  }
  const table = new Array(256)
  bs.forEach((b, i) => (table[b] = String.fromCodePoint(cs[i])))
  return table
}

// The words a tokenizer's normalizer + pre-tokenizer make of the training text (run by the
// reference library itself), with their counts.
function wordCounts(spec, text) {
  const t = Tokenizer.fromString(JSON.stringify(spec))
  const normalizer = t.getNormalizer()
  const pre = t.getPreTokenizer()
  const counts = new Map()
  for (const line of text) {
    const normalized = normalizer ? normalizer.normalizeString(line) : line
    const words = pre ? pre.preTokenizeString(normalized).map((w) => w[0]) : [normalized]
    for (const w of words) counts.set(w, (counts.get(w) || 0) + 1)
  }
  return counts
}

// A plain BPE: repeatedly merges the most frequent adjacent pair (ties: the smaller pair as a
// string), `numMerges` times. Words are split into characters; `split(word)` may override that.
function learnMerges(counts, numMerges, split = (w) => Array.from(w)) {
  const words = [...counts].map(([w, c]) => ({ syms: split(w), c }))
  const merges = []
  for (let m = 0; m < numMerges; m++) {
    const pairs = new Map()
    for (const { syms, c } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = syms[i] + '\u0000' + syms[i + 1]
        pairs.set(k, (pairs.get(k) || 0) + c)
      }
    }
    let best = null
    let bestCount = 1
    for (const [k, c] of pairs) {
      if (c > bestCount || (c === bestCount && best !== null && k < best)) {
        best = k
        bestCount = c
      }
    }
    if (best === null) break
    const [a, b] = best.split('\u0000')
    merges.push([a, b])
    for (const w of words) {
      const out = []
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(a + b)
          i++
        } else out.push(w.syms[i])
      }
      w.syms = out
    }
  }
  return merges
}

// Adds `tokens` to `vocab` (token -> id) in order, skipping those already there.
function extend(vocab, tokens) {
  for (const t of tokens) if (!(t in vocab)) vocab[t] = Object.keys(vocab).length
}

function characters(counts, minCount) {
  const chars = new Map()
  for (const [w, c] of counts) for (const ch of w) chars.set(ch, (chars.get(ch) || 0) + c)
  return [...chars].filter(([, c]) => c >= minCount).map(([ch]) => ch).sort()
}

function added(id, content, special, options = {}) {
  return {
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: !special,
    special,
    ...options,
  }
}

function bpeModel(vocab, merges, options = {}) {
  return {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab,
    merges,
    ...options,
  }
}

function template(single, pair, special) {
  return {
    type: 'TemplateProcessing',
    single: single.map((s) => (s === '$A' ? { Sequence: { id: 'A', type_id: 0 } } : { SpecialToken: { id: s, type_id: 0 } })),
    pair: pair.map((s) =>
      s === '$A' ? { Sequence: { id: 'A', type_id: 0 } } : s === '$B' ? { Sequence: { id: 'B', type_id: 1 } } : { SpecialToken: { id: s, type_id: 1 } },
    ),
    special_tokens: Object.fromEntries(special.map(([t, id]) => [t, { id: t, ids: [id], tokens: [t] }])),
  }
}

function file(model, parts) {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    model,
    ...parts,
  }
}

const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

// GPT-2: byte-level BPE, the GPT-2 regex inside ByteLevel, <|endoftext|>.
function gpt2(text) {
  const parts = {
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  }
  const counts = wordCounts(file(bpeModel({}, []), parts), text)
  const merges = learnMerges(counts, 1500)
  const vocab = {}
  extend(vocab, bytesToUnicode())
  extend(vocab, merges.map(([a, b]) => a + b))
  const eot = Object.keys(vocab).length
  vocab['<|endoftext|>'] = eot
  // Added tokens past the model's vocabulary: one that swallows the spaces before it (RoBERTa's
  // <mask> does) and one non-special, normalized token.
  return file(bpeModel(vocab, merges.map(([a, b]) => `${a} ${b}`)), {
    ...parts,
    added_tokens: [
      added(eot, '<|endoftext|>', true),
      added(eot + 1, '<|im_start|>', true, { lstrip: true }),
      added(eot + 2, '<|im_end|>', false),
    ],
  })
}

// Llama-3 / Qwen2: Split with the Llama-3 regex, then ByteLevel without its own regex;
// ignore_merges; <|begin_of_text|> added by a template; chat tokens; one non-special added token.
function llama3(text) {
  const parts = {
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: LLAMA3_PATTERN }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  }
  const counts = wordCounts(file(bpeModel({}, []), parts), text)
  const merges = learnMerges(counts, 2000)
  const vocab = {}
  extend(vocab, bytesToUnicode())
  extend(vocab, merges.map(([a, b]) => a + b))
  const specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|im_start|>', '<|im_end|>']
  const n = Object.keys(vocab).length
  const addedTokens = specials.map((s, i) => added(n + i, s, true))
  addedTokens.push(added(n + specials.length, '<tool_call>', false))
  const bos = n
  return file(bpeModel(vocab, merges, { ignore_merges: true }), {
    ...parts,
    added_tokens: addedTokens,
    post_processor: {
      type: 'Sequence',
      processors: [
        { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        template(['<|begin_of_text|>', '$A'], ['<|begin_of_text|>', '$A', '<|begin_of_text|>', '$B'], [['<|begin_of_text|>', bos]]),
      ],
    },
  })
}

// Llama-2 / Mistral: SentencePiece-style BPE over "▁"-joined text with byte fallback.
// `metaspace` picks Mistral's newer shape (Metaspace pre-tokenizer) over Llama-2's normalizer.
function sentencepieceBpe(text, metaspace) {
  const parts = metaspace
    ? {
        pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      }
    : {
        normalizer: {
          type: 'Sequence',
          normalizers: [
            { type: 'Prepend', prepend: '▁' },
            { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
          ],
        },
      }
  // Both shapes decode alike (transformers' LlamaConverter writes this decoder for both).
  parts.decoder = {
    type: 'Sequence',
    decoders: [
      { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
      { type: 'ByteFallback' },
      { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 },
    ],
  }
  const lineCounts = wordCounts(file(bpeModel({}, []), parts), text)
  // SentencePiece pieces do not cross word starts: learn merges on "▁word" units.
  const counts = new Map()
  for (const [l, c] of lineCounts) {
    for (const w of l.split(/(?=▁)/)) if (w) counts.set(w, (counts.get(w) || 0) + c)
  }
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 }
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b
  const chars = characters(counts, 3)
  extend(vocab, chars)
  const known = new Set(chars)
  const merges = learnMerges(counts, 1800, (w) => Array.from(w).map((ch) => (known.has(ch) ? ch : '\u0001' + ch)))
    .filter(([a, b]) => !a.includes('\u0001') && !b.includes('\u0001'))
  extend(vocab, merges.map(([a, b]) => a + b))
  return file(
    bpeModel(vocab, merges.map(([a, b]) => `${a} ${b}`), { unk_token: '<unk>', fuse_unk: true, byte_fallback: true }),
    {
      ...parts,
      added_tokens: [added(0, '<unk>', true), added(1, '<s>', true), added(2, '</s>', true)],
      post_processor: template(['<s>', '$A'], ['<s>', '$A', '<s>', '$B'], [['<s>', 1]]),
    },
  )
}

// T5 / ALBERT style Unigram: NFKC + collapsed spaces, Metaspace, scores from piece frequencies.
function unigram(text) {
  const parts = {
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }],
    },
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
  }
  const counts = wordCounts(file({ type: 'Unigram', unk_id: null, vocab: [], byte_fallback: false }, parts), text)
  const pieces = new Map()
  for (const [w, c] of counts) {
    const chars = Array.from(w)
    for (let i = 0; i < chars.length; i++) {
      for (let len = 1; len <= 8 && i + len <= chars.length; len++) {
        const p = chars.slice(i, i + len).join('')
        pieces.set(p, (pieces.get(p) || 0) + c)
      }
    }
  }
  const chars = new Set(characters(counts, 3))
  const multi = [...pieces].filter(([p, c]) => Array.from(p).length > 1 && c >= 3)
  multi.sort((x, y) => y[1] * Array.from(y[0]).length - x[1] * Array.from(x[0]).length || (x[0] < y[0] ? -1 : 1))
  const chosen = [...[...chars].map((ch) => [ch, pieces.get(ch)]), ...multi.slice(0, 1800)]
  const total = chosen.reduce((s, [, c]) => s + c, 0)
  const vocab = [
    ['<pad>', 0],
    ['</s>', 0],
    ['<unk>', 0],
    ...chosen.map(([p, c]) => [p, Math.log(c / total)]).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)),
  ]
  return file(
    { type: 'Unigram', unk_id: 2, vocab, byte_fallback: false },
    {
      ...parts,
      added_tokens: [added(0, '<pad>', true), added(1, '</s>', true), added(2, '<unk>', true)],
      post_processor: template(['$A', '</s>'], ['$A', '</s>', '$B', '</s>'], [['</s>', 1]]),
    },
  )
}

// BERT: BertNormalizer (lowercase), BertPreTokenizer, WordPiece with "##" continuations.
function wordpiece(text) {
  const parts = {
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
  }
  const base = { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: { '[UNK]': 0 } }
  const counts = wordCounts(file(base, parts), text)
  const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
  const vocab = {}
  extend(vocab, specials)
  const chars = characters(counts, 2)
  extend(vocab, chars)
  extend(vocab, chars.map((c) => '##' + c))
  // Whole frequent words, then frequent word-internal pieces as "##" continuations and prefixes.
  const byCount = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
  extend(vocab, byCount.filter(([w, c]) => c >= 3 && Array.from(w).length > 1).slice(0, 900).map(([w]) => w))
  const subs = new Map()
  for (const [w, c] of counts) {
    const ch = Array.from(w)
    for (let i = 0; i < ch.length; i++) {
      for (let len = 2; len <= 6 && i + len <= ch.length; len++) {
        const p = (i > 0 ? '##' : '') + ch.slice(i, i + len).join('')
        subs.set(p, (subs.get(p) || 0) + c)
      }
    }
  }
  extend(vocab, [...subs].filter(([, c]) => c >= 4).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 900).map(([p]) => p))
  return file(
    { ...base, vocab },
    {
      ...parts,
      added_tokens: specials.map((s) => added(vocab[s], s, true)),
      post_processor: template(['[CLS]', '$A', '[SEP]'], ['[CLS]', '$A', '[SEP]', '$B', '[SEP]'], [['[CLS]', 2], ['[SEP]', 3]]),
    },
  )
}

const text = trainingText()
const styles = {
  gpt2: () => gpt2(text),
  llama3: () => llama3(text),
  llama2: () => sentencepieceBpe(text, false),
  mistral: () => sentencepieceBpe(text, true),
  unigram: () => unigram(text),
  wordpiece: () => wordpiece(text),
}
for (const name of only) {
  if (!(name in styles)) {
    console.error(`unknown style ${name}; styles: ${Object.keys(styles).join(', ')}`)
    process.exit(2)
  }
}
for (const [name, make] of Object.entries(styles)) {
  if (only.length && !only.includes(name)) continue
  const spec = make()
  const dir = path.join(outDir, name)
  fs.mkdirSync(dir, { recursive: true })
  const json = JSON.stringify(spec, null, 2)
  Tokenizer.fromString(json) // the reference library must accept the file as written
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), json)
  console.log(name)
}
