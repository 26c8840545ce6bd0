#!/usr/bin/python3
"""Minimal SentencePiece-BPE ("llama" tokenizer.ggml.model) encoder/decoder.

A second, deliberately naive tokenizer oracle: start from the UTF-8 characters
of the text (spaces shown as U+2581, one prefixed), repeatedly merge the
adjacent pair whose concatenation is a vocabulary token with the highest score
(leftmost on ties), and spell anything left that is not a token as <0xNN>
byte tokens.  Quadratic, which is fine for test strings.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
import gguf  # noqa: E402

SPACE = "\u2581"
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_BYTE = 6


class SpmTokenizer:
    def __init__(self, tokens, scores, token_types=None, bos_id=1, eos_id=2,
                 add_bos=True, add_space_prefix=True):
        self.tokens = list(tokens)
        self.scores = [float(s) for s in scores]
        self.types = list(token_types) if token_types is not None else [1] * len(self.tokens)
        self.index = {}
        for i, t in enumerate(self.tokens):
            self.index.setdefault(t, i)   # first id wins on duplicate strings
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos, self.add_space_prefix = add_bos, add_space_prefix
        self.byte_ids = {}
        for b in range(256):
            i = self.index.get("<0x%02X>" % b)
            if i is not None:
                self.byte_ids[b] = i

    @classmethod
    def from_gguf(cls, reader):
        kv = reader.kv if hasattr(reader, "kv") else reader
        model = kv.get("tokenizer.ggml.model", "llama")
        if model != "llama":
            raise ValueError("not a SentencePiece (llama) vocabulary: %r" % model)
        return cls(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"],
                   kv.get("tokenizer.ggml.token_type"),
                   int(kv.get("tokenizer.ggml.bos_token_id", 1)),
                   int(kv.get("tokenizer.ggml.eos_token_id", 2)),
                   bool(kv.get("tokenizer.ggml.add_bos_token", True)),
                   bool(kv.get("tokenizer.ggml.add_space_prefix", True)))

    def encode(self, text, add_bos=None):
        add_bos = self.add_bos if add_bos is None else add_bos
        out = [self.bos_id] if add_bos else []
        if not text:
            return out
        s = text.replace(" ", SPACE)
        if self.add_space_prefix:
            s = SPACE + s
        syms = list(s)
        while True:
            best, best_i = None, -1
            for i in range(len(syms) - 1):
                tid = self.index.get(syms[i] + syms[i + 1])
                if tid is None:
                    continue
                sc = self.scores[tid]
                if best is None or sc > best:   # strict: leftmost wins ties
                    best, best_i = sc, i
            if best_i < 0:
                break
            syms[best_i:best_i + 2] = [syms[best_i] + syms[best_i + 1]]
        for sym in syms:
            tid = self.index.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            for b in sym.encode("utf-8"):
                out.append(self.byte_ids.get(b, 0))
        return out

    def token_bytes(self, tid):
        t = self.tokens[tid]
        if self.types[tid] == TOKEN_TYPE_BYTE or (len(t) == 6 and t.startswith("<0x") and t.endswith(">")):
            try:
                return bytes([int(t[3:5], 16)])
            except ValueError:
                pass
        if self.types[tid] == TOKEN_TYPE_CONTROL:
            return b""
        return t.replace(SPACE, " ").encode("utf-8", "surrogateescape")

    def decode(self, ids, strip_leading_space=False):
        b = b"".join(self.token_bytes(i) for i in ids)
        s = b.decode("utf-8", "replace")
        if strip_leading_space and s.startswith(" "):
            s = s[1:]
        return s


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="encode/decode with a GGUF SentencePiece vocab")
    ap.add_argument("model")
    ap.add_argument("--text")
    ap.add_argument("--ids", help="comma-separated ids to decode")
    ap.add_argument("--no-bos", action="store_true")
    a = ap.parse_args(argv)
    tok = SpmTokenizer.from_gguf(gguf.GGUFReader(a.model))
    if a.text is not None:
        print(",".join(str(i) for i in tok.encode(a.text, add_bos=not a.no_bos)))
    if a.ids:
        print(tok.decode([int(x) for x in a.ids.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
