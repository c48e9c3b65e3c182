// The CPU implementation of torch.ops.spon.quant_gemv in C++, so a compiled graph's call reaches the quantized kernel
// (quant_gemv.c, linked in) from the dispatcher without entering Python. Built by spon/serving/kernels/quant_op.py;
// where the build fails the Python implementation there serves the CPU instead (same results).
//
// Per-thread scratch buffers that only grow; x of any floating dtype is widened to float32 and y given back in it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "spon_qplan.h"

namespace {

struct Scratch {
    std::vector<int64_t> idx, bstart;
    std::vector<float> val, acc;
};
thread_local Scratch scratch;

const void *ptr(const c10::optional<at::Tensor> &t) { return t.has_value() ? t->data_ptr() : nullptr; }

at::Tensor quant_gemv_cpu(const at::Tensor &x, const at::Tensor &q, const c10::optional<at::Tensor> &hb,
                          const at::Tensor &scale, const c10::optional<at::Tensor> &minimum,
                          const c10::optional<at::Tensor> &bias, double tau, int64_t block, int64_t kind, double offset) {
    at::Tensor xf = x.reshape({-1}).to(at::kFloat).contiguous();
    int64_t in = xf.numel(), out = scale.size(1);
    TORCH_CHECK(in % block == 0 && scale.size(0) == in / block, "spon::quant_gemv: x has ", in,
                " entries, the scales ", scale.size(0), " blocks of ", block);
    int threads = at::get_num_threads();
    Scratch &s = scratch;
    if ((int64_t)s.idx.size() < in) s.idx.resize(in), s.val.resize(in);
    if ((int64_t)s.bstart.size() < in / block + 1) s.bstart.resize(in / block + 1);
    if ((int64_t)s.acc.size() < 2 * threads * out) s.acc.resize(2 * threads * out);
    at::Tensor b;
    if (bias.has_value()) b = bias->to(at::kFloat).contiguous();
    spon_qplan p;
    p.q = q.data_ptr();
    p.hb = hb.has_value() ? (const uint8_t *)hb->data_ptr() : nullptr;
    p.scale = scale.data_ptr();
    p.minv = ptr(minimum);
    p.bias = b.defined() ? b.data_ptr<float>() : nullptr;
    p.acc = s.acc.data();
    p.idx = s.idx.data();
    p.val = s.val.data();
    p.bstart = s.bstart.data();
    p.n_in = in;
    p.n_out = out;
    p.block = block;
    p.tau = (float)tau;
    p.offset = (float)offset;
    p.nthreads = threads;
    p.kind = (int)kind;
    p.scale_f16 = scale.scalar_type() == at::kHalf;
    at::Tensor y = at::empty({out}, xf.options());
    spon_qgemv(&p, xf.data_ptr<float>(), y.data_ptr<float>());
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = out;
    return y.to(x.scalar_type()).view(shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(spon, CPU, m) { m.impl("quant_gemv", quant_gemv_cpu); }
