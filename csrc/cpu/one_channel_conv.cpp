// CPU kernel of advprune::one_channel_conv_input_grad: the input gradient of a stride-1 convolution of a
// one-channel batch (the small CNN's first layer on Fashion-MNIST), which every attack step needs.
// oneDNN's backward-data kernel spends 6-20 ms on it at 175x32x28x28 float32 on an AVX2 core, against
// 1.5 ms for the forward: it reduces 32 channels into 1 through a path made for many. Here each input
// pixel is one dot product over its taps' channel vectors (channels_last: contiguous), in vector chunks.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "vec_math.h"

#include <algorithm>
#include <vector>

namespace advprune::cpu {
namespace {

constexpr int64_t kElementGrain = 32768;

struct ConvGeometry {
  int64_t n, c, oh, ow, kh, kw, pad_h, pad_w, h, w;

  ConvGeometry(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h_, int64_t pad_w_)
      : n(grad.size(0)), c(grad.size(1)), oh(grad.size(2)), ow(grad.size(3)), kh(weight.size(2)),
        kw(weight.size(3)), pad_h(pad_h_), pad_w(pad_w_), h(oh - 2 * pad_h_ + kh - 1), w(ow - 2 * pad_w_ + kw - 1) {}
};

// The weight as opmath values in [KH, KW, C] order: each tap's C channels contiguous, like a pixel's gradient.
template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> taps_by_channel(const at::Tensor& weight) {
  const at::Tensor w = weight.to(c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value)
                           .permute({2, 3, 0, 1})
                           .contiguous();
  const auto* data = w.const_data_ptr<at::opmath_type<scalar_t>>();
  return {data, data + w.numel()};
}

// sum over channels of a[c] * b[c], c < n, in vector chunks.
template <typename A>
inline Vec<A> dot_chunks(const A* a, const A* b, int64_t n, Vec<A> acc) {
  constexpr int64_t W = Vec<A>::size();
  int64_t i = 0;
  for (; i + W <= n; i += W) acc = at::vec::fmadd(Vec<A>::loadu(a + i), Vec<A>::loadu(b + i), acc);
  if (i < n) acc = acc + Vec<A>::loadu(a + i, n - i) * Vec<A>::loadu(b + i, n - i);
  return acc;
}

// grad_in[i, j] = sum over taps (a, b) and channels c of grad[i + pad_h - a, j + pad_w - b, c] * weight[c, a, b],
// for the taps whose gradient pixel exists; one image, channels_last gradient in opmath.
template <typename A>
void image_input_grad(const ConvGeometry& p, const A* g, const A* taps, A* out) {
  for (int64_t i = 0; i < p.h; ++i) {
    const int64_t a_first = std::max<int64_t>(0, i + p.pad_h - (p.oh - 1)), a_end = std::min(p.kh, i + p.pad_h + 1);
    for (int64_t j = 0; j < p.w; ++j) {
      const int64_t b_first = std::max<int64_t>(0, j + p.pad_w - (p.ow - 1)), b_end = std::min(p.kw, j + p.pad_w + 1);
      Vec<A> acc(A(0));
      for (int64_t a = a_first; a < a_end; ++a) {
        for (int64_t b = b_first; b < b_end; ++b) {
          const A* pixel = g + ((i + p.pad_h - a) * p.ow + (j + p.pad_w - b)) * p.c;
          acc = dot_chunks(pixel, taps + (a * p.kw + b) * p.c, p.c, acc);
        }
      }
      out[i * p.w + j] = lane_sum(acc);
    }
  }
}

template <typename scalar_t>
void input_grad_kernel(const at::Tensor& grad, const at::Tensor& weight, const ConvGeometry& p,
                       const at::Tensor& grad_in) {
  using A = at::opmath_type<scalar_t>;
  const std::vector<A> taps = taps_by_channel<scalar_t>(weight);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.data_ptr<scalar_t>();
  const int64_t image_in = p.oh * p.ow * p.c, image_out = p.h * p.w;
  const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(image_in, 1));
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> converted(std::is_same_v<scalar_t, A> ? 0 : image_in), out(image_out);
    for (int64_t image = begin; image < end; ++image) {
      const A* src = as_opmath(g + image * image_in, image_in, converted.data());
      image_input_grad(p, src, taps.data(), out.data());
      store_from_opmath(out.data(), gi + image * image_out, image_out);
    }
  });
}

at::Tensor one_channel_conv_input_grad_cpu(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h,
                                           int64_t pad_w) {
  check_one_channel_conv_input_grad(grad, weight, pad_h, pad_w, c10::kCPU);
  const at::Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const ConvGeometry p(g, weight, pad_h, pad_w);
  at::Tensor grad_in = at::empty({p.n, 1, p.h, p.w}, g.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_in.numel() == 0) return grad_in;  // (no channels or no gradient pixels: every sum is empty, 0)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "one_channel_conv_input_grad",
                                  [&] { input_grad_kernel<scalar_t>(g, weight, p, grad_in); });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) { m.impl("one_channel_conv_input_grad", &one_channel_conv_input_grad_cpu); }

}  // namespace advprune::cpu
