/* Sparse-input GEMV for batch-1 decode: y = W S(x) + b, reading only the weight rows of kept inputs.
 *
 * W is stored input-major (wt: [in, out], row i = the weights input i feeds), so each kept input is one
 * contiguous row. The kernel finds the kept inputs (|x_i| > tau), then each thread adds its share of the
 * kept rows, eight rows per pass, into its own float32 accumulator (eight rows per pass read the
 * accumulator half as often as four: measured 10-25% faster; sixteen was slower: more streams than the
 * prefetchers follow). bf16 weights are widened to fp32 on the fly. Rows may be further apart than their width (ld):
 * layers that read the same input (a block's q/k/v, its gate/up) can keep their weights side by side, one row per
 * input for all of them, which `spon_gemv_multi` reads at once (longer rows: fewer, longer streams).
 *
 * x and y are both float32 or both bfloat16 (io_bf16), so 16-bit models need no conversion op around
 * the call; a bf16 y is rounded from the fp32 accumulator to nearest-even, as torch's .to(torch.bfloat16).
 * Built by spon/kernels/cpu.py with -O3 -march=native -fopenmp.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "spon_plan.h"

#define LINE 64 /* bytes in a cache line: the prefetch step */

static inline float bf16(uint16_t v) {
    uint32_t u = ((uint32_t)v) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* y[j] = v, in y's dtype (bf16 rounded to nearest-even, like torch). */
static inline void put(void *y, int64_t j, float v, int io_bf16) {
    if (io_bf16) ((uint16_t *)y)[j] = to_bf16(v);
    else ((float *)y)[j] = v;
}

/* Bias entry j as float32: none (0), float32, or bfloat16 widened (exact), so a 16-bit model's bias needs no
 * conversion op before each call. */
static inline float bias_at(const void *bias, int bias_bf16, int64_t j) {
    if (!bias) return 0.0f;
    return bias_bf16 ? bf16(((const uint16_t *)bias)[j]) : ((const float *)bias)[j];
}

/* Inside the sparse kernels' parallel region, after the barrier: thread t of T sums the threads' partial
 * accumulators (acc_all: T * w floats) and the bias into its slice of y, y[j] = columns c0 + j of the accumulators.
 * pairs = 0: column c sits at c; pairs (the paired bf16 loop): even columns at c / 2, odd ones at w / 2 + c / 2. */
static void sum_shares(const float *acc_all, const void *bias, int bias_bf16, void *y, int io_bf16, int64_t out,
                       int64_t w, int64_t c0, int pairs, int t, int T) {
    int64_t chunk = (out + T - 1) / T;
    int64_t j0 = t * chunk < out ? t * chunk : out;
    int64_t j1 = j0 + chunk < out ? j0 + chunk : out;
    for (int64_t j = j0; j < j1; ++j) {
        int64_t c = c0 + j, slot = !pairs ? c : (c & 1) ? w / 2 + c / 2 : c / 2;
        float s = bias_at(bias, bias_bf16, j);
        for (int u = 0; u < T; ++u) s += acc_all[(int64_t)u * w + slot];
        put(y, j, s, io_bf16);
    }
}

static int64_t select_kept(const void *x, int x_bf16, int64_t in, float tau, int64_t *idx, float *val) {
    int64_t nnz = 0;
    if (x_bf16) {
        const uint16_t *xb = (const uint16_t *)x;
        for (int64_t i = 0; i < in; ++i) {
            float v = bf16(xb[i]);
            idx[nnz] = i;
            val[nnz] = v;
            nnz += fabsf(v) > tau; /* branch-free compaction */
        }
    } else {
        const float *xf = (const float *)x;
        for (int64_t i = 0; i < in; ++i) {
            float v = xf[i];
            idx[nnz] = i;
            val[nnz] = v;
            nnz += fabsf(v) > tau;
        }
    }
    return nnz;
}

/* A column range [c0, c1) of the weight rows and the coefficient each kept row has there (val[k] for the k-th kept
 * input): a layer alone is one segment, its whole width; layers fused into one row (siblings: the same input, their
 * input-major weights side by side in one [in, ld] buffer, `spon_gemv_multi`) are one segment each. */
typedef struct {
    int64_t c0, c1;
    const float *val;
} seg_t;

/* Thread t of T adds its share of the kept rows (a contiguous range of them, so mostly ascending addresses the
 * prefetchers follow), row r at wt + idx[r] * ld, into its own float32 accumulator acc (w floats: the columns the
 * segments cover); after a barrier the threads sum the partial accumulators and the bias into y, each over a slice of
 * the outputs (sum_shares). Splitting rows rather than outputs reads whole rows: 10-25% faster on 135M-sized layers,
 * where a half row is only a few cache lines. Each pass takes eight rows and walks the segments, each with its own
 * coefficients (zero where a fused layer's own threshold drops the input: 0 * w adds nothing). */
#define SPON_ADD_ROWS(NAME, WTYPE, LOAD)                                                                   \
    static void NAME(const WTYPE *wt, int64_t ld, int64_t w, const seg_t *seg, int nseg, const int64_t *idx,      \
                     int64_t k, int64_t k1, float *acc) {                                                  \
        memset(acc, 0, (size_t)w * sizeof(float));                                                         \
        for (; k + 8 <= k1; k += 8) {                                                                      \
            const WTYPE *r0 = wt + idx[k] * ld, *r1 = wt + idx[k + 1] * ld;                                \
            const WTYPE *r2 = wt + idx[k + 2] * ld, *r3 = wt + idx[k + 3] * ld;                            \
            const WTYPE *r4 = wt + idx[k + 4] * ld, *r5 = wt + idx[k + 5] * ld;                            \
            const WTYPE *r6 = wt + idx[k + 6] * ld, *r7 = wt + idx[k + 7] * ld;                            \
            for (int s = 0; s < nseg; ++s) {                                                               \
                const float *v = seg[s].val;                                                               \
                float a0 = v[k], a1 = v[k + 1], a2 = v[k + 2], a3 = v[k + 3];                              \
                float a4 = v[k + 4], a5 = v[k + 5], a6 = v[k + 6], a7 = v[k + 7];                          \
                _Pragma("omp simd") for (int64_t j = seg[s].c0; j < seg[s].c1; ++j) acc[j] +=              \
                    ((a0 * LOAD(r0[j]) + a1 * LOAD(r1[j])) + (a2 * LOAD(r2[j]) + a3 * LOAD(r3[j]))) +       \
                    ((a4 * LOAD(r4[j]) + a5 * LOAD(r5[j])) + (a6 * LOAD(r6[j]) + a7 * LOAD(r7[j])));        \
            }                                                                                              \
        }                                                                                                  \
        for (; k < k1; ++k) {                                                                              \
            const WTYPE *r0 = wt + idx[k] * ld;                                                            \
            for (int s = 0; s < nseg; ++s) {                                                               \
                float a0 = seg[s].val[k];                                                                  \
                _Pragma("omp simd") for (int64_t j = seg[s].c0; j < seg[s].c1; ++j) acc[j] += a0 * LOAD(r0[j]); \
            }                                                                                              \
        }                                                                                                  \
    }

#define AS_F32(v) (v)
SPON_ADD_ROWS(add_rows_f32, float, AS_F32)
SPON_ADD_ROWS(add_rows_bf16, uint16_t, bf16)

/* bf16 weights, even columns: each 32-bit word of a row holds columns 2j (low half) and 2j+1 (high half), and each
 * half widens to fp32 with one integer op (shift or mask) instead of a widening load per value. The bf16 kernel
 * is compute-bound, not memory-bound, on 2 cores (measured: 9.5 GB/s on 896x4864 against fp32's 18.7, the same
 * time for half the bytes); this form is 30-45% faster. While it adds one cache line of each of this pass's eight
 * rows it prefetches the same line of the next pass's rows: another 15-25% (a 896-wide bf16 row is 28 lines, too
 * short a stream for the hardware prefetchers to ramp up; the same on fp32 rows measured no gain, so they keep the
 * plain loop). The prefetch brings the line into L2 only (prefetcht1): against prefetcht0 a whole step's 168 layers
 * of Qwen2.5-0.5B's shapes at 50% took 0.93x the time, its down projections 0.86x (alternated in one process; docs/RESULTS.md), as if fewer prefetches waited on L1's miss buffers. The accumulator holds even columns
 * in acc[0:w/2] and odd ones in acc[w/2:w]; segments start and end on even columns. */
static inline float lo_bf16(uint32_t w) { uint32_t u = w << 16; float f; memcpy(&f, &u, sizeof f); return f; }
static inline float hi_bf16(uint32_t w) { uint32_t u = w & 0xffff0000u; float f; memcpy(&f, &u, sizeof f); return f; }

static void add_rows_bf16_pairs(const uint16_t *wt, int64_t ld, int64_t w, const seg_t *seg, int nseg,
                                const int64_t *idx, int64_t k, int64_t k1, float *acc) {
    int64_t h = w / 2;
    float *ae = acc, *ao = acc + h;
    memset(ae, 0, (size_t)w * sizeof(float));
    for (; k + 8 <= k1; k += 8) {
        const uint32_t *r0 = (const uint32_t *)(wt + idx[k] * ld), *r1 = (const uint32_t *)(wt + idx[k + 1] * ld);
        const uint32_t *r2 = (const uint32_t *)(wt + idx[k + 2] * ld), *r3 = (const uint32_t *)(wt + idx[k + 3] * ld);
        const uint32_t *r4 = (const uint32_t *)(wt + idx[k + 4] * ld), *r5 = (const uint32_t *)(wt + idx[k + 5] * ld);
        const uint32_t *r6 = (const uint32_t *)(wt + idx[k + 6] * ld), *r7 = (const uint32_t *)(wt + idx[k + 7] * ld);
        const uint32_t *nx[8];
        for (int u = 0; u < 8; ++u) nx[u] = (const uint32_t *)(wt + idx[k + 8 + u < k1 ? k + 8 + u : k1 - 1] * ld);
        for (int s = 0; s < nseg; ++s) {
            const float *v = seg[s].val;
            float a0 = v[k], a1 = v[k + 1], a2 = v[k + 2], a3 = v[k + 3];
            float a4 = v[k + 4], a5 = v[k + 5], a6 = v[k + 6], a7 = v[k + 7];
            int64_t p1 = seg[s].c1 / 2;
            for (int64_t jb = seg[s].c0 / 2; jb < p1; jb += LINE / 4) {
                int64_t je = jb + LINE / 4 < p1 ? jb + LINE / 4 : p1;
                for (int u = 0; u < 8; ++u) __builtin_prefetch(nx[u] + jb, 0, 1); /* into L2, not L1: see above */
                _Pragma("omp simd") for (int64_t j = jb; j < je; ++j) {
                    uint32_t w0 = r0[j], w1 = r1[j], w2 = r2[j], w3 = r3[j], w4 = r4[j], w5 = r5[j], w6 = r6[j], w7 = r7[j];
                    ae[j] += ((a0 * lo_bf16(w0) + a1 * lo_bf16(w1)) + (a2 * lo_bf16(w2) + a3 * lo_bf16(w3))) +
                             ((a4 * lo_bf16(w4) + a5 * lo_bf16(w5)) + (a6 * lo_bf16(w6) + a7 * lo_bf16(w7)));
                    ao[j] += ((a0 * hi_bf16(w0) + a1 * hi_bf16(w1)) + (a2 * hi_bf16(w2) + a3 * hi_bf16(w3))) +
                             ((a4 * hi_bf16(w4) + a5 * hi_bf16(w5)) + (a6 * hi_bf16(w6) + a7 * hi_bf16(w7)));
                }
            }
        }
    }
    for (; k < k1; ++k) {
        const uint32_t *r0 = (const uint32_t *)(wt + idx[k] * ld);
        for (int s = 0; s < nseg; ++s) {
            float a0 = seg[s].val[k];
            _Pragma("omp simd") for (int64_t j = seg[s].c0 / 2; j < seg[s].c1 / 2; ++j) {
                ae[j] += a0 * lo_bf16(r0[j]);
                ao[j] += a0 * hi_bf16(r0[j]);
            }
        }
    }
}

/* Thread t of T: its share of nnz kept rows into its accumulator acc_all + t * w (w: the columns the segments cover;
 * pairs: the paired bf16 loop). */
static void add_share(const void *wt, int w_bf16, int pairs, int64_t ld, int64_t w, const seg_t *seg, int nseg,
                      const int64_t *idx, int64_t nnz, float *acc_all, int t, int T) {
    int64_t k = nnz * t / T, k1 = nnz * (t + 1) / T;
    float *acc = acc_all + (int64_t)t * w;
    if (pairs) add_rows_bf16_pairs((const uint16_t *)wt, ld, w, seg, nseg, idx, k, k1, acc);
    else if (w_bf16) add_rows_bf16((const uint16_t *)wt, ld, w, seg, nseg, idx, k, k1, acc);
    else add_rows_f32((const float *)wt, ld, w, seg, nseg, idx, k, k1, acc);
}

/* A plan's row stride: ld, or out where ld is 0 (contiguous [in, out]). */
static int64_t row_stride(const spon_plan *p) { return p->ld ? p->ld : p->out; }

/* The paired bf16 loop reads 32-bit words: even columns, rows starting on 4-byte boundaries. */
static int paired(const spon_plan *p) {
    return p->w_bf16 && p->out % 2 == 0 && row_stride(p) % 2 == 0 && (uintptr_t)p->wt % 4 == 0;
}

/* Dense GEMV on an output-major matrix (w: [out, in], row j holds output j's weights): y = W x + b. For the
 * output head, whose weight is tied to the embeddings and stored this way, so it is read without a copy. x is
 * widened to float32 once (xf: in floats); each thread takes a contiguous slice of the outputs and reads them one
 * row at a time, front to back: one ascending stream per thread, which the hardware prefetcher follows at the
 * memory's full rate, where several rows read side by side (four or eight a pass before) held it to about half
 * that rate (docs/RESULTS.md, decode speed). */
#define SPON_DENSE(NAME, WTYPE, LOAD)                                                                      \
    static void NAME(const void *x, const WTYPE *w, const void *bias, int bias_bf16, void *y, int io_bf16,        \
                     float *xf, int64_t in, int64_t out, int nthreads) {                                   \
        for (int64_t i = 0; i < in; ++i)                                                                   \
            xf[i] = io_bf16 ? bf16(((const uint16_t *)x)[i]) : ((const float *)x)[i];                      \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                                 \
        for (int64_t j = 0; j < out; ++j) {                                                                \
            const WTYPE *r = w + j * in;                                                                   \
            float s = 0.0f;                                                                                \
            _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < in; ++i) s += xf[i] * LOAD(r[i]); \
            put(y, j, s + bias_at(bias, bias_bf16, j), io_bf16);                                           \
        }                                                                                                  \
    }

SPON_DENSE(spon_dense_f32, float, AS_F32)
SPON_DENSE(spon_dense_bf16, uint16_t, bf16)

/* The head's bf16 GEMV, even in: the same pairing along a row; x is split once into its even (xf[0:in/2]) and
 * odd (xf[in/2:in]) entries. 10-15% faster than the widening loop. */
static void spon_dense_bf16_pairs(const void *x, const uint16_t *w, const void *bias, int bias_bf16, void *y,
                                  int io_bf16, float *xf, int64_t in, int64_t out, int nthreads) {
    int64_t h = in / 2;
    for (int64_t i = 0; i < in; ++i)
        xf[(i & 1) ? h + i / 2 : i / 2] = io_bf16 ? bf16(((const uint16_t *)x)[i]) : ((const float *)x)[i];
    const float *xe = xf, *xo = xf + h;
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t j = 0; j < out; ++j) {
        const uint32_t *r = (const uint32_t *)(w + j * in);
        float s = 0.0f;
        _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < h; ++i) s += xe[i] * lo_bf16(r[i]) + xo[i] * hi_bf16(r[i]);
        put(y, j, s + bias_at(bias, bias_bf16, j), io_bf16);
    }
}

#if defined(__AVX512BF16__)
#include <immintrin.h>
#define SPON_DPBF16 1
/* CPUs with AVX512-BF16 (built with -march=native, so decided at build time): vdpbf16ps adds x[2i] w[j,2i] +
 * x[2i+1] w[j,2i+1] into 16 fp32 lanes in one instruction, and a row's consecutive bf16 pairs are already its
 * pairs; for bf16 x and w with in % 32 == 0. One row at a time (two accumulators along it), as the loops above. On
 * the input-major sparse kernel the rows must be interleaved first: measured 0-4% on a whole step's layers there, so
 * not used. It flushes denormals and sums in fp32 in another order than the loop. */
static void spon_dense_bf16_dp(const uint16_t *x, const uint16_t *w, const void *bias, int bias_bf16, uint16_t *y,
                               int64_t in, int64_t out, int nthreads) {
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")
    for (int64_t j = 0; j < out; ++j) {
        const uint16_t *r = w + j * in;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 64 <= in; i += 64) {
            s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_loadu_si512((const void *)(r + i)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(x + i)));
            s1 = _mm512_dpbf16_ps(s1, (__m512bh)_mm512_loadu_si512((const void *)(r + i + 32)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(x + i + 32)));
        }
        if (i < in)
            s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_loadu_si512((const void *)(r + i)),
                                  (__m512bh)_mm512_loadu_si512((const void *)(x + i)));
        y[j] = to_bf16(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + bias_at(bias, bias_bf16, j));
    }
}
#endif

/* Siblings fused: plans whose weights are consecutive column ranges of one [in, ld] buffer (wt of plan s starts
 * where plan s-1's columns end, ld = the columns of all of them) and whose accumulators lie back to back (T * out
 * floats each), so each kept input's weights for all of them are one contiguous row. */
static int fusable(const spon_plan *const *plans, int n) {
    if (n < 2) return 0;
    int64_t cols = 0;
    size_t es = plans[0]->w_bf16 ? 2 : 4;
    for (int s = 0; s < n; ++s) {
        const spon_plan *p = plans[s];
        if (p->w_bf16 != plans[0]->w_bf16 || p->io_bf16 != plans[0]->io_bf16 || p->in != plans[0]->in ||
            row_stride(p) != row_stride(plans[0]) || (const char *)p->wt != (const char *)plans[0]->wt + cols * es ||
            p->acc != plans[0]->acc + (int64_t)plans[0]->nthreads * cols)
            return 0;
        cols += p->out;
    }
    return cols == row_stride(plans[0]);
}

/* Several layers that read the same input x (a block's q/k/v, or gate/up) in one parallel region: one fork, one
 * barrier and one call for the group instead of one each. Each plan keeps its own threshold, weights, bias and
 * buffers (idx/val: in entries; acc: nthreads * out floats). Siblings laid out side by side (`fusable`) are read as
 * one row per kept input: the inputs any of them keeps (the lowest threshold), each plan's coefficient zero where its
 * own threshold drops the input; the sums equal their own calls' up to float32 rounding (the rows are summed in other
 * groups of eight). Otherwise each plan gets exactly the sums its single call gives. The threads are plans[0]'s.
 * Returns the kept count of plans[0]. */
int64_t spon_gemv_multi(const spon_plan *const *plans, int n, const void *x, void *const *ys) {
    int64_t nnz[SPON_MAX_GROUP], kept0;
    seg_t seg[SPON_MAX_GROUP];
    if (n < 1 || n > SPON_MAX_GROUP) return -1;
    const spon_plan *p0 = plans[0];
    int fused = fusable(plans, n), pairs = fused && p0->w_bf16 && (uintptr_t)p0->wt % 4 == 0;
    if (fused) {
        float lowest = p0->tau;
        for (int s = 1; s < n; ++s) lowest = plans[s]->tau < lowest ? plans[s]->tau : lowest;
        nnz[0] = select_kept(x, p0->io_bf16, p0->in, lowest, p0->idx, p0->val);
        /* each plan's coefficients from the kept values in plan 0's val, zero where its own threshold drops the input;
         * plan 0 last, as it rewrites the source in place */
        const float *src = p0->val;
        for (int s = n - 1; s >= 0; --s) {
            float *v = plans[s]->val, tau = plans[s]->tau;
            kept0 = 0;
            for (int64_t k = 0; k < nnz[0]; ++k) {
                kept0 += fabsf(src[k]) > tau;
                v[k] = fabsf(src[k]) > tau ? src[k] : 0.0f;
            }
        }
        for (int64_t s = 0, c = 0; s < n; c += plans[s]->out, ++s) {
            pairs = pairs && plans[s]->out % 2 == 0;
            seg[s] = (seg_t){c, c + plans[s]->out, plans[s]->val};
        }
    } else {
        for (int s = 0; s < n; ++s) {
            nnz[s] = select_kept(x, plans[s]->io_bf16, plans[s]->in, plans[s]->tau, plans[s]->idx, plans[s]->val);
            seg[s] = (seg_t){0, plans[s]->out, plans[s]->val};
        }
        kept0 = nnz[0];
    }
    _Pragma("omp parallel num_threads(p0->nthreads)") {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        if (fused) add_share(p0->wt, p0->w_bf16, pairs, row_stride(p0), row_stride(p0), seg, n, p0->idx, nnz[0], p0->acc, t, T);
        else
            for (int s = 0; s < n; ++s) {
                const spon_plan *p = plans[s];
                add_share(p->wt, p->w_bf16, paired(p), row_stride(p), p->out, &seg[s], 1, p->idx, nnz[s], p->acc, t, T);
            }
        _Pragma("omp barrier")
        for (int s = 0; s < n; ++s) {
            const spon_plan *p = plans[s];
            if (fused)
                sum_shares(p0->acc, p->bias, p->bias_bf16, ys[s], p->io_bf16, p->out, row_stride(p0), seg[s].c0, pairs, t, T);
            else
                sum_shares(p->acc, p->bias, p->bias_bf16, ys[s], p->io_bf16, p->out, p->out, 0, paired(p), t, T);
        }
    }
    return kept0;
}

/* Whether spon_gemv_multi reads these plans as one fused row per kept input (for tests and benchmarks). */
int spon_gemv_fusable(const spon_plan *const *plans, int n) { return fusable(plans, n); }

/* The binding's one entry for a single layer: a call prepared once (spon_plan.h), so a decode step passes three
 * pointers instead of thirteen arguments. */
int64_t spon_gemv_plan(const spon_plan *p, const void *x, void *y) { return spon_gemv_multi(&p, 1, x, &y); }

/* The output head's dense call, prepared the same way: wt is [out, in] here, val the widened input (in floats). */
void spon_dense_plan(const spon_plan *p, const void *x, void *y) {
#ifdef SPON_DPBF16
    if (p->w_bf16 && p->io_bf16 && p->in % 32 == 0) {
        spon_dense_bf16_dp((const uint16_t *)x, (const uint16_t *)p->wt, p->bias, p->bias_bf16, (uint16_t *)y, p->in, p->out,
                           p->nthreads);
        return;
    }
#endif
    if (p->w_bf16 && p->in % 2 == 0)
        spon_dense_bf16_pairs(x, (const uint16_t *)p->wt, p->bias, p->bias_bf16, y, p->io_bf16, p->val, p->in, p->out,
                              p->nthreads);
    else if (p->w_bf16)
        spon_dense_bf16(x, (const uint16_t *)p->wt, p->bias, p->bias_bf16, y, p->io_bf16, p->val, p->in, p->out, p->nthreads);
    else
        spon_dense_f32(x, (const float *)p->wt, p->bias, p->bias_bf16, y, p->io_bf16, p->val, p->in, p->out, p->nthreads);
}

/* Read-bandwidth probe for the benchmarks: sum n floats with the same threads (the bytes a GEMV must read). */
double spon_read_sum(const float *p, int64_t n, int nthreads) {
    double total = 0.0;
    _Pragma("omp parallel for num_threads(nthreads) reduction(+ : total) schedule(static)")
    for (int64_t c = 0; c < n; c += 4096) {
        int64_t e = c + 4096 < n ? c + 4096 : n;
        float s = 0.0f;
        _Pragma("omp simd reduction(+ : s)") for (int64_t j = c; j < e; ++j) s += p[j];
        total += s;
    }
    return total;
}
