// CUDA kernels of advprune::pgd_step_ and advprune::project_.
// linf: one elementwise pass with 16-byte packs. l2: a reduction kernel that
// gathers the three per-sample sums (blocks per sample, atomics into [rows, 3]),
// then an elementwise kernel that applies the per-sample coefficients.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <advprune/math.h>

#include "../common/checks.h"
#include "cuda_utils.cuh"

namespace advprune::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int VEC, bool kStep>
__global__ void linf_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                            const scalar_t* __restrict__ n, int64_t numel,
                            at::opmath_type<scalar_t> step, at::opmath_type<scalar_t> eps,
                            at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  using A = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const int64_t packs = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < packs; i += stride) {
    P xp = reinterpret_cast<const P*>(x)[i];
    const P np = reinterpret_cast<const P*>(n)[i];
    P gp;
    if constexpr (kStep) gp = reinterpret_cast<const P*>(g)[i];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A xv = static_cast<A>(xp.v[k]), nv = static_cast<A>(np.v[k]);
      const A out = kStep ? math::pgd_step_linf(xv, static_cast<A>(gp.v[k]), nv, step, eps, lo, hi)
                          : math::project_linf(xv, nv, eps, lo, hi);
      xp.v[k] = static_cast<scalar_t>(out);
    }
    reinterpret_cast<P*>(x)[i] = xp;
  }
  for (int64_t i = packs * VEC + first; i < numel; i += stride) {  // the tail, VEC > 1 only
    const A xv = static_cast<A>(x[i]), nv = static_cast<A>(n[i]);
    const A out = kStep ? math::pgd_step_linf(xv, static_cast<A>(g[i]), nv, step, eps, lo, hi)
                        : math::project_linf(xv, nv, eps, lo, hi);
    x[i] = static_cast<scalar_t>(out);
  }
}

// grid (rows, chunks): each block adds the sums of its chunk of a row into sums[row].
template <typename scalar_t, bool kStep>
__global__ void l2_sums_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                               const scalar_t* __restrict__ n, int64_t row_size,
                               at::opmath_type<scalar_t>* __restrict__ sums) {
  using A = at::opmath_type<scalar_t>;
  const int64_t row = blockIdx.x;
  const int64_t base = row * row_size;
  A gg = 0, dd = 0, dg = 0;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < row_size;
       j += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const A gv = kStep ? static_cast<A>(g[base + j]) : A(0);
    math::l2_accumulate(gg, dd, dg, static_cast<A>(x[base + j]), gv, static_cast<A>(n[base + j]));
  }
  gg = block_sum(gg);
  dd = block_sum(dd);
  dg = block_sum(dg);
  if (threadIdx.x == 0) {
    atomicAdd(sums + 3 * row + 0, gg);
    atomicAdd(sums + 3 * row + 1, dd);
    atomicAdd(sums + 3 * row + 2, dg);
  }
}

template <typename scalar_t, bool kStep>
__global__ void l2_apply_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                const scalar_t* __restrict__ n, int64_t numel, int64_t row_size,
                                const at::opmath_type<scalar_t>* __restrict__ sums,
                                at::opmath_type<scalar_t> step, at::opmath_type<scalar_t> eps,
                                at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  using A = at::opmath_type<scalar_t>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / row_size;
    const math::L2Sums<A> s{sums[3 * row], sums[3 * row + 1], sums[3 * row + 2]};
    const auto k = math::l2_coefficients(s, kStep ? step : A(0), eps);
    const A gv = kStep ? static_cast<A>(g[i]) : A(0);
    x[i] = static_cast<scalar_t>(
        math::l2_apply(static_cast<A>(x[i]), gv, static_cast<A>(n[i]), k.grad_scale, k.delta_scale, lo, hi));
  }
}

template <typename scalar_t, bool kStep>
void launch_linf(const PgdOperands& ops, double step, double eps, double lo, double hi) {
  using A = at::opmath_type<scalar_t>;
  scalar_t* x = ops.x.data_ptr<scalar_t>();
  const scalar_t* g = kStep ? ops.grad.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* n = ops.x_nat.const_data_ptr<scalar_t>();
  const int64_t numel = ops.x.numel();
  const int vec = pack_width<scalar_t>({x, kStep ? g : x, n});
  const cudaStream_t stream = current_stream();
  const int64_t blocks = grid_for(numel / vec, kThreads);
  if (vec == 16 / static_cast<int>(sizeof(scalar_t))) {
    linf_kernel<scalar_t, 16 / sizeof(scalar_t), kStep><<<blocks, kThreads, 0, stream>>>(
        x, g, n, numel, A(step), A(eps), A(lo), A(hi));
  } else {
    linf_kernel<scalar_t, 1, kStep><<<blocks, kThreads, 0, stream>>>(x, g, n, numel, A(step), A(eps),
                                                                      A(lo), A(hi));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kStep>
void launch_l2(const PgdOperands& ops, double step, double eps, double lo, double hi) {
  using A = at::opmath_type<scalar_t>;
  scalar_t* x = ops.x.data_ptr<scalar_t>();
  const scalar_t* g = kStep ? ops.grad.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* n = ops.x_nat.const_data_ptr<scalar_t>();
  const at::Tensor sums = at::zeros({ops.rows, 3}, ops.x.options().dtype(c10::CppTypeToScalarType<A>::value));
  const cudaStream_t stream = current_stream();
  const int64_t chunks = std::min<int64_t>((ops.row_size + 4 * kThreads - 1) / (4 * kThreads), 65535);
  l2_sums_kernel<scalar_t, kStep><<<dim3(ops.rows, chunks), kThreads, 0, stream>>>(
      x, g, n, ops.row_size, sums.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t numel = ops.x.numel();
  l2_apply_kernel<scalar_t, kStep><<<grid_for(numel, kThreads), kThreads, 0, stream>>>(
      x, g, n, numel, ops.row_size, sums.const_data_ptr<A>(), A(step), A(eps), A(lo), A(hi));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool kStep>
void run(const char* op, const at::Tensor& x_adv, const std::optional<at::Tensor>& grad,
         const at::Tensor& x_nat, double eps, double step, c10::string_view norm, double lo,
         double hi) {
  const Norm which = check_pgd_call(op, c10::kCUDA, x_adv, grad, x_nat, eps,
                                    kStep ? std::optional<double>(step) : std::nullopt, norm, lo, hi);
  if (x_adv.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x_adv.device());
  const PgdOperands ops = prepare_pgd(x_adv, grad, x_nat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ops.x.scalar_type(), "pgd_cuda", [&] {
    if (which == Norm::Linf) {
      launch_linf<scalar_t, kStep>(ops, step, eps, lo, hi);
    } else {
      launch_l2<scalar_t, kStep>(ops, step, eps, lo, hi);
    }
  });
  finish_pgd(x_adv, ops);
}

void pgd_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                   double eps, double step_size, c10::string_view norm, double clip_min,
                   double clip_max) {
  run<true>("advprune.pgd_step_", x_adv, grad, x_nat, eps, step_size, norm, clip_min, clip_max);
}

void project_cuda(const at::Tensor& x_adv, const at::Tensor& x_nat, double eps,
                  c10::string_view norm, double clip_min, double clip_max) {
  run<false>("advprune.project_", x_adv, std::nullopt, x_nat, eps, 0.0, norm, clip_min, clip_max);
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CUDA, m) {
  m.impl("pgd_step_", &pgd_step_cuda);
  m.impl("project_", &project_cuda);
}

}  // namespace advprune::cuda
