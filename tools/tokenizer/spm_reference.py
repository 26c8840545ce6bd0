#!/usr/bin/python3
"""Encodes texts with the real SentencePiece library, using the vocabulary of
a "llama" GGUF (pieces, scores, types), so Strata's SentencePiece tokenizer
can be checked against the original.

  spm_reference.py model.gguf corpus.json   ->  JSON list of id lists (no BOS)

Needs the sentencepiece Python module (Debian: python3-sentencepiece). The
model proto is written by hand below (a few fields), so protobuf is not needed.
Normalization is SentencePiece's "identity" with a dummy prefix and no
whitespace collapsing: what llama.cpp's converter records for Llama models.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import gguf  # noqa: E402


def varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint((num << 3) | 2) + varint(len(b)) + b


def field_float(num, f):
    return varint((num << 3) | 5) + struct.pack("<f", f)


def model_proto(tokens, scores, types, unk, bos, eos, add_dummy_prefix):
    out = bytearray()
    for piece, score, t in zip(tokens, scores, types):
        t = int(t) if int(t) in (1, 2, 3, 4, 5, 6) else 1
        sp = field_bytes(1, piece.encode("utf-8", "surrogateescape")) + field_float(2, float(score)) + \
            field_varint(3, t)
        out += field_bytes(1, sp)
    trainer = field_varint(3, 2) + field_varint(4, len(tokens)) + field_varint(35, 1) + \
        field_varint(40, unk) + field_varint(41, bos) + field_varint(42, eos) + field_varint(43, -1)
    out += field_bytes(2, trainer)
    normalizer = field_bytes(1, b"identity") + field_varint(3, 1 if add_dummy_prefix else 0) + \
        field_varint(4, 0) + field_varint(5, 1)
    out += field_bytes(3, normalizer)
    return bytes(out)


def main():
    import sentencepiece as spm
    r = gguf.GGUFReader(sys.argv[1])
    tokens = r.get("tokenizer.ggml.tokens")
    scores = r.get("tokenizer.ggml.scores")
    types = r.get("tokenizer.ggml.token_type")

    def sid(key, default):
        v = r.get(key)
        return int(v) if v is not None and int(v) < len(tokens) else default

    proto = model_proto(tokens, scores, types, sid("tokenizer.ggml.unknown_token_id", 0),
                        sid("tokenizer.ggml.bos_token_id", 1), sid("tokenizer.ggml.eos_token_id", 2),
                        bool(r.get("tokenizer.ggml.add_space_prefix", True)))
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    with open(sys.argv[2], encoding="utf-8") as f:
        texts = json.load(f)
    print(json.dumps([sp.EncodeAsIds(t) for t in texts]))


if __name__ == "__main__":
    main()
