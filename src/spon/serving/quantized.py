"""Block-quantized weights as the sparse kernel reads them: GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q4_K and Q6_K, input-major.

A GGUF tensor [out, in] is a list of blocks per output row, each block B consecutive inputs (32; Q6_K: 16 within its
256-value super-blocks) with integer codes and a scale (and a minimum), W[o, i] = s * code + m. `QuantWeight` keeps the
same codes and the same scales, re-laid so that input i's codes for every output are one contiguous row (a dropped input
skips its bytes) and the scales are a [blocks, out] table (see kernels/quant_gemv.c for the row formats).
Nothing is requantized: `dequantize()` equals the `gguf` package's reference dequantization bit for bit (tested), so
calibration, SPON training and serving all see the weights the file holds. `quantize` makes such a weight from a float
matrix with the `gguf` package's round-to-nearest quantizers (the types it can quantize: Q8_0, Q4_0, Q4_1, Q5_0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spon.errors import SponError

__all__ = ["QuantWeight", "TYPES", "QUANTIZABLE", "from_gguf", "quantize", "gguf_type_name"]

# type -> (inputs per block, bytes per block)
TYPES = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q4_K": (256, 144), "Q6_K": (256, 210)}
QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0")  # what `quantize` makes from float weights (the gguf package's quantizers)
KINDS = {"S8": 0, "U4": 1, "U5": 2}


def gguf_type_name(qtype) -> str:
    """"Q4_1" from a `gguf.GGMLQuantizationType` (or its name)."""
    return getattr(qtype, "name", str(qtype)).upper()


def _half(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes of a block -> its 32 codes: element e < 16 in the low nibble of byte e, e >= 16 in the high one of e - 16."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _unpack(name: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    """(codes [out, in], scale [out, nb], minimum [out, nb] or None, inputs per scale, offset) of raw blocks [out, n,
    bytes]: W = scale (code - offset) + minimum."""
    out = blocks.shape[0]
    if name == "Q8_0":
        d = _half(blocks[..., 0:2])
        return blocks[..., 2:].copy().view(np.int8).reshape(out, -1), d, None, 32, 0
    if name == "Q4_0":  # d (q - 8)
        return _nibbles(blocks[..., 2:]).reshape(out, -1), _half(blocks[..., 0:2]), None, 32, 8
    if name == "Q4_1":  # d q + m
        return _nibbles(blocks[..., 4:]).reshape(out, -1), _half(blocks[..., 0:2]), _half(blocks[..., 2:4]), 32, 0
    if name == "Q5_0":
        d = _half(blocks[..., 0:2])
        qh = np.ascontiguousarray(blocks[..., 2:6]).view("<u4")  # [out, n, 1]: bit e = element e's fifth bit
        fifth = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        return (_nibbles(blocks[..., 6:]) | (fifth << 4)).reshape(out, -1), d, None, 32, 16  # d (q - 16)
    if name == "Q4_K":
        import gguf.quants

        n = blocks.shape[1]
        d, dmin = _half(blocks[..., 0:2]), _half(blocks[..., 2:4])
        sc, mn = gguf.quants.Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
        sc, mn = sc.reshape(out, n, 8).astype(np.float32), mn.reshape(out, n, 8).astype(np.float32)
        qs = blocks[..., 16:].reshape(out, n, 4, 32)  # four runs of 32 bytes: sub-block 2p low nibbles, 2p + 1 high
        codes = np.stack([qs & 15, qs >> 4], axis=3).reshape(out, -1)
        return codes, (d[..., None] * sc).reshape(out, -1), (-(dmin[..., None] * mn)).reshape(out, -1), 32, 0
    if name == "Q6_K":
        n = blocks.shape[1]
        ql, qh = blocks[..., 0:128].reshape(out, n, 2, 1, 64), blocks[..., 128:192].reshape(out, n, 2, 1, 32)
        sc = np.ascontiguousarray(blocks[..., 192:208]).view(np.int8).astype(np.float32)
        d = _half(blocks[..., 208:210])
        low = ((ql >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)) & 15).reshape(out, n, 8, 32)
        high = ((qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)) & 3).reshape(out, n, 8, 32)
        codes = ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8).reshape(out, -1)
        return codes, (d[..., None] * sc).reshape(out, -1), None, 16, 0
    raise SponError(f"GGUF type {name} has no quantized sparse kernel; supported: {', '.join(TYPES)}")


def _exact_f16(a: np.ndarray | None) -> bool:
    return a is None or bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


@dataclass
class QuantWeight:
    """One [out, in] weight in the kernel's input-major block format (kernels/quant_gemv.c).

    q: S8 int8 [in, out]; U4 uint8 [in, out/2] (byte j: column j low, column j + out/2 high); U5: U4 plus hb.
    hb: U5 fifth-bit plane uint8 [in, out/8]. scale, minimum: [in/block, out], float16 where exact, else float32.
    """

    type: str
    out_features: int
    in_features: int
    block: int
    kind: str
    q: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor | None = None
    hb: torch.Tensor | None = None
    offset: float = 0.0  # W = scale * (code - offset) + minimum: Q4_0's 8 and Q5_0's 16 cost no table

    @classmethod
    def from_codes(cls, name: str, codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray | None, block: int,
                   offset: int = 0) -> "QuantWeight":
        out, n_in = codes.shape
        rows = np.ascontiguousarray(codes.T)  # [in, out]
        if codes.dtype == np.int8:
            kind, q, hb = "S8", rows, None
        elif codes.max(initial=0) < 16 and out % 2 == 0:
            kind, q, hb = "U4", rows[:, : out // 2] | (rows[:, out // 2 :] << 4), None
        elif codes.max(initial=0) < 32 and out % 8 == 0:
            nib, fifth, e = rows & 15, rows >> 4, out // 8
            kind, q = "U5", nib[:, : out // 2] | (nib[:, out // 2 :] << 4)
            hb = np.zeros((n_in, e), dtype=np.uint8)
            for k in range(8):
                hb |= fifth[:, k * e : (k + 1) * e] << k
        else:  # an odd width: the codes one byte each (unsigned values below 32 fit int8 as they are)
            kind, q, hb = "S8", rows.astype(np.int8), None
        dtype = np.float16 if _exact_f16(scale) and _exact_f16(minimum) else np.float32

        def table(a):
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a.T).astype(dtype))

        return cls(name, out, n_in, block, kind, torch.from_numpy(np.ascontiguousarray(q)), table(scale), table(minimum),
                   None if hb is None else torch.from_numpy(hb), float(offset))

    def codes(self) -> torch.Tensor:
        """The integer codes, input-major [in, out], as int16."""
        if self.kind == "S8":
            return self.q.to(torch.int16)
        b = self.q.to(torch.int16)
        c = torch.cat([b & 15, b >> 4], dim=1)
        if self.kind == "U5":  # bit k of plane byte j: column j + k * out/8
            h = self.hb.to(torch.int16)
            c = c + 16 * torch.cat([(h >> k) & 1 for k in range(8)], dim=1)
        return c

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """W[ids, :] in float32 ([len(ids), in]): the given outputs' rows, as `dequantize` gives them (an embedding tied
        to this weight looks tokens up here)."""
        ids = ids.long().reshape(-1)
        if self.kind == "S8":
            c = self.q[:, ids].to(torch.int16)
        else:
            h = self.out_features // 2
            b = self.q[:, ids % h].to(torch.int16)
            c = torch.where(ids >= h, b >> 4, b & 15)
            if self.kind == "U5":
                e = self.out_features // 8
                c = c + 16 * ((self.hb[:, ids % e].to(torch.int16) >> (ids // e)) & 1)
        rep = lambda t: t[:, ids].float().repeat_interleave(self.block, dim=0)  # noqa: E731
        w = rep(self.scale) * (c.float() - self.offset)
        return (w + rep(self.minimum) if self.minimum is not None else w).t()

    def dequantize_t(self) -> torch.Tensor:
        """W^T [in, out] in float32: scale * code + minimum, per block of inputs (GGUF's own values, exactly)."""
        rep = lambda t: t.float().repeat_interleave(self.block, dim=0)  # noqa: E731  [nb, out] -> [in, out]
        w = rep(self.scale) * (self.codes().float() - self.offset)
        return w + rep(self.minimum) if self.minimum is not None else w

    def dequantize(self) -> torch.Tensor:
        """W [out, in] in float32."""
        return self.dequantize_t().t().contiguous()

    @property
    def nbytes(self) -> int:
        """Bytes held: codes, fifth bits, scales and minimums."""
        return sum(t.numel() * t.element_size() for t in (self.q, self.hb, self.scale, self.minimum) if t is not None)


def from_gguf(qtype, data: np.ndarray, shape: tuple[int, int]) -> QuantWeight:
    """A `QuantWeight` from a GGUF tensor's raw bytes (`GGUFReader`'s tensor.data) of shape (out, in)."""
    name = gguf_type_name(qtype)
    if name not in TYPES:
        raise SponError(f"GGUF type {name} has no quantized sparse kernel; supported: {', '.join(TYPES)}")
    qk, size = TYPES[name]
    out, n_in = shape
    if n_in % qk:
        raise SponError(f"a {name} tensor of {n_in} inputs is not a whole number of {qk}-input blocks")
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(out, n_in // qk, size)
    return QuantWeight.from_codes(name, *_unpack(name, blocks))


def quantize(weight: torch.Tensor, qtype: str) -> QuantWeight:
    """Quantize a float weight [out, in] to a GGUF type with the `gguf` package's round-to-nearest quantizer."""
    import gguf
    import gguf.quants

    name = qtype.upper()
    if name not in QUANTIZABLE:
        raise SponError(f"cannot quantize to {qtype}: spon quantizes float weights to {', '.join(q.lower() for q in QUANTIZABLE)} "
                        "(K types come only from a GGUF file)")
    out, n_in = weight.shape
    if n_in % 32:
        raise SponError(f"cannot quantize a weight of {n_in} inputs to {name}: blocks are 32 inputs")
    raw = gguf.quants.quantize(weight.detach().float().cpu().numpy(), gguf.GGMLQuantizationType[name])
    return from_gguf(name, raw, (out, n_in))
