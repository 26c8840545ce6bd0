#!/usr/bin/python3
"""Self-tests for gguf.py: file round trips and quantizer/dequantizer checks.

The vectorized dequantizers are checked against plain scalar loops written
element by element from the block layout descriptions, and against blocks built
by hand, so a layout slip in the numpy code cannot hide behind a matching slip
in its own quantizer.  Run directly; exits non-zero on failure.
"""

import os
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402


def f16(b, o):
    return float(np.frombuffer(bytes(b[o:o + 2]), dtype="<f2")[0])


def scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def scalar_dequant(raw, t, n):
    """Element-by-element decoders, deliberately loop-shaped like the spec."""
    raw = bytes(raw)
    blk, nb = gguf.GGML_BLOCK[t]
    y = []
    for bi in range(n // blk):
        b = raw[bi * nb:(bi + 1) * nb]
        if t == gguf.Q4_0:
            d = f16(b, 0)
            v = [0.0] * 32
            for j in range(16):
                v[j] = ((b[2 + j] & 0xF) - 8) * d
                v[j + 16] = ((b[2 + j] >> 4) - 8) * d
            y += v
        elif t == gguf.Q8_0:
            d = f16(b, 0)
            y += [struct.unpack("b", b[2 + j:3 + j])[0] * d for j in range(32)]
        elif t in (gguf.Q4_K, gguf.Q5_K):
            d, dmin = f16(b, 0), f16(b, 2)
            sc = b[4:16]
            if t == gguf.Q4_K:
                qs, qh = b[16:144], None
            else:
                qh, qs = b[16:48], b[48:176]
            for g in range(4):          # 64 elements per 32 bytes of qs
                for half in range(2):
                    s, m = scale_min_k4(2 * g + half, sc)
                    for l in range(32):
                        byte = qs[32 * g + l]
                        q = (byte >> 4) if half else (byte & 0xF)
                        if qh is not None and (qh[l] >> (2 * g + half)) & 1:
                            q += 16
                        y.append(d * s * q - dmin * m)
        elif t == gguf.Q6_K:
            ql, qh = b[0:128], b[128:192]
            scales = struct.unpack("16b", b[192:208])
            d = f16(b, 208)
            v = [0.0] * 256
            for h in range(2):
                for l in range(32):
                    L = ql[64 * h:64 * h + 64]
                    H = qh[32 * h + l]
                    q1 = ((L[l] & 0xF) | (((H >> 0) & 3) << 4)) - 32
                    q2 = ((L[l + 32] & 0xF) | (((H >> 2) & 3) << 4)) - 32
                    q3 = ((L[l] >> 4) | (((H >> 4) & 3) << 4)) - 32
                    q4 = ((L[l + 32] >> 4) | (((H >> 6) & 3) << 4)) - 32
                    base = 128 * h
                    si = 8 * h + l // 16
                    v[base + l] = d * scales[si] * q1
                    v[base + l + 32] = d * scales[si + 2] * q2
                    v[base + l + 64] = d * scales[si + 4] * q3
                    v[base + l + 96] = d * scales[si + 6] * q4
            y += v
        else:
            raise NotImplementedError(t)
    return np.array(y, dtype=np.float32)


FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg)


def test_hand_blocks():
    # Q4_0: d=0.5, nibble pattern low=j&15, high=15-(j&15)
    b = bytearray(np.float16(0.5).tobytes())
    b += bytes(((j & 15) | ((15 - (j & 15)) << 4)) for j in range(16))
    y = gguf.dequantize(np.frombuffer(bytes(b), np.uint8), gguf.Q4_0, 32)
    exp = [(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)]
    check(np.array_equal(y, np.array(exp, np.float32)), "Q4_0 hand block")

    # Q8_0: d=0.25, qs = -16..15
    b = bytearray(np.float16(0.25).tobytes()) + np.arange(-16, 16, dtype=np.int8).tobytes()
    y = gguf.dequantize(np.frombuffer(bytes(b), np.uint8), gguf.Q8_0, 32)
    check(np.array_equal(y, np.arange(-16, 16, dtype=np.float32) * 0.25), "Q8_0 hand block")

    # Q4_K: d=1, dmin=0.5; sub-block j has scale j+1 (j<4) / 40+j and min 2j
    ls = np.array([[1, 2, 3, 4, 44, 45, 46, 63]], np.uint8)
    lm = np.array([[0, 2, 4, 6, 48, 50, 52, 61]], np.uint8)
    packed = gguf._pack_scale_min_k4(ls, lm)[0]
    for j in range(8):
        check(scale_min_k4(j, packed) == (ls[0, j], lm[0, j]), "k4 scale pack j=%d" % j)
    qs = bytes(((l + g) & 15) | (((l * 3 + g) & 15) << 4) for g in range(4) for l in range(32))
    b = np.float16(1.0).tobytes() + np.float16(0.5).tobytes() + packed.tobytes() + qs
    y = gguf.dequantize(np.frombuffer(b, np.uint8), gguf.Q4_K, 256)
    exp = []
    for g in range(4):
        exp += [ls[0, 2 * g] * ((l + g) & 15) - 0.5 * lm[0, 2 * g] for l in range(32)]
        exp += [ls[0, 2 * g + 1] * ((l * 3 + g) & 15) - 0.5 * lm[0, 2 * g + 1] for l in range(32)]
    check(np.allclose(y, exp), "Q4_K hand block")

    # Q5_K: same as above plus qh bit pattern: element l of sub-block s gets
    # the high bit when (l + s) % 3 == 0
    qh = bytes(sum((1 << s) for s in range(8) if (l + s) % 3 == 0) for l in range(32))
    b = np.float16(1.0).tobytes() + np.float16(0.5).tobytes() + packed.tobytes() + qh + qs
    y = gguf.dequantize(np.frombuffer(b, np.uint8), gguf.Q5_K, 256)
    exp = []
    for g in range(4):
        for half in range(2):
            s = 2 * g + half
            for l in range(32):
                q = ((l * 3 + g) & 15) if half else ((l + g) & 15)
                q += 16 if (l + s) % 3 == 0 else 0
                exp.append(ls[0, s] * q - 0.5 * lm[0, s])
    check(np.allclose(y, exp), "Q5_K hand block")

    # Q6_K: build from a known level array L (0..63), scales -8..7, d=0.125
    L = np.array([(i * 7) % 64 for i in range(256)])
    scales = np.arange(-8, 8, dtype=np.int8)
    ql = bytearray(128)
    qhb = bytearray(64)
    for h in range(2):
        for l in range(32):
            e = 128 * h + l
            ql[64 * h + l] = (L[e] & 0xF) | ((L[e + 64] & 0xF) << 4)
            ql[64 * h + l + 32] = (L[e + 32] & 0xF) | ((L[e + 96] & 0xF) << 4)
            qhb[32 * h + l] = (L[e] >> 4) | ((L[e + 32] >> 4) << 2) | \
                ((L[e + 64] >> 4) << 4) | ((L[e + 96] >> 4) << 6)
    b = bytes(ql) + bytes(qhb) + scales.tobytes() + np.float16(0.125).tobytes()
    y = gguf.dequantize(np.frombuffer(b, np.uint8), gguf.Q6_K, 256)
    exp = [0.125 * scales[i // 16] * (L[i] - 32) for i in range(256)]
    check(np.allclose(y, exp), "Q6_K hand block")


def test_roundtrips():
    rng = np.random.default_rng(1234)
    n = 256 * 24
    x = rng.standard_normal(n).astype(np.float32)
    x[:256] *= 0.0                                   # an all-zero block
    x[256:512] = np.abs(x[256:512])                  # an all-positive block
    x[512:768] = -np.abs(x[512:768]) * 1e-3          # small negative block
    x[768:1024] *= 100.0
    # (type, max normalized RMS error)
    tol = {gguf.F32: 0, gguf.F16: 1e-3, gguf.BF16: 5e-3, gguf.Q8_0: 0.01,
           gguf.Q6_K: 0.03, gguf.Q5_K: 0.06, gguf.Q4_K: 0.12, gguf.Q4_0: 0.12}
    for t, tl in tol.items():
        raw = gguf.quantize(x, t)
        check(len(raw) == gguf.type_size(t, n), "%s size" % gguf.GGML_TYPE_NAMES[t])
        y = gguf.dequantize(np.frombuffer(raw, np.uint8), t, n)
        # per-256 block relative RMS error, so the scaled blocks don't dominate
        xb, yb = x.reshape(-1, 256), y.reshape(-1, 256)
        rms = np.sqrt(np.mean(xb ** 2, axis=1))
        err = np.sqrt(np.mean((xb - yb) ** 2, axis=1))
        rel = np.where(rms > 0, err / np.maximum(rms, 1e-30), err)
        check(rel.max() <= tl, "%s roundtrip rel err %.4g > %g"
              % (gguf.GGML_TYPE_NAMES[t], rel.max(), tl))
        check(np.all(yb[0] == 0), "%s zero block" % gguf.GGML_TYPE_NAMES[t])
        if t not in (gguf.F32, gguf.F16, gguf.BF16):
            ys = scalar_dequant(raw, t, n)
            check(np.allclose(y, ys, rtol=1e-6, atol=1e-6 * np.abs(ys).max()),
                  "%s vectorized vs scalar dequant" % gguf.GGML_TYPE_NAMES[t])
        # re-quantizing a dequantized tensor must be (nearly) a fixed point
        raw2 = gguf.quantize(y, t)
        y2 = gguf.dequantize(np.frombuffer(raw2, np.uint8), t, n)
        e2 = np.sqrt(np.mean((y2 - y) ** 2)) / np.sqrt(np.mean(y ** 2))
        check(e2 < tl * 0.7 + 1e-7, "%s requantize drift %.4g" % (gguf.GGML_TYPE_NAMES[t], e2))

    # ggml's reference Q8_0/Q4_0 rules on exact values
    x = np.zeros(32, np.float32)
    x[3] = -2.0
    x[5] = 1.0
    x[7] = 0.5
    raw = np.frombuffer(gguf.quantize(x, gguf.Q4_0), np.uint8)
    check(f16(raw, 0) == 0.25, "Q4_0 d = max/-8")
    q = [(raw[2 + (j % 16)] >> (4 * (j // 16))) & 15 for j in range(32)]
    check(q[3] == 0 and q[5] == 12 and q[7] == 10 and q[0] == 8, "Q4_0 levels %s" % q[:8])
    x = np.linspace(-1, 1, 32).astype(np.float32)
    raw = np.frombuffer(gguf.quantize(x, gguf.Q8_0), np.uint8)
    q = raw[2:].view(np.int8)
    check(q[0] == -127 and q[-1] == 127, "Q8_0 extremes")
    # BF16 round to nearest even
    v = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5], np.float32)
    bits = gguf.f32_to_bf16_bits(v)
    check(list(bits) == [0x3F80, 0x3F82, 0xC020], "bf16 RNE %s" % [hex(b) for b in bits])


def test_file_roundtrip():
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "t.gguf")
        w = gguf.GGUFWriter(path)
        w.add_string("general.architecture", "llama")
        w.add_u32("llama.block_count", 3)
        w.add_f32("llama.rope.freq_base", 10000.0)
        w.add_bool("x.flag", True)
        w.add_kv("x.i64", -5, gguf.INT64)
        w.add_kv("x.f64", 0.125, gguf.FLOAT64)
        w.add_kv("x.u8", 200, gguf.UINT8)
        w.add_array("tokenizer.ggml.tokens", ["<unk>", "▁a", "b\u00e9"], gguf.STRING)
        w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0], gguf.FLOAT32)
        w.add_array("x.ints", [1, 2, 3], gguf.INT32)
        a = rng.standard_normal((5, 64)).astype(np.float32)      # ne=[64,5]
        w.add_tensor("a", a, gguf.F32, [64, 5])
        bq = gguf.quantize_array(rng.standard_normal(512), gguf.Q4_K)
        w.add_tensor("b", bq, gguf.Q4_K, [256, 2])
        c16 = rng.standard_normal(7).astype(np.float16)
        w.add_tensor("c", lambda: c16.tobytes(), gguf.F16, [7])
        w.write()
        r = gguf.GGUFReader(path)
        check(r.version == 3 and r.alignment == 32, "header")
        check(r.kv["general.architecture"] == "llama", "string kv")
        check(r.kv["llama.block_count"] == 3, "u32 kv")
        check(r.kv["llama.rope.freq_base"] == 10000.0, "f32 kv")
        check(r.kv["x.flag"] is True and r.kv["x.i64"] == -5 and r.kv["x.f64"] == 0.125
              and r.kv["x.u8"] == 200, "misc kv")
        check(r.kv["tokenizer.ggml.tokens"] == ["<unk>", "▁a", "b\u00e9"], "string array")
        check(np.array_equal(r.kv["tokenizer.ggml.scores"], [0.0, -1.5, 2.0]), "f32 array")
        check(list(r.kv["x.ints"]) == [1, 2, 3], "int array")
        check(r.tensors["a"].shape == [64, 5] and np.array_equal(r.tensors["a"].to_float(), a),
              "f32 tensor")
        check(np.array_equal(r.tensors["b"].data, bq), "q4_k raw bytes")
        check(np.array_equal(r.tensors["c"].to_float(), c16.astype(np.float32)), "f16 tensor")
        for t in r.tensors.values():
            check((r.data_offset + t.offset) % 32 == 0, "tensor %s aligned" % t.name)
        # non-default alignment is recorded and honored
        path2 = os.path.join(td, "t2.gguf")
        w = gguf.GGUFWriter(path2, alignment=64)
        w.add_tensor("c", c16.tobytes(), gguf.F16, [7])
        w.add_tensor("a", a, gguf.F32, [64, 5])
        w.write()
        r = gguf.GGUFReader(path2)
        check(r.alignment == 64 and (r.data_offset + r.tensors["a"].offset) % 64 == 0,
              "alignment 64")
        check(np.array_equal(r.tensors["a"].to_float(), a), "alignment 64 data")


def main():
    test_hand_blocks()
    test_roundtrips()
    test_file_roundtrip()
    if FAILS:
        print("%d gguf.py check(s) failed" % len(FAILS))
        return 1
    print("gguf.py: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
