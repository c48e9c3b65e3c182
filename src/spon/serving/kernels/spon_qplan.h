/* The quantized sparse GEMV's prepared call (quant_gemv.c), shared with its C++ operator (op_quant.cpp). */
#ifndef SPON_QPLAN_H
#define SPON_QPLAN_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { KIND_S8 = 0, KIND_U4 = 1, KIND_U5 = 2 };

typedef struct {
    const void *q;        /* the codes, as `kind` says */
    const uint8_t *hb;    /* U5: the fifth-bit plane [in, out/8] */
    const void *scale;    /* [nblocks, out] */
    const void *minv;     /* [nblocks, out] or NULL */
    const float *bias;    /* [out] float32 or NULL */
    float *acc;           /* nthreads * 2 * out floats */
    int64_t *idx;         /* in: kept inputs */
    float *val;           /* in: their values */
    int64_t *bstart;      /* nblocks + 1: where each block's kept inputs start in idx */
    int64_t n_in, n_out, block;
    float tau;
    float offset;         /* codes are q - offset (Q4_0: 8, Q5_0: 16; else 0): W = s (q - offset) + m */
    int nthreads, kind, scale_f16;
} spon_qplan;

/* y = W S(x) + b over the plan's quantized weight; x, y float32; returns the number of kept inputs. */
int64_t spon_qgemv(const spon_qplan *p, const float *x, float *y);

#ifdef __cplusplus
}
#endif
#endif
