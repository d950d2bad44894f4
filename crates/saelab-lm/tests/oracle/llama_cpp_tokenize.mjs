// The independent tokenizer of tests/tokenizer_oracle.rs: llama.cpp's, through
// node-llama-cpp (installed by `scripts/setup.sh --oracle`), reading only the GGUF's
// vocabulary.
//
//   node llama_cpp_tokenize.mjs ORACLE_DIR MODEL.gguf DOCS.jsonl OUT.bin [special]
//
// DOCS.jsonl holds one JSON string per line. OUT.bin gets, for each document in order,
// its token count then its token ids, all little-endian u32. Control-token strings in
// the text are tokenized as plain text and no BOS is added, like saelab's `encode`;
// with `special` they become their control tokens, like `encode_with_special`.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [oracle, model, docs, out, mode] = process.argv.slice(2);
const special = mode === "special";
if (!out) {
  console.error("usage: node llama_cpp_tokenize.mjs ORACLE_DIR MODEL.gguf DOCS.jsonl OUT.bin");
  process.exit(2);
}
const entry = join(oracle, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const vocab = await llama.loadModel({ modelPath: model, vocabOnly: true });
const parts = [];
for (const line of readFileSync(docs, "utf8").split("\n")) {
  if (line === "") continue;
  const ids = vocab.tokenize(JSON.parse(line), special);
  const row = new Uint32Array(ids.length + 1);
  row[0] = ids.length;
  row.set(ids, 1);
  parts.push(Buffer.from(row.buffer));
}
writeFileSync(out, Buffer.concat(parts));
await vocab.dispose();
await llama.dispose();
