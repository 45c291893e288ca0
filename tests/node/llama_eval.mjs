// Loads a GGUF model with llama.cpp (node-llama-cpp's prebuilt CPU binaries, never a download or a
// build), evaluates the given token ids as one sequence and prints the next-token logits of the
// last position as JSON on stdout:
//   node llama_eval.mjs MODEL.gguf '[1, 72, 101]'
//   -> {"n_vocab": 320, "n_tokens": 3, "argmax": 17, "logits_normalization": "log_softmax",
//       "logits": [...]}
// node-llama-cpp exposes the next-token distribution, not the raw logit vector, so "logits" are
// log-softmax values: the raw logits minus their log-sum-exp (same argmax and differences; compare
// with log_softmax of a reference).
//
// With a third argument --all, the distribution after EVERY position of the sequence is printed:
//   node llama_eval.mjs MODEL.gguf '[1, 72, 101]' --all
//   -> {"n_vocab": 320, "n_tokens": 3, "argmax": [17, 4, 99], "logits_normalization":
//       "log_softmax", "logits": [[...], [...], [...]]}
// where argmax[t] and logits[t] belong to the next token after ids[0..t] (one list per position,
// in order).
//
// With --lora ADAPTER.gguf (repeatable), llama.cpp applies each LoRA adapter at scale 1:
//   node llama_eval.mjs BASE.gguf '[1, 72, 101]' --lora adapter.gguf
// Exits non-zero with a message on stderr on any failure.
import process from "node:process";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function die(message) {
  process.stderr.write(`llama_eval: ${message}\n`);
  process.exit(1);
}

async function main() {
  const [modelPath, idsJson, ...options] = process.argv.slice(2);
  const usage = "usage: node llama_eval.mjs MODEL.gguf TOKEN_IDS_JSON [--all] [--lora ADAPTER.gguf]...";
  if (!modelPath || !idsJson) die(usage);
  let all = false;
  const adapters = [];
  for (let i = 0; i < options.length; ++i) {
    if (options[i] === "--all") {
      all = true;
    } else if (options[i] === "--lora" && i + 1 < options.length) {
      adapters.push({filePath: options[++i], scale: 1});
    } else {
      die(`unknown option '${options[i]}'; ${usage}`);
    }
  }
  let ids;
  try {
    ids = JSON.parse(idsJson);
  } catch (e) {
    die(`token ids are not JSON: ${e.message}`);
  }
  if (!Array.isArray(ids) || ids.length === 0 ||
      !ids.every((t) => Number.isInteger(t) && t >= 0 && t < 2 ** 31)) {
    die("token ids must be a non-empty JSON array of non-negative integers");
  }

  const logs = [];
  const llama = await getLlama({
    gpu: false,                 // CPU only
    build: "never",             // never compile llama.cpp from source
    usePrebuiltBinaries: true,  // the binaries shipped in @node-llama-cpp/<platform>
    skipDownload: true,         // no network at run time
    progressLogs: false,
    logLevel: LlamaLogLevel.warn,
    logger: (level, message) => logs.push(`[${level}] ${message.trimEnd()}`),
  });
  let model;
  try {
    model = await llama.loadModel({modelPath, gpuLayers: 0});
  } catch (e) {
    die(`llama.cpp could not load ${modelPath}: ${e.message}\n${logs.join("\n")}`);
  }
  const nTokens = model.fileInfo?.metadata?.tokenizer?.ggml?.tokens?.length;
  const outside = ids.find((t) => nTokens != null && t >= nTokens);
  if (outside != null) die(`token id ${outside} is outside the model's vocabulary of ${nTokens}`);

  // An F32 KV cache and no flash attention (whose CPU kernel rounds Q to F16), so results agree
  // with an f32/f64 reference to f32 rounding rather than F16's.
  let context;
  try {
    context = await model.createContext({
      ...(adapters.length > 0 ? {lora: {adapters}} : {}),
      contextSize: Math.max(64, ids.length + 16),
      sequences: 1,
      flashAttention: false,
      experimentalKvCacheKeyType: "F32",
      experimentalKvCacheValueType: "F32",
      swaFullCache: true,  // sliding-window layers keep every position (no cache-size effects)
    });
  } catch (e) {
    die(`llama.cpp could not create a context${adapters.length ? " with the LoRA adapters" : ""}: ${e.message}\n${logs.join("\n")}`);
  }
  const sequence = context.getSequence();
  // Evaluate all tokens; ask for the distribution after the last one (after each one with
  // --all). Temperature 0 selects llama.cpp's greedy sampler, which leaves every logit in the
  // candidate list untouched.
  const input = ids.map((t, i) => all || i + 1 === ids.length
      ? [t, {generateNext: {probabilities: true, options: {temperature: 0}}}]
      : t);
  let results;
  try {
    results = await sequence.controlledEvaluate(input);
  } catch (e) {
    die(`evaluation failed: ${e.message}\n${logs.join("\n")}`);
  }
  // The log-softmax and argmax of position `pos`'s next-token distribution.
  const distribution = (pos) => {
    const probabilities = results[pos]?.next?.probabilities;
    if (!probabilities || probabilities.size === 0) {
      die(`llama.cpp returned no next-token distribution at position ${pos}`);
    }
    const nVocab = probabilities.size;
    const logits = new Array(nVocab).fill(null);
    for (const [token, p] of probabilities) {
      if (token < 0 || token >= nVocab) die(`token ${token} outside the vocabulary of ${nVocab}`);
      logits[token] = p > 0 ? Math.log(p) : null;  // null: the probability underflowed in f32
    }
    let argmax = 0;
    for (let i = 1; i < nVocab; ++i) if ((logits[i] ?? -Infinity) > (logits[argmax] ?? -Infinity)) argmax = i;
    return {nVocab, argmax, logits};
  };
  if (all) {
    const rows = ids.map((_, pos) => distribution(pos));
    if (rows.some((r) => r.nVocab !== rows[0].nVocab)) die("positions disagree on the vocabulary size");
    process.stdout.write(JSON.stringify({
      n_vocab: rows[0].nVocab,
      n_tokens: ids.length,
      argmax: rows.map((r) => r.argmax),
      logits_normalization: "log_softmax",
      logits: rows.map((r) => r.logits),
    }) + "\n");
  } else {
    const {nVocab, argmax, logits} = distribution(ids.length - 1);
    process.stdout.write(JSON.stringify({
      n_vocab: nVocab,
      n_tokens: ids.length,
      argmax,
      logits_normalization: "log_softmax",
      logits,
    }) + "\n");
  }
  await context.dispose();
  await model.dispose();
  await llama.dispose();
}

main().catch((e) => die(e?.stack ?? String(e)));
