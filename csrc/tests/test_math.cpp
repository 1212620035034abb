// Unit tests of the shared math header (advprune/math.h) on scalars, against
// direct double-precision formulas on random inputs.
#include <advprune/math.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "check.h"

namespace m = advprune::math;

namespace {

std::mt19937 rng(1234);

std::vector<float> random_vector(int n, float scale) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

void test_primitives() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(m::sign_or_zero(nan) == 0.f);
  CHECK(m::sign_or_zero(-2.5f) == -1.f && m::sign_or_zero(0.1f) == 1.f && m::sign_or_zero(0.f) == 0.f);
  CHECK(m::zero_if_nan(nan) == 0.f && m::zero_if_nan(-3.f) == -3.f);
  CHECK(std::isnan(m::maximum(nan, 1.f)) && std::isnan(m::maximum(1.f, nan)));
  CHECK(m::minimum(2.f, -1.f) == -1.f && m::maximum(2.f, -1.f) == 2.f);
  CHECK(m::clamp(5.f, 0.f, 1.f) == 1.f && m::clamp(-5.f, 0.f, 1.f) == 0.f);
}

void test_linf() {
  // a step past the ball is pulled back to its edge, then into the clip range
  CHECK_NEAR(m::pgd_step_linf(0.5f, 3.f, 0.5f, 0.1f, 0.03f, 0.f, 1.f), 0.53f, 1e-6);
  CHECK_NEAR(m::pgd_step_linf(0.5f, -3.f, 0.5f, 0.01f, 0.03f, 0.f, 1.f), 0.49f, 1e-6);
  CHECK(m::pgd_step_linf(0.99f, 1.f, 0.99f, 0.05f, 0.1f, 0.f, 1.f) == 1.f);
  CHECK(m::pgd_step_linf(0.4f, std::numeric_limits<float>::quiet_NaN(), 0.4f, 0.1f, 0.2f, 0.f, 1.f) == 0.4f);
  CHECK_NEAR(m::project_linf(0.9f, 0.5f, 0.1f, 0.f, 1.f), 0.6f, 1e-6);
}

void test_l2() {
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 300);
    auto x = random_vector(n, 0.5f), g = random_vector(n, 1.f), xn = random_vector(n, 0.5f);
    const float step = 0.2f, eps = 0.1f + 0.01f * (trial % 40);
    float gg = 0, dd = 0, dg = 0;
    for (int i = 0; i < n; ++i) m::l2_accumulate(gg, dd, dg, x[i], g[i], xn[i]);
    const auto k = m::l2_coefficients(m::L2Sums<float>{gg, dd, dg}, step, eps);
    // the same step in double, as the op's documentation states it
    double gn = 0;
    for (int i = 0; i < n; ++i) gn += double(g[i]) * g[i];
    gn = std::max(std::sqrt(gn), 1e-12);
    std::vector<double> d(n);
    double dn = 0;
    for (int i = 0; i < n; ++i) {
      d[i] = double(x[i]) + step * g[i] / gn - xn[i];
      dn += d[i] * d[i];
    }
    dn = std::sqrt(dn);
    const double scale = dn > eps ? eps / dn : 1.0;
    for (int i = 0; i < n; ++i) {
      const double want = std::min(std::max(double(xn[i]) + d[i] * scale, -1e30), 1e30);
      const float got = m::l2_apply(x[i], g[i], xn[i], k.grad_scale, k.delta_scale, -1e30f, 1e30f);
      CHECK(std::fabs(got - want) <= 2e-6 * (1 + std::fabs(want)));
    }
  }
}

void test_row_scores() {
  for (int trial = 0; trial < 200; ++trial) {
    const int c = 2 + static_cast<int>(rng() % 200);
    const int y = static_cast<int>(rng() % c);
    auto z = random_vector(c, 3.f);
    if (trial % 4 == 0) z[y] += 30.f;  // confidently right: tiny loss
    // split in two halves and merge, as the CUDA warps do
    const int half = c / 2;
    m::RowMax<float> a = m::row_max_init<float>(), b = m::row_max_init<float>();
    for (int j = 0; j < half; ++j) m::row_max_update(a, z[j], j, y);
    for (int j = half; j < c; ++j) m::row_max_update(b, z[j], j, y);
    const m::RowMax<float> mx = m::row_max_merge(b, a);
    m::RowSums<float> s1{0, 0, 0}, s2{0, 0, 0};
    for (int j = 0; j < c; ++j) {
      if (j == y) continue;
      m::row_sums_update(j < half ? s1 : s2, z[j], mx.max);
    }
    const auto r = m::row_scores(mx, m::row_sums_merge(s1, s2), y);
    double zmax = -1e300, other = -1e300;
    int argmax = 0;
    for (int j = 0; j < c; ++j) {
      if (z[j] > zmax) zmax = z[j], argmax = j;
      if (j != y) other = std::max(other, double(z[j]));
    }
    // references that stay exact for confident rows: the loss is
    // log1p(sum over j != y of exp(z_j - z_y)), and 1 - p_y is the sum of the other p_j
    double sum = 0, sum_pz = 0, rest_y = 0;
    for (int j = 0; j < c; ++j) sum += std::exp(double(z[j]) - zmax);
    for (int j = 0; j < c; ++j) rest_y += j == y ? 0.0 : std::exp(double(z[j]) - z[y]);
    const double lse = zmax + std::log(sum);
    const double loss = std::log1p(rest_y);  // lse - z_y, exactly
    double el2n = 0, entropy = 0, one_minus_py = 0;
    for (int j = 0; j < c; ++j) {
      const double p = std::exp(double(z[j]) - lse);
      if (j != y) el2n += p * p, one_minus_py += p;
      entropy += p * (loss + (double(z[y]) - z[j]));  // p_j * (lse - z_j)
      sum_pz += p;
    }
    el2n += one_minus_py * one_minus_py;
    CHECK_NEAR(r.loss, loss, 2e-5);
    CHECK_NEAR(r.margin, double(z[y]) - other, 1e-6);
    CHECK_NEAR(r.el2n, std::sqrt(el2n), 2e-5);
    CHECK_NEAR(r.entropy, entropy, 5e-5);
    CHECK_NEAR(r.confidence, std::exp(double(z[y]) - lse), 1e-5);
    CHECK(r.correct == (argmax == y));
    CHECK_NEAR(sum_pz, 1.0, 1e-9);
  }
}

void test_kl() {
  for (int trial = 0; trial < 100; ++trial) {
    const int c = 2 + static_cast<int>(rng() % 100);
    auto p = random_vector(c, 2.f), q = random_vector(c, 2.f);
    float mp = -INFINITY, mq = -INFINITY;
    for (int j = 0; j < c; ++j) mp = std::max(mp, p[j]), mq = std::max(mq, q[j]);
    m::KlSums<double> s{0, 0, 0};
    for (int j = 0; j < c; ++j) m::kl_update<double>(s, p[j], q[j], mp, mq);
    const double kl = m::kl_value<double>(s, mp, mq);
    auto lse = [&](const std::vector<float>& v) {
      double mx = -1e300, t = 0;
      for (float x : v) mx = std::max(mx, double(x));
      for (float x : v) t += std::exp(x - mx);
      return mx + std::log(t);
    };
    const double lp = lse(p), lq = lse(q);
    double want = 0;
    for (int j = 0; j < c; ++j) want += std::exp(p[j] - lp) * ((p[j] - lp) - (q[j] - lq));
    CHECK_NEAR(kl, want, 1e-10);
    // gradients against central differences of the closed form
    const double gap = m::kl_lse_gap<double>(s, mp, mq);
    const int k = static_cast<int>(rng() % c);
    double dp, dq;
    m::kl_grad<double>(1.0, p[k], q[k], mp, mq, s.sp, s.sq, gap, kl, dp, dq);
    auto kl_at = [&](double pk, double qk) {
      std::vector<float> pp = p, qq = q;
      double mx = -1e300, t = 0, mxq = -1e300, tq = 0, acc = 0;
      std::vector<double> P(c), Q(c);
      for (int j = 0; j < c; ++j) P[j] = j == k ? pk : pp[j], Q[j] = j == k ? qk : qq[j];
      for (int j = 0; j < c; ++j) mx = std::max(mx, P[j]), mxq = std::max(mxq, Q[j]);
      for (int j = 0; j < c; ++j) t += std::exp(P[j] - mx), tq += std::exp(Q[j] - mxq);
      for (int j = 0; j < c; ++j) {
        const double lpj = P[j] - mx - std::log(t), lqj = Q[j] - mxq - std::log(tq);
        acc += std::exp(lpj) * (lpj - lqj);
      }
      return acc;
    };
    const double h = 1e-5;
    CHECK_NEAR(dp, (kl_at(p[k] + h, q[k]) - kl_at(p[k] - h, q[k])) / (2 * h), 1e-4);
    CHECK_NEAR(dq, (kl_at(p[k], q[k] + h) - kl_at(p[k], q[k] - h)) / (2 * h), 1e-4);
  }
}

}  // namespace

int main() {
  test_primitives();
  test_linf();
  test_l2();
  test_row_scores();
  test_kl();
  if (advprune::testing::failures() == 0) std::printf("test_math: all checks passed\n");
  return advprune::testing::failures() == 0 ? 0 : 1;
}
