/* Sparse-input GEMV for batch-1 decode: y = W S(x) + b, reading only the weight rows of kept inputs.
 *
 * W is stored input-major (wt: [in, out], row i = the weights input i feeds), so each kept input is one
 * contiguous row. The kernel finds the kept inputs (|x_i| > tau), then each thread owns a contiguous slice
 * of the outputs and adds four kept rows per pass over its slice (fp32 accumulation). bf16 weights are
 * widened to fp32 on the fly. Built by spon/kernels/cpu.py with -O3 -march=native -fopenmp.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

static inline float bf16(uint16_t v) {
    uint32_t u = ((uint32_t)v) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int64_t select_kept(const float *x, int64_t in, float tau, int64_t *idx, float *val) {
    int64_t nnz = 0;
    for (int64_t i = 0; i < in; ++i) {
        float v = x[i];
        idx[nnz] = i;
        val[nnz] = v;
        nnz += fabsf(v) > tau; /* branch-free compaction */
    }
    return nnz;
}

#define SPON_GEMV(NAME, WTYPE, LOAD)                                                                       \
    int64_t NAME(const float *x, const WTYPE *wt, const float *bias, float *y, int64_t in, int64_t out,       \
                 float tau, int64_t *idx, float *val, int nthreads) {                                         \
        int64_t nnz = select_kept(x, in, tau, idx, val);                                                     \
        _Pragma("omp parallel num_threads(nthreads)") {                                                       \
            int t = omp_get_thread_num(), T = omp_get_num_threads();                                           \
            int64_t chunk = ((out + T - 1) / T + 15) / 16 * 16;                                                \
            int64_t j0 = t * chunk < out ? t * chunk : out;                                                    \
            int64_t j1 = j0 + chunk < out ? j0 + chunk : out;                                                  \
            int64_t n = j1 - j0;                                                                               \
            float *acc = y + j0;                                                                               \
            if (bias) {                                                                                        \
                for (int64_t j = 0; j < n; ++j) acc[j] = bias[j0 + j];                                         \
            } else {                                                                                           \
                for (int64_t j = 0; j < n; ++j) acc[j] = 0.0f;                                                 \
            }                                                                                                  \
            int64_t k = 0;                                                                                     \
            for (; k + 4 <= nnz; k += 4) {                                                                     \
                const WTYPE *r0 = wt + idx[k] * out + j0, *r1 = wt + idx[k + 1] * out + j0;                    \
                const WTYPE *r2 = wt + idx[k + 2] * out + j0, *r3 = wt + idx[k + 3] * out + j0;                \
                float a0 = val[k], a1 = val[k + 1], a2 = val[k + 2], a3 = val[k + 3];                          \
                _Pragma("omp simd") for (int64_t j = 0; j < n; ++j) acc[j] +=                                  \
                    a0 * LOAD(r0[j]) + a1 * LOAD(r1[j]) + a2 * LOAD(r2[j]) + a3 * LOAD(r3[j]);                  \
            }                                                                                                  \
            for (; k < nnz; ++k) {                                                                             \
                const WTYPE *r0 = wt + idx[k] * out + j0;                                                      \
                float a0 = val[k];                                                                             \
                _Pragma("omp simd") for (int64_t j = 0; j < n; ++j) acc[j] += a0 * LOAD(r0[j]);                \
            }                                                                                                  \
        }                                                                                                      \
        return nnz;                                                                                            \
    }

#define AS_F32(v) (v)
SPON_GEMV(spon_gemv_f32, float, AS_F32)
SPON_GEMV(spon_gemv_bf16, uint16_t, bf16)

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
