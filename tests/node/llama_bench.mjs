// Times llama.cpp (node-llama-cpp's prebuilt CPU binaries) on a GGUF model for bench/infer_bench.sh:
// prompt processing of a text file's tokens in one batch, then greedy generation of N tokens one
// at a time, with T threads. Prints JSON on stdout:
//   node llama_bench.mjs MODEL.gguf PROMPT.txt N_GEN THREADS
//   -> {"pp_tokens": 512, "pp_s": 0.41, "pp_tok_s": 1248.8, "tg_tokens": 128, "tg_s": 2.0, ...}
// Generation ignores EOS (like llama-bench), so every run generates N_GEN tokens.
import fs from "node:fs";
import process from "node:process";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function die(message) {
  process.stderr.write(`llama_bench: ${message}\n`);
  process.exit(1);
}

async function main() {
  const [modelPath, promptPath, nGenText, threadsText] = process.argv.slice(2);
  if (!modelPath || !promptPath || !nGenText || !threadsText)
    die("usage: node llama_bench.mjs MODEL.gguf PROMPT.txt N_GEN THREADS");
  const nGen = Number(nGenText), threads = Number(threadsText);
  const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true,
                                skipDownload: true, progressLogs: false,
                                logLevel: LlamaLogLevel.error, maxThreads: threads});
  const model = await llama.loadModel({modelPath, gpuLayers: 0});
  const text = fs.readFileSync(promptPath, "utf8");
  const prompt = model.tokenize(text, false);
  if (model.tokens.bos != null) prompt.unshift(model.tokens.bos);
  const context = await model.createContext({contextSize: prompt.length + nGen + 16,
                                             batchSize: prompt.length, threads,
                                             sequences: 1, flashAttention: false});
  const sequence = context.getSequence();
  const greedy = {generateNext: {token: true, options: {temperature: 0}}};
  const input = prompt.map((t, i) => i + 1 === prompt.length ? [t, greedy] : t);
  const t0 = process.hrtime.bigint();
  const res = await sequence.controlledEvaluate(input);
  const t1 = process.hrtime.bigint();
  let next = res[prompt.length - 1]?.next?.token;
  if (next == null) die("no token after the prompt");
  for (let i = 0; i < nGen; ++i) {
    const out = await sequence.controlledEvaluate([[next, greedy]]);
    next = out[0]?.next?.token;
    if (next == null) die(`no token at step ${i}`);
  }
  const t2 = process.hrtime.bigint();
  const pp = Number(t1 - t0) / 1e9, tg = Number(t2 - t1) / 1e9;
  process.stdout.write(JSON.stringify({pp_tokens: prompt.length, pp_s: pp,
                                       pp_tok_s: prompt.length / pp, tg_tokens: nGen, tg_s: tg,
                                       tg_tok_s: nGen / tg}) + "\n");
  await context.dispose();
  await model.dispose();
  await llama.dispose();
}

main().catch((e) => die(e?.stack ?? String(e)));
