// The CPU implementations of torch.ops.spon.sparse_gemv, sparse_gemv_multi and dense_gemv in C++, so a call from a
// compiled graph goes from the dispatcher straight to the C kernel (sparse_gemv.c, linked in) without entering
// Python: measured 17 us a call through the Python implementation against a 4 us kernel call on a tiny layer,
// which over 200-odd linears is milliseconds per token. Built by spon/kernels/op.py; where the build fails the
// Python implementations serve the CPU instead (same results).
//
// No plan cache: a call reads the threshold from its 0-d tensor, hands the kernel a float32 or bf16 bias as it is
// (converting only an fp16 one), and works in per-thread scratch buffers that only grow. Shapes or dtypes the kernel
// does not read go through the plain-torch definition (reference.py's, written again here).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <vector>

#include "spon_plan.h"

namespace {

bool readable(const at::Tensor &t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

// An input-major weight [in, out] the kernel reads in place: rows of contiguous columns, row stride ld >= out (a layer
// alone: ld = out; a layer inside its siblings' fused rows: ld = all their columns).
bool rows_readable(const at::Tensor &wt) {
    return readable(wt) && wt.dim() == 2 && (wt.size(0) <= 1 || wt.stride(0) >= wt.size(1)) && (wt.size(1) <= 1 || wt.stride(1) == 1);
}
int64_t row_stride(const at::Tensor &wt) { return wt.size(0) > 1 ? wt.stride(0) : wt.size(1); }

struct Scratch {
    std::vector<int64_t> idx;
    std::vector<float> val, acc;
    void fit(int64_t in, int64_t acc_floats) {
        if ((int64_t)idx.size() < in) idx.resize(in), val.resize(in);
        if ((int64_t)acc.size() < acc_floats) acc.resize(acc_floats);
    }
};
thread_local Scratch scratch;

// The bias as the kernel reads it: float32 or bf16 in place (a bf16 model's folded biases: converting them cost a
// dispatcher round trip per layer and token, ~6 us, 170 a Qwen2.5-0.5B step), another dtype converted to float32
// (undefined: no bias). kernel_bias() / bias_is_bf16() fill the plan's two fields.
at::Tensor kernel_bias(const c10::optional<at::Tensor> &bias) {
    if (!bias.has_value()) return at::Tensor();
    return readable(*bias) ? bias->contiguous() : bias->to(at::kFloat).contiguous();
}

const void *bias_ptr(const at::Tensor &b) { return b.defined() ? b.data_ptr() : nullptr; }
int bias_is_bf16(const at::Tensor &b) { return b.defined() && b.scalar_type() == at::kBFloat16; }

std::vector<int64_t> out_shape(const at::Tensor &x, int64_t out) {
    std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
    s.back() = out;
    return s;
}

at::Tensor sparse_gemv_reference(const at::Tensor &x, const at::Tensor &wt, const c10::optional<at::Tensor> &bias,
                                 double tau) {
    at::Tensor xf = x.reshape({-1});
    at::Tensor keep = (xf.abs() > at::scalar_tensor(tau, xf.options())).nonzero().flatten();
    at::Tensor y = at::matmul(xf.to(at::kFloat).index_select(0, keep), wt.index_select(0, keep).to(at::kFloat));
    if (bias.has_value()) y = y + bias->to(at::kFloat);
    return y.to(x.scalar_type()).view(out_shape(x, wt.size(1)));
}

// A float32 or bf16 threshold on the CPU is read in place: item() goes through the dispatcher (~2 us, 210 calls a token).
float threshold(const at::Tensor &tau) {
    if (tau.is_cpu() && tau.numel() == 1) {
        if (tau.scalar_type() == at::kFloat) return *tau.const_data_ptr<float>();
        if (tau.scalar_type() == at::kBFloat16) return static_cast<float>(*tau.const_data_ptr<c10::BFloat16>());
    }
    return tau.item<float>();
}

// The threshold as torch compares it: rounded to x's dtype (|x| > tau runs in x's precision).
float threshold_for(const at::Tensor &tau, const at::Tensor &x) {
    float t = threshold(tau);
    if (x.scalar_type() == at::kBFloat16) return static_cast<float>(c10::BFloat16(t));
    if (x.scalar_type() == at::kHalf) return static_cast<float>(c10::Half(t));
    return t;
}

at::Tensor sparse_gemv_cpu(const at::Tensor &x, const at::Tensor &wt, const c10::optional<at::Tensor> &bias,
                           const at::Tensor &tau) {
    int64_t in = wt.size(0), out = wt.size(1);
    float t = threshold_for(tau, x);
    if (!readable(x) || !rows_readable(wt) || x.numel() != in)
        return sparse_gemv_reference(x, wt, bias, t);
    at::Tensor xc = x.contiguous(), b = kernel_bias(bias);
    int threads = at::get_num_threads();
    scratch.fit(in, (int64_t)threads * out);
    at::Tensor y = at::empty(out_shape(x, out), x.options());
    spon_plan p{wt.data_ptr(), bias_ptr(b), scratch.acc.data(), scratch.idx.data(), scratch.val.data(), in, out, t,
                threads, x.scalar_type() == at::kBFloat16, wt.scalar_type() == at::kBFloat16, bias_is_bf16(b), row_stride(wt)};
    spon_gemv_plan(&p, xc.data_ptr(), y.data_ptr());
    return y;
}

// Layers that read the same x (grouped by the compiled graph's pass, kernels/grouping.py): one kernel call for all,
// each with its own threshold, bias and scratch (accumulators back to back); siblings whose weights `prepare_decode_`
// laid side by side in one buffer are read as one row per kept input (spon_gemv_multi). A layer the kernel does not
// read sends the whole group through sparse_gemv_cpu one by one.
std::vector<at::Tensor> sparse_gemv_multi_cpu(const at::Tensor &x, at::TensorList wt,
                                              const c10::List<std::optional<at::Tensor>> &bias, at::TensorList tau) {
    int64_t n = (int64_t)wt.size(), in = x.numel();
    TORCH_CHECK(n == (int64_t)bias.size() && n == (int64_t)tau.size(), "sparse_gemv_multi: wt, bias and tau differ in length");
    bool direct = n >= 1 && n <= SPON_MAX_GROUP && readable(x);
    for (const at::Tensor &w : wt) direct = direct && rows_readable(w) && w.size(0) == in;
    std::vector<at::Tensor> ys;
    if (!direct) {
        for (int64_t s = 0; s < n; ++s) ys.push_back(sparse_gemv_cpu(x, wt[s], bias.get(s), tau[s]));
        return ys;
    }
    int threads = at::get_num_threads();
    int64_t outs = 0;
    for (const at::Tensor &w : wt) outs += w.size(1);
    scratch.fit(n * in, (int64_t)threads * outs);
    at::Tensor xc = x.contiguous();
    std::vector<at::Tensor> biases;
    std::vector<spon_plan> plans(n);
    std::vector<const spon_plan *> ptrs(n);
    std::vector<void *> outputs(n);
    for (int64_t s = 0, acc = 0; s < n; ++s) {
        int64_t out = wt[s].size(1);
        float t = threshold_for(tau[s], x);
        biases.push_back(kernel_bias(bias.get(s)));
        ys.push_back(at::empty(out_shape(x, out), x.options()));
        plans[s] = spon_plan{wt[s].data_ptr(), bias_ptr(biases[s]), scratch.acc.data() + acc, scratch.idx.data() + s * in,
                             scratch.val.data() + s * in, in, out, t, threads, x.scalar_type() == at::kBFloat16,
                             wt[s].scalar_type() == at::kBFloat16, bias_is_bf16(biases[s]), row_stride(wt[s])};
        ptrs[s] = &plans[s];
        outputs[s] = ys[s].data_ptr();
        acc += (int64_t)threads * out;
    }
    spon_gemv_multi(ptrs.data(), (int)n, xc.data_ptr(), outputs.data());
    return ys;
}

// The output head's single-token GEMV; whether a head calls it or torch's is DecodeHead's timed choice.
at::Tensor dense_gemv_cpu(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &bias) {
    int64_t out = w.size(0), in = w.size(1);
    if (!readable(x) || !readable(w) || !w.is_contiguous() || x.numel() != in)
        return at::linear(x, w, bias);
    at::Tensor xc = x.contiguous(), b = kernel_bias(bias);
    int threads = at::get_num_threads();
    scratch.fit(in, 0);
    at::Tensor y = at::empty(out_shape(x, out), x.options());
    spon_plan p{w.data_ptr(), bias_ptr(b), nullptr, scratch.idx.data(), scratch.val.data(), in, out, 0.0f, threads,
                x.scalar_type() == at::kBFloat16, w.scalar_type() == at::kBFloat16, bias_is_bf16(b), in};
    spon_dense_plan(&p, xc.data_ptr(), y.data_ptr());
    return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(spon, CPU, m) {
    m.impl("sparse_gemv", sparse_gemv_cpu);
    m.impl("dense_gemv", dense_gemv_cpu);
    m.impl("sparse_gemv_multi", sparse_gemv_multi_cpu);
}
