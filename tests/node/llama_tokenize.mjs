// Tokenizes texts with llama.cpp (node-llama-cpp's prebuilt CPU binaries, never a download or a
// build) from a GGUF file's own vocabulary, as llama_tokenize(text, add_special=false,
// parse_special=false) does, and prints the ids as JSON on stdout:
//   node llama_tokenize.mjs MODEL.gguf TEXTS.json [--special]
//   -> {"bos": 1, "eos": 2, "ids": [[...], ...]}   (one id list per text of the JSON array)
// --special: parse_special=true (control tokens written in the text become those tokens).
// Only the vocabulary is loaded. Exits non-zero with a message on stderr on any failure.
import fs from "node:fs";
import process from "node:process";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

function die(message) {
  process.stderr.write(`llama_tokenize: ${message}\n`);
  process.exit(1);
}

async function main() {
  const [modelPath, textsPath, flag] = process.argv.slice(2);
  if (!modelPath || !textsPath || (flag != null && flag !== "--special")) {
    die("usage: node llama_tokenize.mjs MODEL.gguf TEXTS.json [--special]");
  }
  const special = flag === "--special";
  let texts;
  try {
    texts = JSON.parse(fs.readFileSync(textsPath, "utf8"));
  } catch (e) {
    die(`${textsPath}: not JSON: ${e.message}`);
  }
  if (!Array.isArray(texts) || !texts.every((t) => typeof t === "string")) {
    die(`${textsPath}: expected a JSON array of strings`);
  }
  const logs = [];
  const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    logLevel: LlamaLogLevel.warn,
    logger: (level, message) => logs.push(`[${level}] ${message.trimEnd()}`),
  });
  let model;
  try {
    model = await llama.loadModel({modelPath, gpuLayers: 0, vocabOnly: true});
  } catch (e) {
    die(`llama.cpp could not load ${modelPath}: ${e.message}\n${logs.join("\n")}`);
  }
  // specialTokens is llama_tokenize's parse_special (add_special is always false here).
  const ids = texts.map((t) => Array.from(model.tokenize(t, special)));
  process.stdout.write(JSON.stringify({bos: model.tokens.bos, eos: model.tokens.eos, ids}) + "\n");
  await model.dispose();
  await llama.dispose();
}

main().catch((e) => die(e?.stack ?? String(e)));
