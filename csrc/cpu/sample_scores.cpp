// CPU kernel of advprune::sample_scores: per-row loss, margin, EL2N, entropy,
// confidence and correctness from one read of the logits. With few classes a
// vector holds one row per lane (the header's formulas run on rows in
// parallel); with many, each row is swept with vectors, the row staying in L1.
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

// Rows with at most this many classes are scored a vector of rows at a time.
constexpr int64_t kMaxLaneClasses = 128;
constexpr int64_t kRowGrainElements = 8192;

struct Outputs {
  float* loss;
  float* margin;
  float* el2n;
  float* entropy;
  float* confidence;
  bool* correct;
};

// Few classes: lane r of every vector is row r of a group of Vec::size() rows,
// so the header's formulas run on whole vectors of rows.
template <typename A>
void score_row_group(const A* z, const int64_t* labels, int64_t rows, int64_t c, int64_t first,
                     const Outputs& out) {
  using V = Vec<A>;
  constexpr int64_t W = V::size();
  alignas(64) A col[kMaxLaneClasses][W];
  alignas(64) A yf[W];
  for (int64_t r = 0; r < W; ++r) {
    const int64_t label = r < rows ? labels[r] : -1;
    // a label outside [0, c) (padding, unchecked callers) matches no column and no argmax
    yf[r] = label >= 0 && label < c ? static_cast<A>(label) : static_cast<A>(c);
    for (int64_t j = 0; j < c; ++j) col[j][r] = r < rows ? z[r * c + j] : A(0);
  }
  const V y = V::loadu(yf), minus_inf(-std::numeric_limits<A>::infinity()), none(A(-1));
  V max = V::loadu(col[0]);
  for (int64_t j = 1; j < c; ++j) max = math::maximum(max, V::loadu(col[j]));
  V z_y = minus_inf, other_max = minus_inf, argmax = none;
  for (int64_t j = 0; j < c; ++j) {
    const V zj = V::loadu(col[j]), jv(static_cast<A>(j));
    const V is_y = jv == y;
    z_y = V::blendv(z_y, zj, is_y);
    other_max = math::maximum(other_max, V::blendv(zj, minus_inf, is_y));
    argmax = V::blendv(argmax, jv, (zj == max) & (argmax == none));  // first index of the max
  }
  const V zero(A(0));
  V se = zero, se2 = zero, set = zero;
  for (int64_t j = 0; j < c; ++j) {
    const V t = V::loadu(col[j]) - max;
    const V keep = V(static_cast<A>(j)) != y;
    math::row_sums_add(se, se2, set, math::exponential(t) & keep, t & keep);
  }
  V loss, margin, el2n, entropy, confidence;
  math::scores_from_sums(z_y, max, other_max, se, se2, set, loss, margin, el2n, entropy, confidence);
  alignas(64) A lanes[6][W];
  loss.store(lanes[0]);
  margin.store(lanes[1]);
  el2n.store(lanes[2]);
  entropy.store(lanes[3]);
  confidence.store(lanes[4]);
  (argmax == y).store(lanes[5]);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = first + r;
    out.loss[i] = static_cast<float>(lanes[0][r]);
    out.margin[i] = static_cast<float>(lanes[1][r]);
    out.el2n[i] = static_cast<float>(lanes[2][r]);
    out.entropy[i] = static_cast<float>(lanes[3][r]);
    out.confidence[i] = static_cast<float>(lanes[4][r]);
    out.correct[i] = lanes[5][r] != A(0);  // an all-ones lane is a NaN pattern, not 0
  }
}

// Index of the first element equal to value (c if none: a NaN row).
template <typename A>
int64_t first_index_of(const A* z, int64_t c, A value) {
  constexpr int64_t W = Vec<A>::size();
  const Vec<A> v(value);
  int64_t j = 0;
  for (; j + W <= c; j += W) {
    const int mask = ~(Vec<A>::loadu(z + j) == v).zero_mask() & ((1 << W) - 1);
    if (mask != 0) return j + __builtin_ctz(mask);
  }
  for (; j < c; ++j) {
    if (z[j] == value) return j;
  }
  return c;
}

// sums of e = exp(z - max) and its products over z[0, n), vectorised with masked
// tails; two chains of register accumulators keep the exp latency hidden.
template <typename A>
void add_exp_range(Vec<A>& se, Vec<A>& se2, Vec<A>& set, const A* z, int64_t n, const Vec<A>& max) {
  constexpr int64_t W = Vec<A>::size();
  const Vec<A> zero(A(0));
  Vec<A> a1 = zero, a2 = zero, a3 = zero, b1 = zero, b2 = zero, b3 = zero;
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    const Vec<A> t0 = Vec<A>::loadu(z + j) - max, t1 = Vec<A>::loadu(z + j + W) - max;
    math::row_sums_add(a1, a2, a3, math::exponential(t0), t0);
    math::row_sums_add(b1, b2, b3, math::exponential(t1), t1);
  }
  for (; j < n; j += W) {
    const int64_t count = std::min(W, n - j);
    const Vec<A> t = Vec<A>::loadu(z + j, count) - max;
    Vec<A> e1 = zero, e2 = zero, e3 = zero;
    math::row_sums_add(e1, e2, e3, math::exponential(t), t);
    a1 = add_first(a1, e1, count);  // lanes past the row hold z = 0 and must not count
    a2 = add_first(a2, e2, count);
    a3 = add_first(a3, e3, count);
  }
  se = se + a1 + b1;
  se2 = se2 + a2 + b2;
  set = set + a3 + b3;
}

// Many classes: one row at a time, each pass a vector sweep of the row (in L1).
// A label outside [0, c) (unchecked callers only) scores as no class: z_y = -inf, every logit
// in the sums, as the lane path and the CUDA kernel do, and nothing is read out of the row.
template <typename A>
void score_row(const A* z, int64_t y, int64_t c, int64_t i, const Outputs& out) {
  const bool has_label = y >= 0 && y < c;
  const int64_t before = has_label ? y : c;          // the logits before the label's
  const int64_t after = has_label ? c - y - 1 : 0;   // and after it
  math::RowMax<A> m;
  m.z_y = has_label ? z[y] : -std::numeric_limits<A>::infinity();
  m.other_max = after > 0 ? std::max(range_max(z, before), range_max(z + y + 1, after)) : range_max(z, before);
  m.max = math::maximum(m.other_max, m.z_y);
  m.argmax = first_index_of(z, c, m.max);
  const Vec<A> zero(A(0)), max(m.max);
  Vec<A> se = zero, se2 = zero, set = zero;
  add_exp_range(se, se2, set, z, before, max);
  if (after > 0) add_exp_range(se, se2, set, z + y + 1, after, max);
  const math::RowSums<A> s{lane_sum(se), lane_sum(se2), lane_sum(set)};
  const auto r = math::row_scores(m, s, y);
  out.loss[i] = static_cast<float>(r.loss);
  out.margin[i] = static_cast<float>(r.margin);
  out.el2n[i] = static_cast<float>(r.el2n);
  out.entropy[i] = static_cast<float>(r.entropy);
  out.confidence[i] = static_cast<float>(r.confidence);
  out.correct[i] = r.correct;
}

template <typename scalar_t>
void scores_kernel(const at::Tensor& logits, const at::Tensor& labels, const Outputs& out) {
  using A = at::opmath_type<scalar_t>;
  constexpr int64_t W = Vec<A>::size();
  const int64_t n = logits.size(0), c = logits.size(1);
  const scalar_t* z_all = logits.const_data_ptr<scalar_t>();
  const int64_t* y_all = labels.const_data_ptr<int64_t>();
  const bool lanes = c <= kMaxLaneClasses;
  const int64_t step = lanes ? W : 1;  // rows per unit of work
  const int64_t units = (n + step - 1) / step;
  const int64_t grain = std::max<int64_t>(1, kRowGrainElements / (c * step));
  at::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> buffer(std::is_same_v<scalar_t, A> ? 0 : step * c);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t first = u * step;
      const int64_t rows = std::min(step, n - first);
      const A* z = as_opmath(z_all + first * c, rows * c, buffer.data());
      if (lanes) {
        score_row_group(z, y_all + first, rows, c, first, out);
      } else {
        score_row(z, y_all[first], c, first, out);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sample_scores_cpu(const at::Tensor& logits_in, const at::Tensor& labels_in, bool check_labels) {
  check_scores_args(logits_in, labels_in, check_labels);
  TORCH_CHECK_VALUE(logits_in.device().is_cpu(), "advprune.sample_scores: the CPU kernel got logits on ",
                    text(logits_in.device()));
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const int64_t n = logits.size(0);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({n}, f32), margin = at::empty({n}, f32), el2n = at::empty({n}, f32),
             entropy = at::empty({n}, f32), confidence = at::empty({n}, f32),
             correct = at::empty({n}, logits.options().dtype(at::kBool));
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_scores", [&] {
      const Outputs out{loss.data_ptr<float>(),    margin.data_ptr<float>(),
                        el2n.data_ptr<float>(),    entropy.data_ptr<float>(),
                        confidence.data_ptr<float>(), correct.data_ptr<bool>()};
      scores_kernel<scalar_t>(logits, labels, out);
    });
  }
  return {loss, margin, el2n, entropy, confidence, correct};
}

}  // namespace

TORCH_LIBRARY_IMPL(advprune, CPU, m) { m.impl("sample_scores", &sample_scores_cpu); }

}  // namespace advprune::cpu
