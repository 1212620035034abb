// CPU kernel of advprune::sample_scores: per-row loss, margin, EL2N, entropy,
// confidence and correctness from one read of the logits. Rows are handled in
// blocks that stay in L1: the maxima per row, then exp(z - max) of the whole
// block in one vectorised sweep, then the per-row sums over that buffer.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/checks.h"
#include "vec_math.h"

namespace advprune::cpu {
namespace {

constexpr int64_t kBlockElements = 2048;

template <typename A>
math::RowMax<A> row_max(const A* z, int64_t c, int64_t y) {
  math::RowMax<A> m = math::row_max_init<A>();
  if (c < 2 * Vec<A>::size()) {
    for (int64_t j = 0; j < c; ++j) math::row_max_update(m, z[j], j, y);
    return m;
  }
  m.z_y = z[y];
  m.other_max = std::max(range_max(z, y), range_max(z + y + 1, c - y - 1));
  m.max = math::maximum(m.other_max, m.z_y);
  m.argmax = 0;
  while (m.argmax < c && !(z[m.argmax] == m.max)) ++m.argmax;  // first index of the max
  if (m.argmax == c) m.argmax = -1;                             // NaN row: nothing is correct
  return m;
}

// Sums of e and its products over [0, n) of the exp buffer, vectorised.
template <typename A>
void add_range(math::RowSums<A>& s, const A* e, const A* t, int64_t n) {
  if (n < Vec<A>::size()) {
    for (int64_t j = 0; j < n; ++j) math::row_sums_add(s.sum_exp, s.sum_exp_sq, s.sum_exp_shift, e[j], t[j]);
    return;
  }
  const Vec<A> zero(A(0));
  Vec<A> se = zero, se2 = zero, set = zero;
  for_each_chunk2(e, t, n, [&](Vec<A> ev, Vec<A> tv, int64_t, int64_t) {
    math::row_sums_add(se, se2, set, ev, tv);  // zero-filled tail lanes add 0
  });
  s.sum_exp += lane_sum(se);
  s.sum_exp_sq += lane_sum(se2);
  s.sum_exp_shift += lane_sum(set);
}

template <typename scalar_t>
void scores_kernel(const at::Tensor& logits, const at::Tensor& labels, float* loss, float* margin,
                   float* el2n, float* entropy, float* confidence, bool* correct) {
  using A = at::opmath_type<scalar_t>;
  const int64_t n = logits.size(0), c = logits.size(1);
  const scalar_t* z_all = logits.const_data_ptr<scalar_t>();
  const int64_t* y_all = labels.const_data_ptr<int64_t>();
  const int64_t block_rows = std::max<int64_t>(1, kBlockElements / c);
  at::parallel_for(0, n, block_rows, [&](int64_t begin, int64_t end) {
    const int64_t cap = block_rows * c;
    std::vector<A> zbuf(std::is_same_v<scalar_t, A> ? 0 : cap), t(cap), e(cap);
    std::vector<math::RowMax<A>> maxima(block_rows);
    for (int64_t b0 = begin; b0 < end; b0 += block_rows) {
      const int64_t rows = std::min(block_rows, end - b0);
      const int64_t len = rows * c;
      const A* z = as_opmath(z_all + b0 * c, len, zbuf.data());
      for (int64_t r = 0; r < rows; ++r) {
        const A* zr = z + r * c;
        maxima[r] = row_max(zr, c, y_all[b0 + r]);
        const A mx = maxima[r].max;
        for (int64_t j = 0; j < c; ++j) t[r * c + j] = zr[j] - mx;
      }
      // exp of the whole block in one vectorised sweep
      at::vec::map([](Vec<A> v) { return v.exp(); }, e.data(), t.data(), len);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t y = y_all[b0 + r];
        const A* er = e.data() + r * c;
        const A* tr = t.data() + r * c;
        math::RowSums<A> s{A(0), A(0), A(0)};
        add_range(s, er, tr, y);  // j < y
        add_range(s, er + y + 1, tr + y + 1, c - y - 1);  // j > y
        const auto out = math::row_scores(maxima[r], s, y);
        const int64_t i = b0 + r;
        loss[i] = static_cast<float>(out.loss);
        margin[i] = static_cast<float>(out.margin);
        el2n[i] = static_cast<float>(out.el2n);
        entropy[i] = static_cast<float>(out.entropy);
        confidence[i] = static_cast<float>(out.confidence);
        correct[i] = out.correct;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sample_scores_cpu(const at::Tensor& logits_in, const at::Tensor& labels_in) {
  check_scores_args(logits_in, labels_in);
  TORCH_CHECK_VALUE(logits_in.device().is_cpu(), "advprune.sample_scores: the CPU kernel got logits on ",
                    logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = logits.size(0);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, f32), margin = at::empty({n}, f32), el2n = at::empty({n}, f32),
             entropy = at::empty({n}, f32), confidence = at::empty({n}, f32),
             correct = at::empty({n}, logits.options().dtype(at::kBool));
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_scores", [&] {
      scores_kernel<scalar_t>(logits, labels, loss.data_ptr<float>(), margin.data_ptr<float>(),
                              el2n.data_ptr<float>(), entropy.data_ptr<float>(),
                              confidence.data_ptr<float>(), correct.data_ptr<bool>());
    });
  }
  return {loss, margin, el2n, entropy, confidence, correct};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) { m.impl("sample_scores", &sample_scores_cpu); }

}  // namespace advprune::cpu
