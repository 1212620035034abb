// The compiled CPU kernels called through the dispatcher from plain libtorch,
// against ATen composites on random inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <tuple>

#include "check.h"

namespace {

using Scores = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

void test_pgd_step() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("advprune::pgd_step_", "")
                .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                            c10::string_view, double, double)>();
  const at::Tensor x_nat = at::rand({8, 3, 17, 19});
  const at::Tensor x0 = x_nat + 0.3 * at::randn({8, 3, 17, 19});
  const at::Tensor grad = at::randn({8, 3, 17, 19});
  at::Tensor x = x0.clone();
  op.call(x, grad, x_nat, 0.05, 0.02, "linf", 0.0, 1.0);
  const at::Tensor want = at::clamp(at::min(at::max(x0 + 0.02 * at::sign(grad), x_nat - 0.05), x_nat + 0.05), 0.0, 1.0);
  CHECK(max_abs_diff(x, want) < 1e-6);
  // channels_last keeps its layout and its values
  at::Tensor xc = x0.contiguous(at::MemoryFormat::ChannelsLast);
  op.call(xc, grad, x_nat, 0.05, 0.02, "linf", 0.0, 1.0);
  CHECK(xc.is_contiguous(at::MemoryFormat::ChannelsLast));
  CHECK(max_abs_diff(xc, want) < 1e-6);
}

void test_sample_scores() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("advprune::sample_scores", "")
                .typed<Scores(const at::Tensor&, const at::Tensor&, bool)>();
  for (int64_t c : {3, 10, 100, 1000}) {
    const at::Tensor logits = 3 * at::randn({97, c});
    const at::Tensor labels = at::randint(0, c, {97}, at::kLong);
    const auto [loss, margin, el2n, entropy, confidence, correct] = op.call(logits, labels, true);
    const at::Tensor want_loss = at::cross_entropy_loss(logits, labels, {}, at::Reduction::None);
    CHECK(max_abs_diff(loss, want_loss) < 1e-5);
    const at::Tensor p = at::softmax(logits, 1);
    CHECK(max_abs_diff(confidence, p.gather(1, labels.unsqueeze(1)).squeeze(1)) < 1e-6);
    CHECK(at::equal(correct, logits.argmax(1).eq(labels)));
    CHECK(max_abs_diff(el2n, (p - at::one_hot(labels, c)).norm(2, {1})) < 1e-6);
  }
}

void test_kl_rows() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("advprune::kl_rows", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const at::Tensor p = 2 * at::randn({33, 10}), q = at::randn({33, 10});
  const at::Tensor lp = at::log_softmax(p, 1), lq = at::log_softmax(q, 1);
  const at::Tensor want = (lp.exp() * (lp - lq)).sum(1);
  CHECK(max_abs_diff(op.call(p, q), want) < 1e-5);
}

void test_max_pool2x2() {
  using Pooled = std::tuple<at::Tensor, at::Tensor>;
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("advprune::max_pool2x2", "")
                .typed<Pooled(const at::Tensor&)>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("advprune::max_pool2x2_backward", "")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  const at::Tensor x = at::randn({3, 5, 7, 6}).contiguous(at::MemoryFormat::ChannelsLast);
  const auto [out, argmax] = op.call(x);
  CHECK(max_abs_diff(out, at::max_pool2d(x, {2, 2})) == 0);
  // the gradient of the sum of the pooled values: 1 at each window's maximum, 0 elsewhere
  const at::Tensor grad_in = backward.call(at::ones_like(out), argmax, 7, 6);
  const at::Tensor expected = x == at::constant_pad_nd(at::upsample_nearest2d(out, {6, 6}), {0, 0, 0, 1}, NAN);
  CHECK(max_abs_diff(grad_in, expected.to(at::kFloat)) == 0);
}

// conv2d's input gradient (stride 1) through ATen.
at::Tensor conv_input_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, int64_t pad) {
  return std::get<0>(at::convolution_backward(grad, x, weight, std::nullopt, {1, 1}, {pad, pad}, {1, 1}, false,
                                              {0, 0}, 1, {true, false, false}));
}

void test_one_channel_conv() {
  using Pooled = std::tuple<at::Tensor, at::Tensor>;
  auto& dispatcher = c10::Dispatcher::singleton();
  auto input_grad = dispatcher.findSchemaOrThrow("advprune::one_channel_conv_input_grad", "")
                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  auto fused = dispatcher.findSchemaOrThrow("advprune::one_channel_conv_max_pool2x2", "")
                   .typed<Pooled(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                                 int64_t, bool)>();
  auto fused_grad =
      dispatcher.findSchemaOrThrow("advprune::one_channel_conv_max_pool2x2_input_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                            int64_t)>();
  const at::Tensor x = at::randn({3, 1, 9, 8}), weight = at::randn({5, 1, 3, 3}), bias = at::randn({5});
  for (auto format : {at::MemoryFormat::ChannelsLast, at::MemoryFormat::Contiguous}) {
    const at::Tensor grad = at::randn({3, 5, 9, 8}).contiguous(format);
    CHECK(max_abs_diff(input_grad.call(grad, weight, 1, 1), conv_input_grad(grad, x, weight, 1)) < 1e-5);
  }
  // the convolution and pooling in one, against max_pool2d(conv2d) and its backward (random data: no ties)
  const at::Tensor conv = at::conv2d(x, weight, bias, {1, 1}, {1, 1});
  const auto [pooled, indices] = at::max_pool2d_with_indices(conv, {2, 2});
  const auto [out, argmax] = fused.call(x, weight, bias, 1, 1, false);
  CHECK(max_abs_diff(out, pooled) < 1e-5);
  const at::Tensor grad = at::randn(out.sizes());
  const at::Tensor conv_grad =
      at::max_pool2d_with_indices_backward(grad, conv, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, indices);
  const at::Tensor want = conv_input_grad(conv_grad, x, weight, 1);
  CHECK(max_abs_diff(fused_grad.call(grad, argmax, weight, 1, 1, 9, 8), want) < 1e-5);
  // with the ReLU after the pooling: its values, and no gradient where it is not positive
  const auto [rectified, codes] = fused.call(x, weight, bias, 1, 1, true);
  CHECK(max_abs_diff(rectified, at::relu(pooled)) < 1e-5);
  const at::Tensor want_relu = conv_input_grad(
      at::max_pool2d_with_indices_backward(grad * (pooled > 0), conv, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, indices),
      x, weight, 1);
  CHECK(max_abs_diff(fused_grad.call(grad, codes, weight, 1, 1, 9, 8), want_relu) < 1e-5);
}

// The second block's input gradient from the pooled gradient and the window positions, against max_pool2d's
// backward and conv2d's through ATen (with and without the ReLU's "no gradient" position 4).
void test_conv3x3_max_pool2x2_input_grad() {
  using Pooled = std::tuple<at::Tensor, at::Tensor>;
  auto& dispatcher = c10::Dispatcher::singleton();
  auto pool = dispatcher.findSchemaOrThrow("advprune::max_pool2x2", "").typed<Pooled(const at::Tensor&)>();
  auto input_grad =
      dispatcher.findSchemaOrThrow("advprune::conv3x3_max_pool2x2_input_grad", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                            int64_t)>();
  const at::Tensor x = at::randn({3, 11, 9, 8}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = at::randn({6, 11, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor conv = at::conv2d(x, weight, {}, {1, 1}, {1, 1});
  const auto [pooled, indices] = at::max_pool2d_with_indices(conv, {2, 2});
  const auto [out, argmax] = pool.call(conv);
  const at::Tensor grad = at::randn(out.sizes());
  for (bool relu : {false, true}) {
    const at::Tensor codes = relu ? argmax.masked_fill(out <= 0, 4) : argmax;
    const at::Tensor passed = relu ? grad * (pooled > 0) : grad;
    const at::Tensor want = conv_input_grad(
        at::max_pool2d_with_indices_backward(passed, conv, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false, indices), x, weight,
        1);
    CHECK(max_abs_diff(input_grad.call(grad, codes, weight, 1, 1, 9, 8), want) < 1e-4);
  }
}

void test_errors_name_what_was_received() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("advprune::sample_scores", "")
                .typed<Scores(const at::Tensor&, const at::Tensor&, bool)>();
  bool raised = false;
  try {
    op.call(at::randn({4, 5}), at::full({4}, 7, at::kLong), true);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("labels must lie in [0, 5), got values from 7 to 7") != std::string::npos;
  }
  CHECK(raised);
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_pgd_step();
  test_sample_scores();
  test_kl_rows();
  test_max_pool2x2();
  test_one_channel_conv();
  test_conv3x3_max_pool2x2_input_grad();
  test_errors_name_what_was_received();
  if (advprune::testing::failures() == 0) std::printf("test_ops: all checks passed\n");
  return advprune::testing::failures() == 0 ? 0 : 1;
}
