// CUDA kernels of advprune::pgd_step_ and advprune::project_.
// linf: one elementwise pass with 16-byte packs. l2: a (row, chunk) kernel writes each chunk's three
// sums, one thread a row adds them in order (deterministic, no atomics) into the row's two coefficients,
// and a (row, chunk) kernel applies them with 16-byte packs where the rows allow.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

// grid (rows, chunks): each block writes the sums of its chunk of a row to partials[row, chunk] (no
// atomics: the sums, and so the step, are the same on every run).
template <typename scalar_t, bool kStep>
__global__ void l2_sums_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                               const scalar_t* __restrict__ n, int64_t row_size,
                               at::opmath_type<scalar_t>* __restrict__ partials) {
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
    A* out = partials + 3 * (row * gridDim.y + blockIdx.y);
    out[0] = gg;
    out[1] = dd;
    out[2] = dg;
  }
}

// One thread a row: its chunks' sums added in chunk order, then its two coefficients, computed once.
template <typename A>
__global__ void l2_coefficients_kernel(const A* __restrict__ partials, int64_t rows, int64_t chunks, A step,
                                       A eps, A* __restrict__ coefficients) {
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    math::L2Sums<A> s{A(0), A(0), A(0)};
    for (int64_t c = 0; c < chunks; ++c) {
      const A* p = partials + 3 * (row * chunks + c);
      s.gg += p[0];
      s.dd += p[1];
      s.dg += p[2];
    }
    const auto k = math::l2_coefficients(s, step, eps);
    coefficients[2 * row] = k.grad_scale;
    coefficients[2 * row + 1] = k.delta_scale;
  }
}

// grid (rows, chunks): each block applies its row's coefficients to a chunk of the row, VEC elements
// per load (VEC > 1 only when the row size is a multiple of VEC and every pointer is 16-byte aligned).
template <typename scalar_t, int VEC, bool kStep>
__global__ void l2_apply_kernel(scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                const scalar_t* __restrict__ n, int64_t row_size,
                                const at::opmath_type<scalar_t>* __restrict__ coefficients,
                                at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi) {
  using A = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  const int64_t row = blockIdx.x;
  const A grad_scale = coefficients[2 * row], delta_scale = coefficients[2 * row + 1];
  const int64_t packs = row_size / VEC, first_pack = row * packs;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < packs;
       j += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    P xp = reinterpret_cast<const P*>(x)[first_pack + j];
    const P np = reinterpret_cast<const P*>(n)[first_pack + j];
    P gp;
    if constexpr (kStep) gp = reinterpret_cast<const P*>(g)[first_pack + j];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const A gv = kStep ? static_cast<A>(gp.v[k]) : A(0);
      xp.v[k] = static_cast<scalar_t>(math::l2_apply(static_cast<A>(xp.v[k]), gv, static_cast<A>(np.v[k]),
                                                     grad_scale, delta_scale, lo, hi));
    }
    reinterpret_cast<P*>(x)[first_pack + j] = xp;
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

// Chunks of a row for a (row, chunk) grid: about 4 items a thread, within the grid's y limit.
inline int64_t row_chunks(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>((items + 4 * kThreads - 1) / (4 * kThreads), 65535));
}

template <typename scalar_t, bool kStep>
void launch_l2(const PgdOperands& ops, double step, double eps, double lo, double hi) {
  using A = at::opmath_type<scalar_t>;
  scalar_t* x = ops.x.data_ptr<scalar_t>();
  const scalar_t* g = kStep ? ops.grad.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* n = ops.x_nat.const_data_ptr<scalar_t>();
  const auto options = ops.x.options().dtype(c10::CppTypeToScalarType<A>::value);
  const int64_t chunks = row_chunks(ops.row_size);
  const at::Tensor partials = at::empty({ops.rows, chunks, 3}, options);  // every slot is written
  const at::Tensor coefficients = at::empty({ops.rows, 2}, options);
  const cudaStream_t stream = current_stream();
  l2_sums_kernel<scalar_t, kStep><<<dim3(ops.rows, chunks), kThreads, 0, stream>>>(
      x, g, n, ops.row_size, partials.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  l2_coefficients_kernel<A><<<grid_for(ops.rows, kThreads), kThreads, 0, stream>>>(
      partials.const_data_ptr<A>(), ops.rows, chunks, A(kStep ? step : 0.0), A(eps), coefficients.data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool packed = ops.row_size % kVec == 0 && pack_width<scalar_t>({x, kStep ? g : x, n}) == kVec;
  const A* k = coefficients.const_data_ptr<A>();
  if (packed) {
    const dim3 grid(ops.rows, row_chunks(ops.row_size / kVec));
    l2_apply_kernel<scalar_t, kVec, kStep><<<grid, kThreads, 0, stream>>>(x, g, n, ops.row_size, k, A(lo), A(hi));
  } else {
    const dim3 grid(ops.rows, row_chunks(ops.row_size));
    l2_apply_kernel<scalar_t, 1, kStep><<<grid, kThreads, 0, stream>>>(x, g, n, ops.row_size, k, A(lo), A(hi));
  }
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
