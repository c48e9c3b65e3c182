/* One layer's kernel call, prepared once: shared by sparse_gemv.c, its C++ operator (op_cpu.cpp) and the ctypes
 * binding (cpu.py's _Plan mirrors it field by field). */
#ifndef SPON_PLAN_H
#define SPON_PLAN_H
#include <stdint.h>

typedef struct {
    const void *wt;
    const void *bias; /* float32, or bfloat16 where bias_bf16 */
    float *acc;
    int64_t *idx;
    float *val;
    int64_t in, out;
    float tau;
    int nthreads, io_bf16, w_bf16, bias_bf16;
    int64_t ld; /* row stride of wt in elements (a layer's columns inside its siblings' fused rows); 0: out */
} spon_plan;

#define SPON_MAX_GROUP 8 /* layers one spon_gemv_multi call takes (a block's q/k/v is 3) */

#ifdef __cplusplus
extern "C" {
#endif
int64_t spon_gemv_plan(const spon_plan *p, const void *x, void *y);
int64_t spon_gemv_multi(const spon_plan *const *plans, int n, const void *x, void *const *ys);
int spon_gemv_fusable(const spon_plan *const *plans, int n);
void spon_dense_plan(const spon_plan *p, const void *x, void *y);
#ifdef __cplusplus
}
#endif
#endif
