/* Sparse-input GEMV over block-quantized weights (GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K), for batch-1 decode:
 * y = W S(x) + b, reading only the quantized bytes of the kept inputs.
 *
 * A GGUF block holds B consecutive inputs (32; 16 in Q6_K's sub-blocks) of one output under one scale s (and a
 * minimum m for the _1 and K types): W[o, i] = s[b, o] * q[i, o] + m[b, o] with q a small integer. Stored input-major,
 * as the float kernel stores its rows, input i's codes for every output are one contiguous row, so a dropped input
 * skips its row; and within a block the scale factors out:
 *
 *     y[o] += s[b, o] * sum_{kept i in b} x_i q[i, o]  +  m[b, o] * sum_{kept i in b} x_i
 *
 * so a block costs one pass over its kept rows into a float accumulator, then one multiply-add per output for its
 * scale row (read only when the block has a kept input: at 50% sparsity every block of 32 has one). The values are the
 * ones GGUF's reference dequantization gives, exactly (the scale and minimum are stored so that s * q + m is that
 * value in exact arithmetic); only the order of the float additions differs.
 *
 * Row formats (kind):
 *   S8: int8 codes [in, out] (Q8_0; Q6_K's q - 32, which is signed 6-bit).
 *   U4: 4-bit codes, two per byte [in, out/2]: byte j holds column j (low nibble) and column j + out/2 (high nibble),
 *       so each nibble of a run of bytes lands in a contiguous run of outputs (no interleaving to undo).
 *   U5: U4's nibbles plus one plane of fifth bits [in, out/8]: bit k of byte j is the fifth bit of column
 *       j + k * out/8 (Q5_0), so a run of plane bytes serves eight contiguous runs of outputs.
 * Scales and minimums are [nblocks, out], float16 (the simple types' own, exact) or float32 (K types' d * sc products).
 *
 * Threads split the blocks (contiguous ranges of inputs) and keep their own accumulators; after a barrier they sum
 * them and the bias into y, each over a slice of the outputs. x and y are float32.
 * Built by spon/serving/kernels/quant_cpu.py with -O3 -march=native -fopenmp.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "spon_qplan.h"

/* Rows of kept inputs are not at predictable addresses (the dropped ones between them), and a row is a few cache lines
 * only, too short for the hardware prefetchers to ramp up: while a pass adds four rows, it asks for the same line of
 * the next pass's four, into L2 (as the float kernel's bf16 loop does). */
#define PREFETCH4(a, b, c, d) \
    (__builtin_prefetch((a), 0, 1), __builtin_prefetch((b), 0, 1), __builtin_prefetch((c), 0, 1), __builtin_prefetch((d), 0, 1))

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; --exp; }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#ifdef __AVX2__
/* The same row loops with explicit AVX2: gcc's own vectorisation of the byte-to-float widening is several times
 * slower (shuffles per element). Eight outputs per vector; four rows a pass; a scalar loop finishes a row. */
static inline __m256 s8x8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }

static void rows_s8_avx2(const int8_t *q, int64_t out, const int64_t *idx, const float *val, int64_t k, int64_t k1,
                         float *acc) {
    int64_t n8 = out & ~(int64_t)7;
    for (; k + 4 <= k1; k += 4) {
        const int8_t *r0 = q + idx[k] * out, *r1 = q + idx[k + 1] * out, *r2 = q + idx[k + 2] * out,
                     *r3 = q + idx[k + 3] * out;
        __m256 a0 = _mm256_set1_ps(val[k]), a1 = _mm256_set1_ps(val[k + 1]), a2 = _mm256_set1_ps(val[k + 2]),
               a3 = _mm256_set1_ps(val[k + 3]);
        const int8_t *n0 = q + idx[k + 4 < k1 ? k + 4 : k] * out, *n1 = q + idx[k + 5 < k1 ? k + 5 : k] * out;
        const int8_t *n2 = q + idx[k + 6 < k1 ? k + 6 : k] * out, *n3 = q + idx[k + 7 < k1 ? k + 7 : k] * out;
        for (int64_t j = 0; j < n8; j += 8) {
            if (!(j & 63)) PREFETCH4(n0 + j, n1 + j, n2 + j, n3 + j);
            __m256 s = _mm256_loadu_ps(acc + j);
            s = _mm256_fmadd_ps(a0, s8x8(r0 + j), s);
            s = _mm256_fmadd_ps(a1, s8x8(r1 + j), s);
            s = _mm256_fmadd_ps(a2, s8x8(r2 + j), s);
            s = _mm256_fmadd_ps(a3, s8x8(r3 + j), s);
            _mm256_storeu_ps(acc + j, s);
        }
        for (int64_t j = n8; j < out; ++j)
            acc[j] += val[k] * r0[j] + val[k + 1] * r1[j] + val[k + 2] * r2[j] + val[k + 3] * r3[j];
    }
    for (; k < k1; ++k) {
        const int8_t *r0 = q + idx[k] * out;
        __m256 a0 = _mm256_set1_ps(val[k]);
        for (int64_t j = 0; j < n8; j += 8) _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(a0, s8x8(r0 + j), _mm256_loadu_ps(acc + j)));
        for (int64_t j = n8; j < out; ++j) acc[j] += val[k] * r0[j];
    }
}

/* U4 (and U5 with its plane hb, e = out/8 a multiple of 8): bytes j..j+7 give columns j..j+7 (low nibbles) and
 * j+h..j+h+7 (high nibbles); their fifth bits are bit j/e (and j/e + 4) of plane bytes j mod e ... + 7. */
static void rows_u4_avx2(const uint8_t *q, const uint8_t *hb, int64_t out, const int64_t *idx, const float *val,
                         int64_t k, int64_t k1, float *acc) {
    int64_t h = out / 2, e = out / 8, n8 = h & ~(int64_t)7;
    const __m256i m15 = _mm256_set1_epi32(15), sixteen = _mm256_set1_epi32(16);
    /* with a plane, the low-nibble columns run in four segments of e: segment g's fifth bits are bit g of the plane
     * byte (its high-nibble twin's bit g + 4), brought to bit 4 (worth 16) by a left shift of 4 - g (a right one of g) */
#define U4_CODES(r, p, j, LO, HI)                                                                        \
    __m256i LO##i = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((r) + (j))));              \
    __m256i HI##i = _mm256_srli_epi32(LO##i, 4);                                                       \
    LO##i = _mm256_and_si256(LO##i, m15);                                                              \
    if (p) {                                                                                           \
        __m256i f = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((p) + (j) - seg * e)));     \
        LO##i = _mm256_or_si256(LO##i, _mm256_and_si256(_mm256_sll_epi32(f, shl), sixteen));           \
        HI##i = _mm256_or_si256(HI##i, _mm256_and_si256(_mm256_srl_epi32(f, shh), sixteen));           \
    }                                                                                                  \
    __m256 LO = _mm256_cvtepi32_ps(LO##i), HI = _mm256_cvtepi32_ps(HI##i);
    for (; k + 4 <= k1; k += 4) {
        const uint8_t *r0 = q + idx[k] * h, *r1 = q + idx[k + 1] * h, *r2 = q + idx[k + 2] * h, *r3 = q + idx[k + 3] * h;
        const uint8_t *p0 = hb ? hb + idx[k] * e : NULL, *p1 = hb ? hb + idx[k + 1] * e : NULL;
        const uint8_t *p2 = hb ? hb + idx[k + 2] * e : NULL, *p3 = hb ? hb + idx[k + 3] * e : NULL;
        __m256 a0 = _mm256_set1_ps(val[k]), a1 = _mm256_set1_ps(val[k + 1]), a2 = _mm256_set1_ps(val[k + 2]),
               a3 = _mm256_set1_ps(val[k + 3]);
        const uint8_t *n0 = q + idx[k + 4 < k1 ? k + 4 : k] * h, *n1 = q + idx[k + 5 < k1 ? k + 5 : k] * h;
        const uint8_t *n2 = q + idx[k + 6 < k1 ? k + 6 : k] * h, *n3 = q + idx[k + 7 < k1 ? k + 7 : k] * h;
        for (int64_t seg = 0; seg < (hb ? 4 : 1); ++seg) {
          int64_t jend = hb ? (seg + 1) * e : n8;
          __m128i shl = _mm_cvtsi32_si128(0), shh = _mm_cvtsi32_si128(0);
          if (hb) { shl = _mm_cvtsi32_si128(4 - (int)seg); shh = _mm_cvtsi32_si128((int)seg); }
          for (int64_t j = hb ? seg * e : 0; j < jend; j += 8) {
            if (!(j & 63)) PREFETCH4(n0 + j, n1 + j, n2 + j, n3 + j);
            U4_CODES(r0, p0, j, l0, h0)
            U4_CODES(r1, p1, j, l1, h1)
            U4_CODES(r2, p2, j, l2, h2)
            U4_CODES(r3, p3, j, l3, h3)
            __m256 sl = _mm256_loadu_ps(acc + j), sh = _mm256_loadu_ps(acc + h + j);
            sl = _mm256_fmadd_ps(a0, l0, sl); sh = _mm256_fmadd_ps(a0, h0, sh);
            sl = _mm256_fmadd_ps(a1, l1, sl); sh = _mm256_fmadd_ps(a1, h1, sh);
            sl = _mm256_fmadd_ps(a2, l2, sl); sh = _mm256_fmadd_ps(a2, h2, sh);
            sl = _mm256_fmadd_ps(a3, l3, sl); sh = _mm256_fmadd_ps(a3, h3, sh);
            _mm256_storeu_ps(acc + j, sl);
            _mm256_storeu_ps(acc + h + j, sh);
          }
        }
    }
    for (; k < k1; ++k) {
        const uint8_t *r0 = q + idx[k] * h, *p0 = hb ? hb + idx[k] * e : NULL;
        __m256 a0 = _mm256_set1_ps(val[k]);
        for (int64_t seg = 0; seg < (hb ? 4 : 1); ++seg) {
          int64_t jend = hb ? (seg + 1) * e : n8;
          __m128i shl = _mm_cvtsi32_si128(0), shh = _mm_cvtsi32_si128(0);
          if (hb) { shl = _mm_cvtsi32_si128(4 - (int)seg); shh = _mm_cvtsi32_si128((int)seg); }
          for (int64_t j = hb ? seg * e : 0; j < jend; j += 8) {
            U4_CODES(r0, p0, j, l0, h0)
            _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(a0, l0, _mm256_loadu_ps(acc + j)));
            _mm256_storeu_ps(acc + h + j, _mm256_fmadd_ps(a0, h0, _mm256_loadu_ps(acc + h + j)));
          }
        }
    }
#undef U4_CODES
}
#endif


#ifdef __AVX512F__
/* AVX-512: sixteen outputs per vector. S8 and U4 blocks go through the register tiles below (block_s8_tiles,
 * block_u4_tiles); U5 keeps the accumulator loop, at twice the AVX2 width. */
static inline __m512 s8x16(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }

/* U5 as rows_u4_avx2 with its plane, sixteen columns a vector (e = out/8 a multiple of 16). */
static void rows_u5_avx512(const uint8_t *q, const uint8_t *hb, int64_t out, const int64_t *idx, const float *val,
                           int64_t k, int64_t k1, float *acc) {
    int64_t h = out / 2, e = out / 8;
    const __m512i m15 = _mm512_set1_epi32(15), sixteen = _mm512_set1_epi32(16);
#define U5_CODES16(r, p, j, LO, HI)                                                                      \
    __m512i LO##i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((r) + (j))));              \
    __m512i HI##i = _mm512_srli_epi32(LO##i, 4);                                                       \
    __m512i f##LO = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((p) + (j) - seg * e)));     \
    LO##i = _mm512_or_si512(_mm512_and_si512(LO##i, m15), _mm512_and_si512(_mm512_sll_epi32(f##LO, shl), sixteen)); \
    HI##i = _mm512_or_si512(HI##i, _mm512_and_si512(_mm512_srl_epi32(f##LO, shh), sixteen));           \
    __m512 LO = _mm512_cvtepi32_ps(LO##i), HI = _mm512_cvtepi32_ps(HI##i);
    for (int64_t seg = 0; seg < 4; ++seg) {
        int64_t j0 = seg * e, jend = (seg + 1) * e;
        __m128i shl = _mm_cvtsi32_si128(4 - (int)seg), shh = _mm_cvtsi32_si128((int)seg);
        int64_t kk = k;
        for (; kk + 4 <= k1; kk += 4) {
            const uint8_t *r0 = q + idx[kk] * h, *r1 = q + idx[kk + 1] * h, *r2 = q + idx[kk + 2] * h,
                          *r3 = q + idx[kk + 3] * h;
            const uint8_t *p0 = hb + idx[kk] * e, *p1 = hb + idx[kk + 1] * e;
            const uint8_t *p2 = hb + idx[kk + 2] * e, *p3 = hb + idx[kk + 3] * e;
            __m512 a0 = _mm512_set1_ps(val[kk]), a1 = _mm512_set1_ps(val[kk + 1]), a2 = _mm512_set1_ps(val[kk + 2]),
                   a3 = _mm512_set1_ps(val[kk + 3]);
            const uint8_t *n0 = q + idx[kk + 4 < k1 ? kk + 4 : kk] * h, *n1 = q + idx[kk + 5 < k1 ? kk + 5 : kk] * h;
            const uint8_t *n2 = q + idx[kk + 6 < k1 ? kk + 6 : kk] * h, *n3 = q + idx[kk + 7 < k1 ? kk + 7 : kk] * h;
            for (int64_t j = j0; j < jend; j += 16) {
                if (!(j & 63)) PREFETCH4(n0 + j, n1 + j, n2 + j, n3 + j);
                U5_CODES16(r0, p0, j, l0, h0)
                U5_CODES16(r1, p1, j, l1, h1)
                U5_CODES16(r2, p2, j, l2, h2)
                U5_CODES16(r3, p3, j, l3, h3)
                __m512 sl = _mm512_loadu_ps(acc + j), sh = _mm512_loadu_ps(acc + h + j);
                sl = _mm512_fmadd_ps(a0, l0, sl); sh = _mm512_fmadd_ps(a0, h0, sh);
                sl = _mm512_fmadd_ps(a1, l1, sl); sh = _mm512_fmadd_ps(a1, h1, sh);
                sl = _mm512_fmadd_ps(a2, l2, sl); sh = _mm512_fmadd_ps(a2, h2, sh);
                sl = _mm512_fmadd_ps(a3, l3, sl); sh = _mm512_fmadd_ps(a3, h3, sh);
                _mm512_storeu_ps(acc + j, sl);
                _mm512_storeu_ps(acc + h + j, sh);
            }
        }
        for (; kk < k1; ++kk) {
            const uint8_t *r0 = q + idx[kk] * h, *p0 = hb + idx[kk] * e;
            __m512 a0 = _mm512_set1_ps(val[kk]);
            for (int64_t j = j0; j < jend; j += 16) {
                U5_CODES16(r0, p0, j, l0, h0)
                _mm512_storeu_ps(acc + j, _mm512_fmadd_ps(a0, l0, _mm512_loadu_ps(acc + j)));
                _mm512_storeu_ps(acc + h + j, _mm512_fmadd_ps(a0, h0, _mm512_loadu_ps(acc + h + j)));
            }
        }
    }
#undef U5_CODES16
}
#endif


#ifdef __AVX512F__
/* A whole block in registers: its kept rows' contributions to a tile of outputs are summed in 8 vector registers, then
 * scaled straight into the thread's y (no accumulator in memory to clear, reload and scale: at 50% sparsity that
 * traffic cost as much as the codes). S8: 128 outputs a tile (two cache lines of each row); U4: 64 code bytes a tile
 * (128 outputs, 64 low-nibble and 64 high). The next tiles' lines of the same rows are prefetched. */
static inline __m512 scale16(const spon_qplan *p, const void *t, int64_t off) {
    return p->scale_f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)t + off)))
                        : _mm512_loadu_ps((const float *)t + off);
}

static inline void tile_out(const spon_qplan *p, int64_t off, __m512 c, __m512 vsum, float *yt) {
    if (p->offset != 0.0f) c = _mm512_fnmadd_ps(_mm512_set1_ps(p->offset), vsum, c);
    __m512 y = _mm512_fmadd_ps(scale16(p, p->scale, off), c, _mm512_loadu_ps(yt));
    if (p->minv) y = _mm512_fmadd_ps(scale16(p, p->minv, off), vsum, y);
    _mm512_storeu_ps(yt, y);
}

/* Columns [j0, out) of a block, sixteen at a time, then one by one: the tiles' leftovers. */
static void block_tail(const spon_qplan *p, int64_t b, int64_t k0, int64_t k1, float sumx, float *yt, int64_t j0) {
    int64_t out = p->n_out, h = out / 2, e = out / 8;
    for (int64_t j = j0; j < out; ++j) {
        float c = 0.0f;
        for (int64_t k = k0; k < k1; ++k) {
            int64_t i = p->idx[k];
            int code;
            if (p->kind == KIND_S8) code = ((const int8_t *)p->q)[i * out + j];
            else {
                uint8_t byte = ((const uint8_t *)p->q)[i * h + (j < h ? j : j - h)];
                code = j < h ? (byte & 15) : (byte >> 4);
                if (p->kind == KIND_U5) code |= ((p->hb[i * e + j % e] >> (j / e)) & 1) << 4;
            }
            c += p->val[k] * (float)code;
        }
        float sc = p->scale_f16 ? half_to_float(((const uint16_t *)p->scale)[b * out + j]) : ((const float *)p->scale)[b * out + j];
        float mn = !p->minv ? 0.0f : p->scale_f16 ? half_to_float(((const uint16_t *)p->minv)[b * out + j])
                                                 : ((const float *)p->minv)[b * out + j];
        yt[j] += sc * (c - p->offset * sumx) + mn * sumx;
    }
}

static void block_s8_tiles(const spon_qplan *p, int64_t b, int64_t k0, int64_t k1, float sumx, float *yt) {
    const int8_t *q = (const int8_t *)p->q;
    int64_t out = p->n_out, jb = 0;
    __m512 vsum = _mm512_set1_ps(sumx);
    for (; jb + 128 <= out; jb += 128) {
        __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        for (int64_t k = k0; k < k1; ++k) {
            const int8_t *r = q + p->idx[k] * out + jb;
            if (jb + 512 < out) { __builtin_prefetch(r + 512, 0, 1); __builtin_prefetch(r + 576, 0, 1); }
            __m512 a = _mm512_set1_ps(p->val[k]);
            c0 = _mm512_fmadd_ps(a, s8x16(r), c0);
            c1 = _mm512_fmadd_ps(a, s8x16(r + 16), c1);
            c2 = _mm512_fmadd_ps(a, s8x16(r + 32), c2);
            c3 = _mm512_fmadd_ps(a, s8x16(r + 48), c3);
            c4 = _mm512_fmadd_ps(a, s8x16(r + 64), c4);
            c5 = _mm512_fmadd_ps(a, s8x16(r + 80), c5);
            c6 = _mm512_fmadd_ps(a, s8x16(r + 96), c6);
            c7 = _mm512_fmadd_ps(a, s8x16(r + 112), c7);
        }
        int64_t off = b * out + jb;
        tile_out(p, off, c0, vsum, yt + jb);
        tile_out(p, off + 16, c1, vsum, yt + jb + 16);
        tile_out(p, off + 32, c2, vsum, yt + jb + 32);
        tile_out(p, off + 48, c3, vsum, yt + jb + 48);
        tile_out(p, off + 64, c4, vsum, yt + jb + 64);
        tile_out(p, off + 80, c5, vsum, yt + jb + 80);
        tile_out(p, off + 96, c6, vsum, yt + jb + 96);
        tile_out(p, off + 112, c7, vsum, yt + jb + 112);
    }
    for (; jb + 16 <= out; jb += 16) {
        __m512 c = _mm512_setzero_ps();
        for (int64_t k = k0; k < k1; ++k) c = _mm512_fmadd_ps(_mm512_set1_ps(p->val[k]), s8x16(q + p->idx[k] * out + jb), c);
        tile_out(p, b * out + jb, c, vsum, yt + jb);
    }
    block_tail(p, b, k0, k1, sumx, yt, jb);
}

/* U4, out a multiple of 32: byte j's low nibble is output j, its high nibble output h + j. */
static void block_u4_tiles(const spon_qplan *p, int64_t b, int64_t k0, int64_t k1, float sumx, float *yt) {
    const uint8_t *q = (const uint8_t *)p->q;
    int64_t out = p->n_out, h = out / 2, jb = 0;
    __m512 vsum = _mm512_set1_ps(sumx);
    const __m512i m15 = _mm512_set1_epi32(15);
#define NIB(r, u, LO, HI)                                                                                   \
    __m512i LO##i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((r) + 16 * (u))));            \
    __m512 LO = _mm512_cvtepi32_ps(_mm512_and_si512(LO##i, m15)), HI = _mm512_cvtepi32_ps(_mm512_srli_epi32(LO##i, 4));
    for (; jb + 64 <= h; jb += 64) {
        __m512 l0 = _mm512_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, g0 = l0, g1 = l0, g2 = l0, g3 = l0;
        for (int64_t k = k0; k < k1; ++k) {
            const uint8_t *r = q + p->idx[k] * h + jb;
            if (jb + 256 < h) __builtin_prefetch(r + 256, 0, 1);
            __m512 a = _mm512_set1_ps(p->val[k]);
            NIB(r, 0, x0, y0) NIB(r, 1, x1, y1) NIB(r, 2, x2, y2) NIB(r, 3, x3, y3)
            l0 = _mm512_fmadd_ps(a, x0, l0); g0 = _mm512_fmadd_ps(a, y0, g0);
            l1 = _mm512_fmadd_ps(a, x1, l1); g1 = _mm512_fmadd_ps(a, y1, g1);
            l2 = _mm512_fmadd_ps(a, x2, l2); g2 = _mm512_fmadd_ps(a, y2, g2);
            l3 = _mm512_fmadd_ps(a, x3, l3); g3 = _mm512_fmadd_ps(a, y3, g3);
        }
        int64_t off = b * out + jb;
        tile_out(p, off, l0, vsum, yt + jb);
        tile_out(p, off + 16, l1, vsum, yt + jb + 16);
        tile_out(p, off + 32, l2, vsum, yt + jb + 32);
        tile_out(p, off + 48, l3, vsum, yt + jb + 48);
        tile_out(p, off + h, g0, vsum, yt + h + jb);
        tile_out(p, off + h + 16, g1, vsum, yt + h + jb + 16);
        tile_out(p, off + h + 32, g2, vsum, yt + h + jb + 32);
        tile_out(p, off + h + 48, g3, vsum, yt + h + jb + 48);
    }
    for (; jb + 16 <= h; jb += 16) {
        __m512 l = _mm512_setzero_ps(), g = l;
        for (int64_t k = k0; k < k1; ++k) {
            __m512 a = _mm512_set1_ps(p->val[k]);
            NIB(q + p->idx[k] * h + jb, 0, x, y)
            l = _mm512_fmadd_ps(a, x, l);
            g = _mm512_fmadd_ps(a, y, g);
        }
        tile_out(p, b * out + jb, l, vsum, yt + jb);
        tile_out(p, b * out + h + jb, g, vsum, yt + h + jb);
    }
#undef NIB
}
#endif

/* One block's rows into acc (w = out floats), four rows a pass so the accumulator is read a quarter as often. */
static void rows_s8(const int8_t *q, int64_t out, const int64_t *idx, const float *val, int64_t k, int64_t k1,
                    float *acc) {
    for (; k + 4 <= k1; k += 4) {
        const int8_t *r0 = q + idx[k] * out, *r1 = q + idx[k + 1] * out, *r2 = q + idx[k + 2] * out,
                     *r3 = q + idx[k + 3] * out;
        float a0 = val[k], a1 = val[k + 1], a2 = val[k + 2], a3 = val[k + 3];
#pragma omp simd
        for (int64_t j = 0; j < out; ++j)
            acc[j] += (a0 * (float)r0[j] + a1 * (float)r1[j]) + (a2 * (float)r2[j] + a3 * (float)r3[j]);
    }
    for (; k < k1; ++k) {
        const int8_t *r0 = q + idx[k] * out;
        float a0 = val[k];
#pragma omp simd
        for (int64_t j = 0; j < out; ++j) acc[j] += a0 * (float)r0[j];
    }
}

static void rows_u4(const uint8_t *q, int64_t out, const int64_t *idx, const float *val, int64_t k, int64_t k1,
                    float *acc) {
    int64_t h = out / 2;
    float *lo = acc, *hi = acc + h;
    for (; k + 4 <= k1; k += 4) {
        const uint8_t *r0 = q + idx[k] * h, *r1 = q + idx[k + 1] * h, *r2 = q + idx[k + 2] * h, *r3 = q + idx[k + 3] * h;
        float a0 = val[k], a1 = val[k + 1], a2 = val[k + 2], a3 = val[k + 3];
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
            uint8_t b0 = r0[j], b1 = r1[j], b2 = r2[j], b3 = r3[j];
            lo[j] += (a0 * (float)(b0 & 15) + a1 * (float)(b1 & 15)) + (a2 * (float)(b2 & 15) + a3 * (float)(b3 & 15));
            hi[j] += (a0 * (float)(b0 >> 4) + a1 * (float)(b1 >> 4)) + (a2 * (float)(b2 >> 4) + a3 * (float)(b3 >> 4));
        }
    }
    for (; k < k1; ++k) {
        const uint8_t *r0 = q + idx[k] * h;
        float a0 = val[k];
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
            lo[j] += a0 * (float)(r0[j] & 15);
            hi[j] += a0 * (float)(r0[j] >> 4);
        }
    }
}

/* U5: the nibbles as U4, then the fifth bits (worth 16 each) from the plane, one pass per bit position. */
static void rows_u5(const uint8_t *q, const uint8_t *hb, int64_t out, const int64_t *idx, const float *val, int64_t k0,
                    int64_t k1, float *acc) {
    rows_u4(q, out, idx, val, k0, k1, acc);
    int64_t e = out / 8;
    for (int64_t k = k0; k < k1; ++k) {
        const uint8_t *p = hb + idx[k] * e;
        float a = 16.0f * val[k];
        for (int bit = 0; bit < 8; ++bit) {
            float *dst = acc + bit * e;
#pragma omp simd
            for (int64_t j = 0; j < e; ++j) dst[j] += a * (float)((p[j] >> bit) & 1);
        }
    }
}

/* y_t[o] += s[b, o] * (acc[o] - offset * sumx) + m[b, o] * sumx */
static void apply_scale(const spon_qplan *p, int64_t b, float *acc, float sumx, float *yt) {
    int64_t out = p->n_out, off = b * out;
    if (p->offset != 0.0f) {
        float os = p->offset * sumx;
#pragma omp simd
        for (int64_t j = 0; j < out; ++j) acc[j] -= os;
    }
    if (p->scale_f16) {
        const uint16_t *s = (const uint16_t *)p->scale + off;
        const uint16_t *m = p->minv ? (const uint16_t *)p->minv + off : NULL;
        int64_t j = 0;
#ifdef __F16C__ /* eight halves widened at once (vcvtph2ps); the scalar loop finishes the row */
        __m256 vsum = _mm256_set1_ps(sumx);
        for (; j + 8 <= out; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + j))), _mm256_loadu_ps(acc + j));
            if (m) v = _mm256_add_ps(v, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + j))), vsum));
            _mm256_storeu_ps(yt + j, _mm256_add_ps(_mm256_loadu_ps(yt + j), v));
        }
#endif
        for (; j < out; ++j) yt[j] += half_to_float(s[j]) * acc[j] + (m ? half_to_float(m[j]) * sumx : 0.0f);
    } else {
        const float *s = (const float *)p->scale + off;
        const float *m = p->minv ? (const float *)p->minv + off : NULL;
        if (m) {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] += s[j] * acc[j] + m[j] * sumx;
        } else {
#pragma omp simd
            for (int64_t j = 0; j < out; ++j) yt[j] += s[j] * acc[j];
        }
    }
}

/* The first lines of the next block's kept rows (and its scale row), asked for while this block is summed: a kept
 * row of a small layer is a few lines at an address no prefetcher can guess (576 outputs in 4 bits: 288 bytes), so
 * without this every row starts with a miss; a long row's stream the hardware continues once started. */
static void prefetch_block(const spon_qplan *p, int64_t b) {
    int64_t nb = p->n_in / p->block;
    if (b >= nb) return;
    int64_t out = p->n_out, row = p->kind == KIND_S8 ? out : out / 2, lines = row < 512 ? row : 512;
    const char *q = (const char *)p->q;
    for (int64_t k = p->bstart[b]; k < p->bstart[b + 1]; ++k)
        for (int64_t o = 0; o < lines; o += 64) __builtin_prefetch(q + p->idx[k] * row + o, 0, 1);
    int64_t sbytes = out * (p->scale_f16 ? 2 : 4), slines = sbytes < 512 ? sbytes : 512;
    for (int64_t o = 0; o < slines; o += 64) __builtin_prefetch((const char *)p->scale + b * sbytes + o, 0, 1);
}

/* y = W S(x) + b; returns the number of kept inputs. */
int64_t spon_qgemv(const spon_qplan *p, const float *x, float *y) {
    int64_t in = p->n_in, out = p->n_out, B = p->block, nb = in / B, nnz = 0;
    for (int64_t b = 0; b < nb; ++b) {
        p->bstart[b] = nnz;
        for (int64_t i = b * B; i < (b + 1) * B; ++i) {
            float v = x[i];
            p->idx[nnz] = i;
            p->val[nnz] = v;
            nnz += fabsf(v) > p->tau; /* branch-free compaction */
        }
    }
    p->bstart[nb] = nnz;
    /* a small step is faster on one thread than split (the parallel region's start and the shared sum cost more than
     * half the work: 576x576 at 50%, ~166k weights, is ~15% slower on two) */
    int T = nnz * out >= 262144 ? p->nthreads : 1;
#pragma omp parallel num_threads(T)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *yt = p->acc + (int64_t)t * 2 * out, *acc = yt + out;
        memset(yt, 0, (size_t)out * sizeof(float));
        /* thread t takes the blocks whose kept rows start in [nnz t / T, nnz (t + 1) / T): contiguous ranges of
         * blocks with about equal numbers of kept rows; a block without a kept input is never read */
        int64_t want0 = nnz * t / nt, want1 = nnz * (t + 1) / nt;
        for (int64_t b = 0; b < nb; ++b) {
            int64_t k0 = p->bstart[b], k1 = p->bstart[b + 1];
            if (k0 == k1 || k0 < want0 || k0 >= want1) continue;
            float sumx = 0.0f;
            for (int64_t k = k0; k < k1; ++k) sumx += p->val[k];
            prefetch_block(p, b + 1);
#ifdef __AVX512F__
            if (p->kind == KIND_S8) { block_s8_tiles(p, b, k0, k1, sumx, yt); continue; }
            if (p->kind == KIND_U4 && out % 32 == 0) { block_u4_tiles(p, b, k0, k1, sumx, yt); continue; }
#endif
            memset(acc, 0, (size_t)out * sizeof(float));
#ifdef __AVX512F__ /* S8 and U4 (out a multiple of 32) took the register tiles above */
            if (p->kind == KIND_U5 && out % 128 == 0) rows_u5_avx512((const uint8_t *)p->q, p->hb, out, p->idx, p->val, k0, k1, acc);
            else
#endif
#ifdef __AVX2__
            if (p->kind == KIND_S8) rows_s8_avx2((const int8_t *)p->q, out, p->idx, p->val, k0, k1, acc);
            else if (p->kind == KIND_U4 && out % 16 == 0) rows_u4_avx2((const uint8_t *)p->q, NULL, out, p->idx, p->val, k0, k1, acc);
            else if (p->kind == KIND_U5 && out % 64 == 0) rows_u4_avx2((const uint8_t *)p->q, p->hb, out, p->idx, p->val, k0, k1, acc);
            else
#endif
            if (p->kind == KIND_S8) rows_s8((const int8_t *)p->q, out, p->idx, p->val, k0, k1, acc);
            else if (p->kind == KIND_U4) rows_u4((const uint8_t *)p->q, out, p->idx, p->val, k0, k1, acc);
            else rows_u5((const uint8_t *)p->q, p->hb, out, p->idx, p->val, k0, k1, acc);
            apply_scale(p, b, acc, sumx, yt);
        }
#pragma omp barrier
        int64_t chunk = (out + nt - 1) / nt, j0 = t * chunk < out ? t * chunk : out;
        int64_t j1 = j0 + chunk < out ? j0 + chunk : out;
        for (int64_t j = j0; j < j1; ++j) {
            float s = p->bias ? p->bias[j] : 0.0f;
            for (int u = 0; u < nt; ++u) s += p->acc[(int64_t)u * 2 * out + j];
            y[j] = s;
        }
    }
    return nnz;
}
