#!/usr/bin/python3
"""Pure Python + numpy GGUF v3 reader/writer and ggml block (de)quantizers.

This module is the independent oracle for the C++ loader and kernels, so it is
written from the GGUF spec and the ggml block layouts, not derived from the C++
code.  Only stdlib and numpy are used so it runs on the system python.

Shapes are always in ggml order (ne0 first = the contiguous dimension).  The
numpy view of a 2-D tensor with ne = [n_in, n_out] is therefore [n_out, n_in].
"""

import os
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32

# ---- GGUF metadata value types -------------------------------------------
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, \
    UINT64, INT64, FLOAT64 = range(13)

VTYPE_NAMES = {
    UINT8: "UINT8", INT8: "INT8", UINT16: "UINT16", INT16: "INT16",
    UINT32: "UINT32", INT32: "INT32", FLOAT32: "FLOAT32", BOOL: "BOOL",
    STRING: "STRING", ARRAY: "ARRAY", UINT64: "UINT64", INT64: "INT64",
    FLOAT64: "FLOAT64",
}

# Little-endian numpy dtypes for the fixed-size scalar value types.
_VTYPE_DTYPE = {
    UINT8: np.dtype("<u1"), INT8: np.dtype("<i1"), UINT16: np.dtype("<u2"),
    INT16: np.dtype("<i2"), UINT32: np.dtype("<u4"), INT32: np.dtype("<i4"),
    FLOAT32: np.dtype("<f4"), BOOL: np.dtype("<u1"), UINT64: np.dtype("<u8"),
    INT64: np.dtype("<i8"), FLOAT64: np.dtype("<f8"),
}

# ---- ggml tensor types ----------------------------------------------------
F32, F16, Q4_0, Q4_1 = 0, 1, 2, 3
Q5_0, Q5_1, Q8_0, Q8_1 = 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
I8, I16, I32, I64, F64 = 24, 25, 26, 27, 28
BF16 = 30

QK_K = 256

# type -> (elements per block, bytes per block).  Types we cannot
# (de)quantize are still listed so the reader can walk files that hold them.
GGML_BLOCK = {
    F32: (1, 4), F16: (1, 2), BF16: (1, 2),
    Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24),
    Q8_0: (32, 34), Q8_1: (32, 36),
    Q2_K: (256, 84), Q3_K: (256, 110), Q4_K: (256, 144), Q5_K: (256, 176),
    Q6_K: (256, 210), Q8_K: (256, 292),
    I8: (1, 1), I16: (1, 2), I32: (1, 4), I64: (1, 8), F64: (1, 8),
}

GGML_TYPE_NAMES = {
    F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1",
    Q5_0: "Q5_0", Q5_1: "Q5_1", Q8_0: "Q8_0", Q8_1: "Q8_1", Q2_K: "Q2_K",
    Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K", Q8_K: "Q8_K",
    I8: "I8", I16: "I16", I32: "I32", I64: "I64", F64: "F64",
}
GGML_TYPE_BY_NAME = {v.lower(): k for k, v in GGML_TYPE_NAMES.items()}


def type_size(ggml_type, n_elements):
    """Bytes needed for n_elements of ggml_type (n must be a block multiple)."""
    blk, nbytes = GGML_BLOCK[ggml_type]
    if n_elements % blk:
        raise ValueError("%d elements is not a multiple of the %s block (%d)"
                         % (n_elements, GGML_TYPE_NAMES[ggml_type], blk))
    return n_elements // blk * nbytes


def _align(n, a):
    return (n + a - 1) // a * a


# ===========================================================================
# Writer
# ===========================================================================

def _pack_string(s):
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_scalar(value, vtype):
    if vtype == STRING:
        return _pack_string(value)
    if vtype == BOOL:
        return struct.pack("<B", 1 if value else 0)
    return np.array(value, dtype=_VTYPE_DTYPE[vtype]).tobytes()


class _PendingTensor:
    __slots__ = ("name", "data", "ggml_type", "shape", "nbytes", "offset")


class GGUFWriter:
    """Collects metadata and tensor references, then streams them to disk.

    Tensor data may be bytes, a numpy array (written as its raw bytes, so pass
    already-quantized uint8 for block types), or a zero-argument callable that
    returns either; a callable is only invoked while writing, which lets a
    caller generate a model larger than RAM one tensor at a time.
    """

    def __init__(self, path, version=3, alignment=GGUF_DEFAULT_ALIGNMENT):
        self.path = path
        self.version = version
        self.alignment = alignment
        self._kv = []          # list of (key, packed bytes of type + value)
        self._keys = set()
        self._tensors = []
        self._tensor_names = set()
        if alignment != GGUF_DEFAULT_ALIGNMENT:
            self.add_u32("general.alignment", alignment)

    # ---- metadata --------------------------------------------------------
    def _put(self, key, payload):
        if key in self._keys:
            raise KeyError("duplicate GGUF key %r" % key)
        self._keys.add(key)
        self._kv.append((key, payload))

    def add_kv(self, key, value, vtype):
        if vtype == ARRAY:
            raise ValueError("use add_array for arrays")
        self._put(key, struct.pack("<I", vtype) + _pack_scalar(value, vtype))

    def add_array(self, key, values, elem_vtype):
        n = len(values)
        head = struct.pack("<IIQ", ARRAY, elem_vtype, n)
        if elem_vtype == STRING:
            body = b"".join(_pack_string(v) for v in values)
        elif elem_vtype == BOOL:
            body = np.asarray(values, dtype=bool).astype(np.uint8).tobytes()
        else:
            body = np.asarray(values).astype(_VTYPE_DTYPE[elem_vtype]).tobytes()
        self._put(key, head + body)

    def add_string(self, key, value):
        self.add_kv(key, value, STRING)

    def add_u32(self, key, value):
        self.add_kv(key, value, UINT32)

    def add_i32(self, key, value):
        self.add_kv(key, value, INT32)

    def add_u64(self, key, value):
        self.add_kv(key, value, UINT64)

    def add_f32(self, key, value):
        self.add_kv(key, value, FLOAT32)

    def add_bool(self, key, value):
        self.add_kv(key, value, BOOL)

    def add_value(self, key, value, vtype, elem_vtype=None):
        """Adds a value with an explicit type, arrays included (used to copy
        metadata from a GGUFReader with its original types)."""
        if vtype == ARRAY:
            self.add_array(key, value, elem_vtype)
        else:
            self.add_kv(key, value, vtype)

    # ---- tensors ---------------------------------------------------------
    def add_tensor(self, name, data, ggml_type, shape):
        if name in self._tensor_names:
            raise KeyError("duplicate tensor %r" % name)
        shape = [int(s) for s in shape]
        if not 1 <= len(shape) <= 4:
            raise ValueError("tensor %r: 1..4 dims expected" % name)
        n = int(np.prod(shape, dtype=np.int64))
        blk, _ = GGML_BLOCK[ggml_type]
        if shape[0] % blk:
            raise ValueError("tensor %r: ne0=%d not a multiple of block %d"
                             % (name, shape[0], blk))
        t = _PendingTensor()
        t.name, t.data, t.ggml_type, t.shape = name, data, ggml_type, shape
        t.nbytes = type_size(ggml_type, n)
        if not callable(data):
            got = _raw_nbytes(data)
            if got != t.nbytes:
                raise ValueError("tensor %r: %d bytes given, %d expected"
                                 % (name, got, t.nbytes))
        self._tensor_names.add(name)
        self._tensors.append(t)

    # ---- output ----------------------------------------------------------
    def write(self, progress=None):
        """Writes the file.  progress(i, n, name) is called per tensor."""
        offset = 0
        for t in self._tensors:
            t.offset = offset
            offset = _align(offset + t.nbytes, self.alignment)

        tmp = self.path + ".partial"
        with open(tmp, "wb") as f:
            f.write(GGUF_MAGIC)
            f.write(struct.pack("<IQQ", self.version, len(self._tensors), len(self._kv)))
            for key, payload in self._kv:
                f.write(_pack_string(key))
                f.write(payload)
            for t in self._tensors:
                f.write(_pack_string(t.name))
                f.write(struct.pack("<I", len(t.shape)))
                f.write(struct.pack("<%dQ" % len(t.shape), *t.shape))
                f.write(struct.pack("<IQ", t.ggml_type, t.offset))
            pos = f.tell()
            f.write(b"\0" * (_align(pos, self.alignment) - pos))
            data_start = f.tell()
            for i, t in enumerate(self._tensors):
                if progress:
                    progress(i, len(self._tensors), t.name)
                pos = f.tell() - data_start
                assert pos <= t.offset
                f.write(b"\0" * (t.offset - pos))
                data = t.data() if callable(t.data) else t.data
                if _raw_nbytes(data) != t.nbytes:
                    raise ValueError("tensor %r: producer gave %d bytes, %d expected"
                                     % (t.name, _raw_nbytes(data), t.nbytes))
                _write_raw(f, data)
                t.data = None  # drop the reference so big models free as we go
                del data
            pos = f.tell() - data_start
            f.write(b"\0" * (_align(pos, self.alignment) - pos))
        os.replace(tmp, self.path)


def _raw_nbytes(data):
    if isinstance(data, np.ndarray):
        return data.nbytes
    return len(memoryview(data).cast("B"))


def _write_raw(f, data):
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        # memoryview avoids the copy tobytes() would make
        f.write(memoryview(data.reshape(-1).view(np.uint8)))
    else:
        f.write(data)


# ===========================================================================
# Reader
# ===========================================================================

class GGUFTensor:
    __slots__ = ("name", "ggml_type", "shape", "offset", "nbytes", "data")

    @property
    def n_elements(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def type_name(self):
        return GGML_TYPE_NAMES.get(self.ggml_type, str(self.ggml_type))

    def to_float(self):
        """Dequantized float32 array in numpy order (shape reversed from ne)."""
        out = dequantize(self.data, self.ggml_type, self.n_elements)
        return out.reshape(tuple(reversed(self.shape)))

    def __repr__(self):
        return "GGUFTensor(%s, %s, ne=%s)" % (self.name, self.type_name, self.shape)


class GGUFReader:
    """Parses a GGUF file; tensor data stays on disk as memmap views."""

    def __init__(self, path):
        self.path = path
        self._mm = np.memmap(path, dtype=np.uint8, mode="r")
        buf = memoryview(self._mm)
        self._buf = buf
        if bytes(buf[0:4]) != GGUF_MAGIC:
            raise ValueError("%s: not a GGUF file" % path)
        self.version, = struct.unpack_from("<I", buf, 4)
        if self.version not in (2, 3):
            raise ValueError("%s: unsupported GGUF version %d" % (path, self.version))
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos = 24
        self.kv = {}
        self.kv_types = {}    # key -> (vtype, elem_vtype or None)
        for _ in range(n_kv):
            key, pos = self._read_string(pos)
            vtype, = struct.unpack_from("<I", buf, pos)
            pos += 4
            value, elem, pos = self._read_value(vtype, pos)
            self.kv[key] = value
            self.kv_types[key] = (vtype, elem)
        self.alignment = int(self.kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        infos = []
        for _ in range(n_tensors):
            name, pos = self._read_string(pos)
            n_dims, = struct.unpack_from("<I", buf, pos)
            pos += 4
            shape = list(struct.unpack_from("<%dQ" % n_dims, buf, pos))
            pos += 8 * n_dims
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            infos.append((name, shape, ggml_type, offset))
        self.data_offset = _align(pos, self.alignment)
        self.tensors = {}
        for name, shape, ggml_type, offset in infos:
            t = GGUFTensor()
            t.name, t.shape, t.ggml_type, t.offset = name, shape, ggml_type, offset
            n = int(np.prod(shape, dtype=np.int64))
            t.nbytes = type_size(ggml_type, n)
            start = self.data_offset + offset
            if start + t.nbytes > len(self._mm):
                raise ValueError("tensor %r extends past end of file" % name)
            t.data = self._mm[start:start + t.nbytes]
            self.tensors[name] = t

    def _read_string(self, pos):
        n, = struct.unpack_from("<Q", self._buf, pos)
        pos += 8
        s = bytes(self._buf[pos:pos + n]).decode("utf-8", "surrogateescape")
        return s, pos + n

    def _read_value(self, vtype, pos):
        buf = self._buf
        if vtype == STRING:
            s, pos = self._read_string(pos)
            return s, None, pos
        if vtype == ARRAY:
            elem, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if elem == STRING:
                out = []
                for _ in range(n):
                    s, pos = self._read_string(pos)
                    out.append(s)
                return out, elem, pos
            if elem == ARRAY:
                out = []
                for _ in range(n):
                    sub_t, = struct.unpack_from("<I", buf, pos)
                    v, _, pos = self._read_value(sub_t, pos + 4)
                    out.append(v)
                return out, elem, pos
            dt = _VTYPE_DTYPE[elem]
            arr = np.frombuffer(buf, dtype=dt, count=n, offset=pos).copy()
            if elem == BOOL:
                arr = arr.astype(bool)
            return arr, elem, pos + n * dt.itemsize
        dt = _VTYPE_DTYPE[vtype]
        v = np.frombuffer(buf, dtype=dt, count=1, offset=pos)[0]
        pos += dt.itemsize
        if vtype == BOOL:
            return bool(v), None, pos
        if vtype in (FLOAT32, FLOAT64):
            return float(v), None, pos
        return int(v), None, pos

    def get(self, key, default=None):
        return self.kv.get(key, default)


# ===========================================================================
# Number formats
# ===========================================================================

def f32_to_bf16_bits(x):
    """Round-to-nearest-even fp32 -> bf16 bits, NaN kept quiet (as ggml)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    if nan.any():
        r = np.where(nan, ((u >> 16) | 64).astype(np.uint16), r)
    return r


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _f16(a):
    """fp16 bits (as float32) of float32 values, round-to-nearest-even."""
    return a.astype(np.float16).astype(np.float32)


def _round_away(x):
    """C roundf: halves away from zero (numpy's rint rounds halves to even)."""
    t = np.trunc(x)
    frac = x - t
    return t + np.where(np.abs(frac) >= 0.5, np.sign(x), 0).astype(x.dtype)


def _nearest_int(x):
    """ggml nearest_int: the fp add trick, i.e. round half to even."""
    return np.rint(x).astype(np.int32)


# ===========================================================================
# Dequantization (raw uint8 bytes -> float32)
# ===========================================================================

def _blocks(raw, ggml_type, n_elements):
    blk, nbytes = GGML_BLOCK[ggml_type]
    raw = np.asarray(raw, dtype=np.uint8).reshape(-1)
    need = type_size(ggml_type, n_elements)
    if raw.size < need:
        raise ValueError("%d bytes given, %d needed" % (raw.size, need))
    return raw[:need].reshape(-1, nbytes)


def _half(b, lo):
    """The f16 stored at byte lo of each block row, as float32 column."""
    return np.ascontiguousarray(b[:, lo:lo + 2]).view(np.float16).astype(np.float32)


def _scale_min_k4(sc12):
    """Unpacks the 12-byte 6-bit scale/min field of Q4_K/Q5_K -> ([nb,8],[nb,8])."""
    q = sc12.astype(np.uint8)
    sc = np.empty((q.shape[0], 8), np.uint8)
    mn = np.empty((q.shape[0], 8), np.uint8)
    sc[:, 0:4] = q[:, 0:4] & 63
    mn[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    mn[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, mn


def _pack_scale_min_k4(ls, lm):
    """Inverse of _scale_min_k4: 6-bit values [nb,8] each -> [nb,12] bytes."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def _deq_q4_0(b):
    d = _half(b, 0)
    qs = b[:, 2:18]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.int8) - 8
    return q.astype(np.float32) * d


def _deq_q8_0(b):
    d = _half(b, 0)
    return b[:, 2:34].view(np.int8).astype(np.float32) * d


def _deq_q4_k(b):
    nb = b.shape[0]
    d, dmin = _half(b, 0), _half(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:144].reshape(nb, 4, 32)
    # each 32-byte group holds 64 elements: low nibbles then high nibbles
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32)
    y = (d * sc.astype(np.float32))[:, :, None] * q.astype(np.float32) \
        - (dmin * mn.astype(np.float32))[:, :, None]
    return y.reshape(nb, 256)


def _deq_q5_k(b):
    nb = b.shape[0]
    d, dmin = _half(b, 0), _half(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    qh = b[:, 16:48]                      # [nb, 32]
    qs = b[:, 48:176].reshape(nb, 4, 32)
    lo = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(nb, 8, 32)
    # sub-block s (0..7) takes its 5th bit from bit s of qh[l]
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    hi = (qh[:, None, :] >> shifts) & 1
    q = lo + (hi << 4)
    y = (d * sc.astype(np.float32))[:, :, None] * q.astype(np.float32) \
        - (dmin * mn.astype(np.float32))[:, :, None]
    return y.reshape(nb, 256)


def _deq_q6_k(b):
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 64)
    qh = b[:, 128:192].reshape(nb, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32)  # [nb, 16]
    d = _half(b, 208)
    # per 128-element half: four 32-groups; group g low 4 bits from
    # ql[(g&1)*32 + l] nibble (g>>1), high 2 bits from qh[l] bits 2g..2g+1
    lo = np.stack([ql[:, :, 0:32] & 0xF, ql[:, :, 32:64] & 0xF,
                   ql[:, :, 0:32] >> 4, ql[:, :, 32:64] >> 4], axis=2)   # [nb,2,4,32]
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    hi = (qh[:, :, None, :] >> shifts) & 3
    q = (lo | (hi << 4)).astype(np.int8).astype(np.float32) - 32.0
    q = q.reshape(nb, 16, 16)
    y = (d * scales)[:, :, None] * q
    return y.reshape(nb, 256)


def dequantize(raw, ggml_type, n_elements):
    """raw bytes of n_elements of ggml_type -> flat float32 array."""
    n_elements = int(n_elements)
    if ggml_type == F32:
        return _blocks(raw, F32, n_elements).reshape(-1).view("<f4").astype(np.float32)
    if ggml_type == F16:
        return _blocks(raw, F16, n_elements).reshape(-1).view("<f2").astype(np.float32)
    if ggml_type == BF16:
        return bf16_bits_to_f32(_blocks(raw, BF16, n_elements).reshape(-1).view("<u2"))
    fn = {Q4_0: _deq_q4_0, Q8_0: _deq_q8_0, Q4_K: _deq_q4_k,
          Q5_K: _deq_q5_k, Q6_K: _deq_q6_k}.get(ggml_type)
    if fn is None:
        raise NotImplementedError("dequantize: %s" % GGML_TYPE_NAMES.get(ggml_type, ggml_type))
    b = _blocks(raw, ggml_type, n_elements)
    out = np.empty(n_elements, np.float32)
    blk = GGML_BLOCK[ggml_type][0]
    step = max(1, (1 << 20) // blk)   # bound temporaries to ~1M elements
    for i in range(0, b.shape[0], step):
        out[i * blk:(i + step) * blk] = fn(b[i:i + step]).reshape(-1)
    return out


# ===========================================================================
# Quantization (float -> raw uint8 bytes)
#
# Q4_0 and Q8_0 follow ggml's reference quantizers exactly.  The k-quants use
# a simpler (min/max, abs-max) search than ggml's iterative one: the output is
# a valid ggml block that any conforming dequantizer must decode identically,
# which is all the oracle needs; the quantization error is a little higher.
# ===========================================================================

def _q_q4_0(x):
    nb = x.shape[0]
    idx = np.argmax(np.abs(x), axis=1)   # first index of the abs max, as ggml
    mx = x[np.arange(nb), idx][:, None]
    d = mx / np.float32(-8)
    with np.errstate(divide="ignore"):
        idn = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = x * idn + np.float32(8.5)
    q = np.minimum(15, np.trunc(v).astype(np.int32)).astype(np.uint8)
    out = np.empty((nb, 18), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:18] = q[:, 0:16] | (q[:, 16:32] << 4)
    return out


def _q_q8_0(x):
    nb = x.shape[0]
    amax = np.max(np.abs(x), axis=1, keepdims=True)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        idn = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = _round_away(x * idn).astype(np.int8)
    out = np.empty((nb, 34), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:34] = q.view(np.uint8)
    return out


def _kquant_scales(x, nmax):
    """Shared Q4_K/Q5_K step: per 32-sub-block affine params, 6-bit coded.

    Returns (d, dmin as f16-rounded float32 [nb,1]), (ls, lm uint8 [nb,8]) and
    the quantized levels L [nb,8,32] computed against the coded params.
    """
    nb = x.shape[0]
    xs = x.reshape(nb, 8, 32)
    mn = np.minimum(xs.min(axis=2), 0)          # ggml keeps the min <= 0
    mx = xs.max(axis=2)
    scale = (mx - mn) / np.float32(nmax)        # [nb, 8]
    mins = -mn                                  # stored positive
    max_scale = scale.max(axis=1, keepdims=True)
    max_min = mins.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_s = np.where(max_scale > 0, np.float32(63) / max_scale, 0).astype(np.float32)
        inv_m = np.where(max_min > 0, np.float32(63) / max_min, 0).astype(np.float32)
    ls = np.minimum(63, _nearest_int(inv_s * scale)).astype(np.uint8)
    lm = np.minimum(63, _nearest_int(inv_m * mins)).astype(np.uint8)
    d = _f16(max_scale / np.float32(63))
    dmin = _f16(max_min / np.float32(63))
    dsub = d * ls.astype(np.float32)            # [nb, 8]
    msub = dmin * lm.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = _nearest_int((xs + msub[:, :, None]) / dsub[:, :, None])
    L = np.where(dsub[:, :, None] != 0, np.clip(L, 0, nmax), 0).astype(np.uint8)
    return d, dmin, ls, lm, L


def _q_q4_k(x):
    nb = x.shape[0]
    d, dmin, ls, lm, L = _kquant_scales(x, 15)
    out = np.empty((nb, 144), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:4] = dmin.astype(np.float16).view(np.uint8)
    out[:, 4:16] = _pack_scale_min_k4(ls, lm)
    L = L.reshape(nb, 4, 2, 32)
    out[:, 16:144] = (L[:, :, 0, :] | (L[:, :, 1, :] << 4)).reshape(nb, 128)
    return out


def _q_q5_k(x):
    nb = x.shape[0]
    d, dmin, ls, lm, L = _kquant_scales(x, 31)
    out = np.empty((nb, 176), np.uint8)
    out[:, 0:2] = d.astype(np.float16).view(np.uint8)
    out[:, 2:4] = dmin.astype(np.float16).view(np.uint8)
    out[:, 4:16] = _pack_scale_min_k4(ls, lm)
    hi = (L >> 4) & 1                                    # [nb, 8, 32]
    qh = np.zeros((nb, 32), np.uint8)
    for s in range(8):
        qh |= hi[:, s, :] << s
    out[:, 16:48] = qh
    lo = (L & 0xF).reshape(nb, 4, 2, 32)
    out[:, 48:176] = (lo[:, :, 0, :] | (lo[:, :, 1, :] << 4)).reshape(nb, 128)
    return out


def _q_q6_k(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 16, 16)
    idx = np.argmax(np.abs(xs), axis=2)
    mx = np.take_along_axis(xs, idx[:, :, None], axis=2)[:, :, 0]   # signed
    scale = mx / np.float32(-32)                 # group scale, level -32 hits mx
    sidx = np.argmax(np.abs(scale), axis=1)
    max_scale = scale[np.arange(nb), sidx][:, None]
    zero = np.abs(max_scale) < 1e-15
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, 0, np.float32(-128) / max_scale).astype(np.float32)
        d = _f16(np.where(zero, 0, np.float32(1) / iscale).astype(np.float32))
    sc = np.clip(_nearest_int(iscale * scale), -128, 127).astype(np.int8)
    dsub = d * sc.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        L = _nearest_int(xs / dsub[:, :, None])
    L = np.where(dsub[:, :, None] != 0, np.clip(L, -32, 31), 0) + 32
    L = L.astype(np.uint8).reshape(nb, 2, 4, 32)          # [half, group, l]
    out = np.zeros((nb, 210), np.uint8)
    ql = np.empty((nb, 2, 64), np.uint8)
    ql[:, :, 0:32] = (L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4)
    ql[:, :, 32:64] = (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | \
         ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out[:, 0:128] = ql.reshape(nb, 128)
    out[:, 128:192] = qh.reshape(nb, 64)
    out[:, 192:208] = np.where(zero, 0, sc).astype(np.int8).view(np.uint8)
    out[:, 208:210] = d.astype(np.float16).view(np.uint8)
    return out


_QUANTIZERS = {Q4_0: _q_q4_0, Q8_0: _q_q8_0, Q4_K: _q_q4_k,
               Q5_K: _q_q5_k, Q6_K: _q_q6_k}


def quantize_array(x, ggml_type):
    """Float array (any shape, C order kept) -> flat uint8 ndarray of ggml_type.

    Preferred for big tensors: the result can go straight to GGUFWriter
    without the extra copy that bytes() would make.
    """
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if ggml_type == F32:
        return x.astype("<f4").view(np.uint8)
    if ggml_type == F16:
        return x.astype("<f2").view(np.uint8)
    if ggml_type == BF16:
        return f32_to_bf16_bits(x).astype("<u2").view(np.uint8)
    fn = _QUANTIZERS.get(ggml_type)
    if fn is None:
        raise NotImplementedError("quantize: %s" % GGML_TYPE_NAMES.get(ggml_type, ggml_type))
    blk, nbytes = GGML_BLOCK[ggml_type]
    if x.size % blk:
        raise ValueError("%d elements is not a multiple of %d" % (x.size, blk))
    xb = x.reshape(-1, blk)
    out = np.empty((xb.shape[0], nbytes), np.uint8)
    step = max(1, (1 << 19) // blk)   # ~512K elements per pass bounds temporaries
    for i in range(0, xb.shape[0], step):
        out[i:i + step] = fn(xb[i:i + step])
    return out.reshape(-1)


def quantize(x, ggml_type):
    """Float array -> raw bytes of ggml_type (see quantize_array)."""
    return quantize_array(x, ggml_type).tobytes()


def _main(argv):
    """`gguf.py FILE` dumps metadata and tensor table (a debugging aid)."""
    if len(argv) != 2:
        print("usage: gguf.py FILE.gguf", file=sys.stderr)
        return 2
    r = GGUFReader(argv[1])
    print("GGUF v%d, alignment %d, %d kv, %d tensors"
          % (r.version, r.alignment, len(r.kv), len(r.tensors)))
    for k, v in r.kv.items():
        if isinstance(v, (list, np.ndarray)) and len(v) > 8:
            v = "[%d items: %s ...]" % (len(v), ", ".join(repr(x) for x in list(v[:5])))
        print("  %-48s %s" % (k, v))
    for t in r.tensors.values():
        print("  %-40s %-5s %s" % (t.name, t.type_name, t.shape))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
