// CPU kernels of the small CNN's first layer on one-channel images (Fashion-MNIST), which every attack step
// runs with frozen weights.
// advprune::one_channel_conv_input_grad: the input gradient of a stride-1 convolution of a one-channel batch.
// oneDNN's backward-data kernel spends 6-20 ms on it at 175x32x28x28 float32 on an AVX2 core, against
// 1.5 ms for the forward: it reduces 32 channels into 1 through a path made for many. Here, for a
// channels_last gradient, each input pixel is one dot product over its taps' channel vectors (contiguous, read
// from a zero-padded copy of the image's gradient), four pixels at a time; for a contiguous (NCHW) one, each
// channel's plane is added, shifted and weighted, once per tap onto the image's input gradient, a row at a time
// (plane and result stay in L1), so no layout copy is needed.
// advprune::one_channel_conv_max_pool2x2 and its input gradient: the convolution, 2x2 max pooling and
// (optionally) ReLU in one pass, image by image, so that the convolution's output never leaves the cache.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "pool_rows.h"
#include "vec_math.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace advprune::cpu {
namespace {

constexpr int64_t kElementGrain = 32768;

struct ConvGeometry {
  int64_t n, c, oh, ow, kh, kw, pad_h, pad_w, h, w;

  // From the output gradient [N, C, OH, OW] (the input's size follows).
  ConvGeometry(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h_, int64_t pad_w_)
      : n(grad.size(0)), c(grad.size(1)), oh(grad.size(2)), ow(grad.size(3)), kh(weight.size(2)),
        kw(weight.size(3)), pad_h(pad_h_), pad_w(pad_w_), h(oh - 2 * pad_h_ + kh - 1), w(ow - 2 * pad_w_ + kw - 1) {}

  // From the input's size (the output's follows).
  ConvGeometry(int64_t n_, int64_t h_, int64_t w_, const at::Tensor& weight, int64_t pad_h_, int64_t pad_w_)
      : n(n_), c(weight.size(0)), oh(h_ + 2 * pad_h_ - weight.size(2) + 1), ow(w_ + 2 * pad_w_ - weight.size(3) + 1),
        kh(weight.size(2)), kw(weight.size(3)), pad_h(pad_h_), pad_w(pad_w_), h(h_), w(w_) {}
};

// The weight as opmath values, in [KH, KW, C] order for a channels_last gradient (each tap's C channels
// contiguous, like a pixel's gradient), in [C, KH, KW] order for a contiguous one.
template <typename scalar_t>
std::vector<at::opmath_type<scalar_t>> opmath_taps(const at::Tensor& weight, bool channels_last) {
  at::Tensor w = weight.to(c10::CppTypeToScalarType<at::opmath_type<scalar_t>>::value);
  w = (channels_last ? w.permute({2, 3, 0, 1}) : w).contiguous();
  const auto* data = w.const_data_ptr<at::opmath_type<scalar_t>>();
  return {data, data + w.numel()};
}

// Scratch for one image's gradient in opmath, `channels` values a pixel (all of them for a channels_last
// gradient, one for a plane of a contiguous one), zero-padded so that every input pixel reads all KH x KW taps
// with no edge cases: gradient pixel (r, col) at (r + KH - 1, col + KW - 1), for input columns up to `width`.
template <typename A>
struct PaddedPixels {
  int64_t c, kh, kw, cols;
  std::vector<A> data;

  PaddedPixels(const ConvGeometry& p, int64_t channels, int64_t width)
      : c(channels), kh(p.kh), kw(p.kw), cols(width + 2 * (p.pad_w + p.kw - 1)),
        data((p.h + 2 * (p.pad_h + p.kh - 1)) * cols * channels, A(0)) {}

  // The first channel of gradient pixel (r, col); r and col may reach KH - 1 and KW - 1 outside the gradient.
  A* pixel(int64_t r, int64_t col) { return data.data() + ((r + kh - 1) * cols + col + kw - 1) * c; }
};

// grad_in[i, j + t] for t < B: the sum over taps (a, b) and channels of gradient pixel (i + pad_h - a, j + t +
// pad_w - b) times the tap's weights (taps in [KH, KW, C]); the B pixels share each weight load.
template <int B, typename A>
inline void input_grad_block(const ConvGeometry& p, PaddedPixels<A>& g, const A* taps, int64_t i, int64_t j, A* out) {
  using V = Vec<A>;
  V acc[B];
  for (V& v : acc) v = V(A(0));
  for (int64_t a = 0; a < p.kh; ++a) {
    for (int64_t b = 0; b < p.kw; ++b) {
      const A* pixel = g.pixel(i + p.pad_h - a, j + p.pad_w - b);
      const A* w = taps + (a * p.kw + b) * p.c;
      for (int64_t ch = 0; ch < p.c; ch += V::size()) {
        const int64_t count = std::min<int64_t>(V::size(), p.c - ch);  // past it both loads give 0
        const V wv = V::loadu(w + ch, count);
        for (int t = 0; t < B; ++t) acc[t] = at::vec::fmadd(V::loadu(pixel + t * p.c + ch, count), wv, acc[t]);
      }
    }
  }
  for (int t = 0; t < B; ++t) out[t] = lane_sum(acc[t]);
}

// One image's input gradient [H, W] from its padded channels_last gradient, four pixels at a time.
template <typename A>
void image_input_grad(const ConvGeometry& p, PaddedPixels<A>& g, const A* taps, A* out) {
  constexpr int kBlock = 4;
  for (int64_t i = 0; i < p.h; ++i) {
    int64_t j = 0;
    for (; j + kBlock <= p.w; j += kBlock) input_grad_block<kBlock>(p, g, taps, i, j, out + i * p.w + j);
    for (; j < p.w; ++j) input_grad_block<1>(p, g, taps, i, j, out + i * p.w + j);
  }
}

// Scratch for a contiguous gradient: one channel's plane, padded (every tap reads whole vectors), and the
// image's input gradient in rows rounded up to whole vectors (the columns past W are computed and dropped).
template <typename A>
struct PaddedPlanes {
  int64_t width;
  PaddedPixels<A> plane;
  std::vector<A> out;

  explicit PaddedPlanes(const ConvGeometry& p)
      : width((p.w + Vec<A>::size() - 1) / Vec<A>::size() * Vec<A>::size()), plane(p, 1, width),
        out(p.h * width) {}
};

// The same sum for a contiguous gradient (one image, [C, OH, OW]; taps in [C, KH, KW]): channel by channel, each
// input row's vector chunk gathers its KH x KW weighted, shifted gradient rows from the padded plane.
template <typename scalar_t, typename A>
void image_input_grad_planar(const ConvGeometry& p, const scalar_t* g, const A* taps, PaddedPlanes<A>& s,
                             scalar_t* grad_in) {
  constexpr int64_t W = Vec<A>::size();
  std::fill(s.out.begin(), s.out.end(), A(0));
  for (int64_t ch = 0; ch < p.c; ++ch) {
    for (int64_t r = 0; r < p.oh; ++r) at::vec::convert(g + (ch * p.oh + r) * p.ow, s.plane.pixel(r, 0), p.ow);
    const A* w = taps + ch * p.kh * p.kw;
    for (int64_t i = 0; i < p.h; ++i) {
      for (int64_t j = 0; j < s.width; j += W) {
        Vec<A> acc = Vec<A>::loadu(s.out.data() + i * s.width + j);
        for (int64_t a = 0; a < p.kh; ++a) {
          const A* row = s.plane.pixel(i + p.pad_h - a, j + p.pad_w);  // input (i, j) reads column j + pad_w - b
          for (int64_t b = 0; b < p.kw; ++b) acc = at::vec::fmadd(Vec<A>(w[a * p.kw + b]), Vec<A>::loadu(row - b), acc);
        }
        acc.store(s.out.data() + i * s.width + j);
      }
    }
  }
  for (int64_t i = 0; i < p.h; ++i) store_from_opmath(s.out.data() + i * s.width, grad_in + i * p.w, p.w);
}

template <typename scalar_t>
void input_grad_kernel(const at::Tensor& grad, const at::Tensor& weight, const ConvGeometry& p,
                       const at::Tensor& grad_in) {
  using A = at::opmath_type<scalar_t>;
  const bool channels_last = grad.is_contiguous(at::MemoryFormat::ChannelsLast);
  const std::vector<A> taps = opmath_taps<scalar_t>(weight, channels_last);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.data_ptr<scalar_t>();
  const int64_t image_in = p.oh * p.ow * p.c, image_out = p.h * p.w;
  const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(image_in, 1));
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    if (!channels_last) {
      PaddedPlanes<A> scratch(p);
      for (int64_t image = begin; image < end; ++image) {
        image_input_grad_planar(p, g + image * image_in, taps.data(), scratch, gi + image * image_out);
      }
      return;
    }
    PaddedPixels<A> padded(p, p.c, p.w);
    std::vector<A> out(image_out);
    for (int64_t image = begin; image < end; ++image) {
      for (int64_t r = 0; r < p.oh; ++r) {
        at::vec::convert(g + image * image_in + r * p.ow * p.c, padded.pixel(r, 0), p.ow * p.c);
      }
      image_input_grad(p, padded, taps.data(), out.data());
      store_from_opmath(out.data(), gi + image * image_out, image_out);
    }
  });
}

at::Tensor one_channel_conv_input_grad_cpu(const at::Tensor& grad, const at::Tensor& weight, int64_t pad_h,
                                           int64_t pad_w) {
  check_one_channel_conv_input_grad(grad, weight, pad_h, pad_w, c10::kCPU);
  // a gradient in neither layout is made contiguous; one channel or 1x1 pixels are both layouts (channels_last)
  const at::Tensor g = grad.is_contiguous(at::MemoryFormat::ChannelsLast) ? grad : grad.contiguous();
  const ConvGeometry p(g, weight, pad_h, pad_w);
  at::Tensor grad_in = at::empty({p.n, 1, p.h, p.w}, g.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_in.numel() == 0) return grad_in;  // (no channels or no gradient pixels: every sum is empty, 0)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "one_channel_conv_input_grad",
                                  [&] { input_grad_kernel<scalar_t>(g, weight, p, grad_in); });
  return grad_in;
}

// ---- The small CNN's first block with frozen weights: convolution and 2x2 max pooling in one pass, so that the
// convolution's output (25 MB at batch 250) and its gradient never leave the cache. ----

// Rounds opmath values to scalar_t and back, as an unfused convolution's output in scalar_t would be.
template <typename scalar_t>
inline Vec<at::opmath_type<scalar_t>> round_like(const Vec<at::opmath_type<scalar_t>>& v) {
  using A = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, A>) {
    return v;
  } else {
    return std::get<0>(at::vec::convert_to_float<scalar_t>(at::vec::convert_from_float<scalar_t>(v, v)));
  }
}

// The code of a window whose output ReLU zeroed: it matches no window position, so no gradient flows back.
constexpr int kReluZeroed = 4;

// One pooled row of one image (channels_last, opmath): for each pooled pixel and chunk of channels, the four
// convolution outputs of its window (bias plus each tap's weights, taps in [KH, KW, C], times the input pixel
// under it in the zero-padded input plane), rounded to scalar_t, then their maximum and its window position;
// with relu, the maximum's ReLU (NaN stays NaN) and kReluZeroed where it is not positive (as ReLU's backward).
template <typename scalar_t, typename A = at::opmath_type<scalar_t>>
void conv_pool_row(const ConvGeometry& p, const A* padded, int64_t padded_w, const A* taps, const A* bias,
                   bool relu, int64_t pooled_row, A* out, A* codes) {
  using V = Vec<A>;
  for_each_pixel_chunk(p.ow / 2, p.c, V::size(), [&](int64_t j, int64_t ch, int64_t count) {
    const V b0 = V::loadu(bias + ch, count);
    V conv[4] = {b0, b0, b0, b0};  // the window in order: (0, 0), (0, 1), (1, 0), (1, 1)
    const A* corner = padded + 2 * pooled_row * padded_w + 2 * j;
    for (int64_t a = 0; a < p.kh; ++a) {
      for (int64_t b = 0; b < p.kw; ++b) {
        const V w = V::loadu(taps + (a * p.kw + b) * p.c + ch, count);
        const A* in = corner + a * padded_w + b;
        conv[0] = at::vec::fmadd(V(in[0]), w, conv[0]);
        conv[1] = at::vec::fmadd(V(in[1]), w, conv[1]);
        conv[2] = at::vec::fmadd(V(in[padded_w]), w, conv[2]);
        conv[3] = at::vec::fmadd(V(in[padded_w + 1]), w, conv[3]);
      }
    }
    for (V& v : conv) v = round_like<scalar_t>(v);
    V m, code;
    window_max(conv, m, code);
    if (relu) {
      const V zero(A(0));
      code = V::blendv(V(A(kReluZeroed)), code, m > zero);
      m = V::blendv(m, zero, m <= zero);
    }
    m.store(out + j * p.c + ch, count);
    code.store(codes + j * p.c + ch, count);
  });
}

template <typename scalar_t>
void conv_pool_kernel(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      bool relu, const ConvGeometry& p, const at::Tensor& out, const at::Tensor& argmax) {
  using A = at::opmath_type<scalar_t>;
  const std::vector<A> taps = opmath_taps<scalar_t>(weight, /*channels_last=*/true);
  std::vector<A> bias_values(p.c, A(0));
  if (bias.has_value() && bias->defined()) {
    const at::Tensor b = bias->to(c10::CppTypeToScalarType<A>::value).contiguous();
    std::copy(b.const_data_ptr<A>(), b.const_data_ptr<A>() + p.c, bias_values.begin());
  }
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  uint8_t* k = argmax.data_ptr<uint8_t>();
  const int64_t ph = p.oh / 2, row_out = (p.ow / 2) * p.c, padded_w = p.w + 2 * p.pad_w;
  const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(p.oh * p.ow * p.c, 1));
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> padded((p.h + 2 * p.pad_h) * padded_w, A(0)), pooled(row_out), codes(row_out);
    for (int64_t image = begin; image < end; ++image) {
      for (int64_t i = 0; i < p.h; ++i) {  // the borders stay 0
        at::vec::convert(in + (image * p.h + i) * p.w, padded.data() + (i + p.pad_h) * padded_w + p.pad_w, p.w);
      }
      for (int64_t r = 0; r < ph; ++r) {
        conv_pool_row<scalar_t>(p, padded.data(), padded_w, taps.data(), bias_values.data(), relu, r,
                                pooled.data(), codes.data());
        const int64_t at = (image * ph + r) * row_out;
        store_from_opmath(pooled.data(), o + at, row_out);  // exact: each value is a rounded convolution's
        cast_codes(codes.data(), k + at, row_out);
      }
    }
  });
}

template <typename scalar_t>
void conv_pool_input_grad_kernel(const at::Tensor& grad, const at::Tensor& argmax, const at::Tensor& weight,
                                 const ConvGeometry& p, const at::Tensor& grad_in) {
  using A = at::opmath_type<scalar_t>;
  const std::vector<A> taps = opmath_taps<scalar_t>(weight, /*channels_last=*/true);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const uint8_t* k = argmax.const_data_ptr<uint8_t>();
  scalar_t* gi = grad_in.data_ptr<scalar_t>();
  const int64_t ph = p.oh / 2, pw = p.ow / 2, row_out = pw * p.c;
  const int64_t grain = std::max<int64_t>(1, kElementGrain / std::max<int64_t>(p.oh * p.ow * p.c, 1));
  at::parallel_for(0, p.n, grain, [&](int64_t begin, int64_t end) {
    // the convolution's output gradient of one image: rows past 2 * ph are in no window and stay 0
    PaddedPixels<A> conv_grad(p, p.c, p.w);
    std::vector<A> src(row_out), codes(row_out), out(p.h * p.w);
    for (int64_t image = begin; image < end; ++image) {
      for (int64_t r = 0; r < ph; ++r) {
        const int64_t at = (image * ph + r) * row_out;
        at::vec::convert(g + at, src.data(), row_out);
        cast_codes(k + at, codes.data(), row_out);
        unpool_row(src.data(), codes.data(), pw, p.c, p.ow, conv_grad.pixel(2 * r, 0), conv_grad.pixel(2 * r + 1, 0));
      }
      image_input_grad(p, conv_grad, taps.data(), out.data());
      store_from_opmath(out.data(), gi + image * p.h * p.w, p.h * p.w);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> one_channel_conv_max_pool2x2_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                                    const std::optional<at::Tensor>& bias,
                                                                    int64_t pad_h, int64_t pad_w, bool relu) {
  check_one_channel_conv_max_pool2x2(x, weight, bias, pad_h, pad_w, c10::kCPU);
  const at::Tensor input = x.contiguous();  // one channel: [N, H, W] in memory, either layout
  const ConvGeometry p(x.size(0), x.size(2), x.size(3), weight, pad_h, pad_w);
  const auto options = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  const std::vector<int64_t> shape{p.n, p.c, p.oh / 2, p.ow / 2};
  at::Tensor out = at::empty(shape, options), argmax = at::empty(shape, options.dtype(at::kByte));
  if (out.numel() == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "one_channel_conv_max_pool2x2",
                                  [&] { conv_pool_kernel<scalar_t>(input, weight, bias, relu, p, out, argmax); });
  return {out, argmax};
}

at::Tensor one_channel_conv_max_pool2x2_input_grad_cpu(const at::Tensor& grad, const at::Tensor& argmax,
                                                       const at::Tensor& weight, int64_t pad_h, int64_t pad_w,
                                                       int64_t height, int64_t width) {
  check_one_channel_conv_max_pool2x2_input_grad(grad, argmax, weight, pad_h, pad_w, height, width, c10::kCPU);
  const at::Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor k = argmax.contiguous(at::MemoryFormat::ChannelsLast);
  const ConvGeometry p(g.size(0), height, width, weight, pad_h, pad_w);
  at::Tensor grad_in = at::empty({p.n, 1, height, width}, g.options().memory_format(at::MemoryFormat::Contiguous));
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "one_channel_conv_max_pool2x2_input_grad",
                                  [&] { conv_pool_input_grad_kernel<scalar_t>(g, k, weight, p, grad_in); });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) {
  m.impl("one_channel_conv_input_grad", &one_channel_conv_input_grad_cpu);
  m.impl("one_channel_conv_max_pool2x2", &one_channel_conv_max_pool2x2_cpu);
  m.impl("one_channel_conv_max_pool2x2_input_grad", &one_channel_conv_max_pool2x2_input_grad_cpu);
}

}  // namespace advprune::cpu
