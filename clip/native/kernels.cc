// Float32 CPU kernels for MindSpore's `ops.Custom(func_type="aot")`, built by clip/cpu_kernels.py.
//
// Each function has MindSpore's AOT signature: `params` holds the inputs, then the outputs; `shapes[i]` and
// `ndims[i]` describe params[i]. Every tensor is contiguous float32; sums are taken in float64 (but dgamma's and
// dbeta's within blocks of 32 rows). The kernels are
// single-threaded: MindSpore runs independent kernels side by side, and OpenMP threads fighting its pool made
// steps 2-4x slower in spikes (measured).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kRowsPerBlock = 32;

int64_t LeadingSize(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim - 1; ++i) n *= shape[i];
  return n;
}

float *F(void **params, int i) { return static_cast<float *>(params[i]); }

// sum of term(j) for j < c in float64, in 8 independent lanes so that the loop vectorises (a single running
// sum would wait on each addition); the order is fixed, so the result is too.
template <typename Term>
double Sum(int64_t c, Term term) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += term(j + k);
  }
  double total = 0.0;
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  for (; j < c; ++j) total += term(j);
  return total;
}

}  // namespace

// LayerNorm over the last axis. Inputs x [..., C], gamma [C], beta [C], eps [1];
// outputs y [..., C], mean [...], rstd [...] (1 / sqrt(var + eps)), both kept for the backward.
extern "C" int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                void *) {
  if (nparam != 7) return 1;
  const float *x = F(params, 0), *gamma = F(params, 1), *beta = F(params, 2);
  const float eps = *F(params, 3);
  float *y = F(params, 4), *mean = F(params, 5), *rstd = F(params, 6);
  const int64_t c = shapes[0][ndims[0] - 1], n = LeadingSize(ndims[0], shapes[0]);
  for (int64_t r = 0; r < n; ++r) {
    const float *xr = x + r * c;
    float *yr = y + r * c;
    const float m = static_cast<float>(Sum(c, [&](int64_t j) { return static_cast<double>(xr[j]); }) / c);
    // a second pass for the variance: no cancellation when |mean| >> std
    const double squares = Sum(c, [&](int64_t j) {
      const double d = static_cast<double>(xr[j]) - m;
      return d * d;
    });
    const float rs = static_cast<float>(1.0 / std::sqrt(squares / c + eps));
    for (int64_t j = 0; j < c; ++j) yr[j] = (xr[j] - m) * rs * gamma[j] + beta[j];
    mean[r] = m;
    rstd[r] = rs;
  }
  return 0;
}

// Its gradient. Inputs dy [..., C], x [..., C], mean [...], rstd [...], gamma [C];
// outputs dx [..., C], dgamma [C], dbeta [C]. With g = dy * gamma and x^ = (x - mean) * rstd:
// dx = rstd * (g - mean(g) - x^ * mean(g * x^)), dgamma = sum over rows of dy * x^, dbeta = sum of dy.
extern "C" int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                 void *) {
  if (nparam != 8) return 1;
  const float *dy = F(params, 0), *x = F(params, 1), *mean = F(params, 2), *rstd = F(params, 3);
  const float *gamma = F(params, 4);
  float *dx = F(params, 5), *dgamma = F(params, 6), *dbeta = F(params, 7);
  const int64_t c = shapes[0][ndims[0] - 1], n = LeadingSize(ndims[0], shapes[0]);
  // dgamma and dbeta: float sums over blocks of rows (they vectorise), then the blocks summed in float64
  std::vector<float> block_g(static_cast<size_t>(c)), block_b(static_cast<size_t>(c));
  std::vector<double> dgamma_sum(static_cast<size_t>(c), 0.0), dbeta_sum(static_cast<size_t>(c), 0.0);
  for (int64_t start = 0; start < n; start += kRowsPerBlock) {
    std::fill(block_g.begin(), block_g.end(), 0.0f);
    std::fill(block_b.begin(), block_b.end(), 0.0f);
    for (int64_t r = start; r < std::min(n, start + kRowsPerBlock); ++r) {
      const float *dyr = dy + r * c, *xr = x + r * c;
      float *dxr = dx + r * c;
      const float m = mean[r], rs = rstd[r];
      const double g_sum = Sum(c, [&](int64_t j) { return static_cast<double>(dyr[j] * gamma[j]); });
      const double gx_sum = Sum(c, [&](int64_t j) { return static_cast<double>(dyr[j] * gamma[j] * ((xr[j] - m) * rs)); });
      for (int64_t j = 0; j < c; ++j) {
        block_g[j] += dyr[j] * ((xr[j] - m) * rs);
        block_b[j] += dyr[j];
      }
      const float g_mean = static_cast<float>(g_sum / c), gx_mean = static_cast<float>(gx_sum / c);
      for (int64_t j = 0; j < c; ++j) {
        const float xh = (xr[j] - m) * rs;
        dxr[j] = rs * (dyr[j] * gamma[j] - g_mean - xh * gx_mean);
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      dgamma_sum[j] += block_g[j];
      dbeta_sum[j] += block_b[j];
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    dgamma[j] = static_cast<float>(dgamma_sum[j]);
    dbeta[j] = static_cast<float>(dbeta_sum[j]);
  }
  return 0;
}

namespace {

// exp(x) for x in float32 range, within ~2 ulp, written so that loops calling it vectorise (glibc's expf
// is a call per element): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor series to r^7, times 2^n.
inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 in two parts, the first exact in n * it
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float Sigmoid(float z) { return 1.0f / (1.0f + Exp(-z)); }

constexpr float kQuickGeluAlpha = 1.702f;

int64_t Size(int ndim, const int64_t *shape) { return LeadingSize(ndim, shape) * shape[ndim - 1]; }

}  // namespace

// QuickGELU, y = x * sigmoid(1.702 x). Input x; output y, the same shape.
extern "C" int QuickGeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                void *) {
  if (nparam != 2) return 1;
  const float *x = F(params, 0);
  float *y = F(params, 1);
  const int64_t n = Size(ndims[0], shapes[0]);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * Sigmoid(kQuickGeluAlpha * x[i]);
  return 0;
}

// Its gradient. Inputs dy, x; output dx = dy * (s + 1.702 x s (1 - s)) with s = sigmoid(1.702 x).
extern "C" int QuickGeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *,
                                 void *) {
  if (nparam != 3) return 1;
  const float *dy = F(params, 0), *x = F(params, 1);
  float *dx = F(params, 2);
  const int64_t n = Size(ndims[0], shapes[0]);
  for (int64_t i = 0; i < n; ++i) {
    const float s = Sigmoid(kQuickGeluAlpha * x[i]);
    dx[i] = dy[i] * (s + kQuickGeluAlpha * x[i] * s * (1.0f - s));
  }
  return 0;
}
