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
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "spon_qplan.h"

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
        for (int64_t j = 0; j < n8; j += 8) {
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
        for (int64_t seg = 0; seg < (hb ? 4 : 1); ++seg) {
          int64_t jend = hb ? (seg + 1) * e : n8;
          __m128i shl = _mm_cvtsi32_si128(0), shh = _mm_cvtsi32_si128(0);
          if (hb) { shl = _mm_cvtsi32_si128(4 - (int)seg); shh = _mm_cvtsi32_si128((int)seg); }
          for (int64_t j = hb ? seg * e : 0; j < jend; j += 8) {
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

/* y_t[o] += s[b, o] * acc[o] + m[b, o] * sumx */
static void apply_scale(const spon_qplan *p, int64_t b, const float *acc, float sumx, float *yt) {
    int64_t out = p->n_out, off = b * out;
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
            memset(acc, 0, (size_t)out * sizeof(float));
            float sumx = 0.0f;
            for (int64_t k = k0; k < k1; ++k) sumx += p->val[k];
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
