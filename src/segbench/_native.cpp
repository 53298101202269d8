// segbench._native: the tiler's hot loops.
//
// accumulate:     acc[:, y0:y0+h, x0:x0+w] += logits * outer(wy, wx);  wsum[...] += outer(wy, wx)
// argmax_labels:  per-pixel argmax over classes of the accumulated logits -> uint8,
//                 nodata where no window contributed or the input was invalid;
//                 optionally the max softmax probability of the blended logits as uint8.
//
// accumulate reads the window's output as a strided numpy view without copying and
// takes the blending weights as their two separable axis vectors. Both release the
// GIL and split rows across `threads` OpenMP threads (0: OpenMP's default); inner
// loops run over contiguous columns and vectorise. The tiler asks for one thread
// when a CPU engine owns every core: a parallel region there only adds OpenMP's
// spin-waiting to the engine's load.
//
// Arithmetic, exactly: the weight of a pixel is wy * wx (rounded), wsum += weight (rounded), and
// acc = fma(logit, weight, acc): one fused multiply-add, rounded once, as torch's addcmul_ does
// on a GPU, so the device tiler's labels equal these bit for bit. The fusion is written
// (std::fma), never left to the compiler: CMakeLists.txt compiles with -ffp-contract=off, so no
// other product and sum is fused either, on any compiler or CPU.
//
// The package is built for a portable baseline (x86-64-v2 on x86); the row kernels are also
// compiled for x86-64-v3 (AVX2 and FMA) and x86-64-v4 (AVX-512), and the dynamic loader picks
// the best the CPU has (GCC's target_clones). Without hardware FMA std::fma is a library call:
// slower, and still exact.
//
// Every input is checked before any element is read: dimensions before shapes, the class count
// (1..255, as labels are uint8 with 255 for nodata), output buffers that must be float32 and
// C-contiguous (never a converted copy, whose results would be lost). A NaN or infinite logit is
// an error (NonFiniteError, an ArithmeticError in Python), not undefined behaviour in a cast.
// No memory is allocated inside a parallel region: the per-thread rows are allocated before it.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(SEGBENCH_NO_CLONES)
#define SEGBENCH_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define SEGBENCH_CLONES
#endif

namespace py = pybind11;

namespace {

//: the most classes a uint8 label raster holds besides its nodata value (255)
constexpr ssize_t MAX_CLASSES = 255;

struct NonFiniteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
struct View {
  // A strided view (in elements) of a numpy array of up to three dimensions.
  const T* data;
  ssize_t shape[3];
  ssize_t stride[3];
};

template <typename T>
View<T> view(const py::buffer_info& info, int ndim, const char* name) {
  if (info.ndim != ndim) {
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                " dimensions");
  }
  View<T> v{static_cast<const T*>(info.ptr), {1, 1, 1}, {0, 0, 0}};
  for (int i = 0; i < ndim; ++i) {
    if (info.strides[i] % static_cast<ssize_t>(sizeof(T)) != 0) {
      throw std::invalid_argument(std::string(name) + " has unaligned strides");
    }
    v.shape[3 - ndim + i] = info.shape[i];
    v.stride[3 - ndim + i] = info.strides[i] / static_cast<ssize_t>(sizeof(T));
  }
  return v;
}

int team_size(int threads) {
#ifdef _OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

const float* vector_of(const py::buffer_info& info, ssize_t n, const char* name) {
  if (info.ndim != 1 || info.shape[0] != n ||
      (n > 1 && info.strides[0] != static_cast<ssize_t>(sizeof(float)))) {
    throw std::invalid_argument(std::string(name) + " must be a contiguous vector of length " +
                                std::to_string(n));
  }
  return static_cast<const float*>(info.ptr);
}

void require_c_contiguous(const py::buffer_info& info, const char* name) {
  ssize_t expected = info.itemsize;
  for (ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] > 1 && info.strides[i] != expected) {
      throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    }
    expected *= info.shape[i];
  }
}

void require_classes(ssize_t classes) {
  if (classes < 1 || classes > MAX_CLASSES) {
    throw std::invalid_argument("the class count must be 1 to " + std::to_string(MAX_CLASSES) +
                                " (uint8 labels, 255 for nodata), not " + std::to_string(classes));
  }
}

// exp(x) for x <= 0, vectorisable (std::exp is a scalar call): x log2(e) = k + r with k an
// integer and |r| <= 1/2; e^(r ln 2) by its Taylor series to the 6th power (truncation
// error about 1e-7), 2^k put in the exponent bits. x is clamped at -87, near where expf
// underflows: a softmax sum that holds exp(0) = 1 does not see the difference. A NaN x is
// clamped too (the comparison is false), so the cast to int below never sees a NaN.
inline float exp_nonpositive(float x) {
  const float t = (x > -87.0f ? x : -87.0f) * 1.44269504f;  // log2(e)
  const float k = std::floor(t + 0.5f);
  const float f = (t - k) * 0.69314718f;  // ln 2: now |f| <= ln(2) / 2 and 2^(t-k) = e^f
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// One row of a window into the accumulator: weights, their sum, and one fused multiply-add per
// class and pixel. Returns false when a logit is NaN or infinite (the row is then incomplete).
SEGBENCH_CLONES
bool accumulate_row(float* __restrict wrow, float* __restrict srow, const float* WX, float wyy,
                    ssize_t wd, const float* L, ssize_t cstride, ssize_t xstride, float* A,
                    ssize_t aplane, ssize_t C) {
#pragma omp simd
  for (ssize_t x = 0; x < wd; ++x) {
    wrow[x] = wyy * WX[x];
    srow[x] += wrow[x];
  }
  // l - l is 0 for a finite logit and NaN for a NaN or infinite one, so the sum of them tells
  // (and vectorises, where a comparison per element would not)
  float probe = 0.0f;
  for (ssize_t c = 0; c < C; ++c) {
    const float* lrow = L + c * cstride;
    float* __restrict arow = A + c * aplane;
    if (xstride == 1) {
#pragma omp simd reduction(+ : probe)
      for (ssize_t x = 0; x < wd; ++x) {
        probe += lrow[x] - lrow[x];
        arow[x] = std::fma(lrow[x], wrow[x], arow[x]);
      }
    } else {
      for (ssize_t x = 0; x < wd; ++x) {
        const float l = lrow[x * xstride];
        probe += l - l;
        arow[x] = std::fma(l, wrow[x], arow[x]);
      }
    }
  }
  return probe == 0.0f;
}

void accumulate(py::array_t<float, 0> acc, py::array_t<float, 0> wsum,
                py::array_t<float, 0> logits, py::array_t<float, 0> wy,
                py::array_t<float, 0> wx, ssize_t y0, ssize_t x0, int threads) {
  py::buffer_info a = acc.request(true), s = wsum.request(true);
  py::buffer_info l = logits.request(), by = wy.request(), bx = wx.request();
  if (a.ndim != 3 || s.ndim != 2) throw std::invalid_argument("acc must be (C, H, W) and wsum (H, W)");
  require_c_contiguous(a, "acc");
  require_c_contiguous(s, "wsum");
  View<float> L = view<float>(l, 3, "logits");
  const ssize_t C = a.shape[0], H = a.shape[1], Wd = a.shape[2];
  require_classes(C);
  if (s.shape[0] != H || s.shape[1] != Wd) throw std::invalid_argument("wsum must be (H, W) of acc");
  const ssize_t h = L.shape[1], wd = L.shape[2];
  if (L.shape[0] != C) throw std::invalid_argument("logits and acc differ in class count");
  const float* WY = vector_of(by, h, "wy");
  const float* WX = vector_of(bx, wd, "wx");
  if (y0 < 0 || x0 < 0 || y0 + h > H || x0 + wd > Wd) {
    throw std::invalid_argument("window falls outside the accumulator");
  }
  float* A = static_cast<float*>(a.ptr);
  float* S = static_cast<float*>(s.ptr);
  const int team = team_size(threads);
  std::vector<float> rows(static_cast<size_t>(team) * static_cast<size_t>(std::max<ssize_t>(wd, 1)));
  bool finite = true;
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(team) reduction(&& : finite)
    {
      float* wrow = rows.data() + static_cast<size_t>(thread_index()) * static_cast<size_t>(wd);
#pragma omp for schedule(static)
      for (ssize_t y = 0; y < h; ++y) {
        const bool ok = accumulate_row(wrow, S + (y0 + y) * Wd + x0, WX, WY[y], wd,
                                       L.data + y * L.stride[1], L.stride[0], L.stride[2],
                                       A + (y0 + y) * Wd + x0, H * Wd, C);
        finite = finite && ok;
      }
    }
  }
  if (!finite) throw NonFiniteError("the window's logits hold NaN or infinite values");
}

// One row of labels (and confidence): the first maximum over classes wins, as numpy's argmax.
SEGBENCH_CLONES
void argmax_row(const float* A, ssize_t plane, ssize_t C, const float* srow, const uint8_t* vrow,
                ssize_t Wd, uint8_t fill, uint8_t* __restrict arg, uint8_t* crow,
                float* __restrict best, float* __restrict inv, float* __restrict top,
                float* __restrict z) {
  std::copy(A, A + Wd, best);
  std::fill(arg, arg + Wd, uint8_t(0));
  for (ssize_t c = 1; c < C; ++c) {
    const float* ac = A + c * plane;
    const uint8_t cc = static_cast<uint8_t>(c);
#pragma omp simd
    for (ssize_t x = 0; x < Wd; ++x) {
      const bool gt = ac[x] > best[x];
      best[x] = gt ? ac[x] : best[x];
      arg[x] = gt ? cc : arg[x];
    }
  }
  if (vrow) {
#pragma omp simd
    for (ssize_t x = 0; x < Wd; ++x) arg[x] = (srow[x] > 0.0f && vrow[x]) ? arg[x] : fill;
  } else {
#pragma omp simd
    for (ssize_t x = 0; x < Wd; ++x) arg[x] = srow[x] > 0.0f ? arg[x] : fill;
  }
  if (!crow) return;
  // max softmax probability of the blended logits acc / wsum: 1 / sum_c exp(l_c - l_max)
#pragma omp simd
  for (ssize_t x = 0; x < Wd; ++x) {
    inv[x] = srow[x] > 0.0f ? 1.0f / srow[x] : 0.0f;
    top[x] = best[x] * inv[x];
    z[x] = 0.0f;
  }
  for (ssize_t c = 0; c < C; ++c) {
    const float* ac = A + c * plane;
#pragma omp simd
    for (ssize_t x = 0; x < Wd; ++x) z[x] += exp_nonpositive(ac[x] * inv[x] - top[x]);
  }
#pragma omp simd
  for (ssize_t x = 0; x < Wd; ++x) {
    const bool ok = srow[x] > 0.0f && (!vrow || vrow[x]);
    const float q = 255.0f / z[x] + 0.5f;  // in [1, 255.5] for finite sums; NaN or inf otherwise
    crow[x] = (ok && q >= 0.0f && q < 256.0f) ? static_cast<uint8_t>(q) : uint8_t(0);
  }
}

py::object argmax_labels(py::array_t<float, 0> acc, py::array_t<float, 0> wsum, ssize_t rows,
                         py::object valid, int nodata, bool confidence, int threads) {
  // The accumulator's own buffers: C-contiguous, so every loop runs over contiguous rows.
  py::buffer_info a = acc.request(), s = wsum.request();
  if (a.ndim != 3 || s.ndim != 2) throw std::invalid_argument("acc must be (C, H, W), wsum (H, W)");
  require_c_contiguous(a, "acc");
  require_c_contiguous(s, "wsum");
  const ssize_t C = a.shape[0], H = a.shape[1], Wd = a.shape[2];
  require_classes(C);
  if (rows < 0 || rows > H || s.shape[0] < rows || s.shape[1] != Wd) {
    throw std::invalid_argument("rows exceed the accumulator, or wsum does not match acc");
  }
  if (nodata < 0 || nodata > 255) throw std::invalid_argument("nodata must be in 0..255");
  const uint8_t* V = nullptr;
  py::array valid_arr;
  if (!valid.is_none()) {
    valid_arr = py::array::ensure(valid);
    if (!valid_arr || valid_arr.itemsize() != 1) {
      throw std::invalid_argument("valid must be a bool or uint8 array");
    }
    py::buffer_info v = valid_arr.request();
    if (v.ndim != 2) throw std::invalid_argument("valid must be (rows, width)");
    require_c_contiguous(v, "valid");
    if (v.shape[0] < rows || v.shape[1] != Wd) {
      throw std::invalid_argument("valid must cover (rows, width)");
    }
    V = static_cast<const uint8_t*>(v.ptr);
  }
  const float* A = static_cast<const float*>(a.ptr);
  const float* S = static_cast<const float*>(s.ptr);
  py::array_t<uint8_t> labels({rows, Wd});
  py::array_t<uint8_t> conf({confidence ? rows : ssize_t(0), Wd});
  uint8_t* out = labels.mutable_data();
  uint8_t* cout = confidence ? conf.mutable_data() : nullptr;
  const uint8_t fill = static_cast<uint8_t>(nodata);
  const ssize_t plane = H * Wd;
  const int team = team_size(threads);
  // per thread: the running max, and for confidence 1/wsum, the blended max, the softmax sum
  const size_t per = 4 * static_cast<size_t>(std::max<ssize_t>(Wd, 1));
  std::vector<float> scratch(static_cast<size_t>(team) * per);
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(team)
    {
      float* best = scratch.data() + static_cast<size_t>(thread_index()) * per;
#pragma omp for schedule(static)
      for (ssize_t y = 0; y < rows; ++y) {
        const ssize_t off = y * Wd;
        argmax_row(A + off, plane, C, S + off, V ? V + off : nullptr, Wd, fill, out + off,
                   cout ? cout + off : nullptr, best, best + Wd, best + 2 * Wd, best + 3 * Wd);
      }
    }
  }
  if (confidence) return py::make_tuple(labels, conf);
  return labels;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "segbench's tiler hot loops (weighted accumulation, argmax to uint8 labels)";
  py::register_exception<NonFiniteError>(m, "NonFiniteError", PyExc_ArithmeticError);
  // acc and wsum are written in place: never converted (a float64 or float16 array is refused)
  m.def("accumulate", &accumulate, py::arg("acc").noconvert(), py::arg("wsum").noconvert(),
        py::arg("logits"), py::arg("wy"), py::arg("wx"), py::arg("y0"), py::arg("x0"),
        py::arg("threads") = 0,
        "acc[:, y0:y0+h, x0:x0+w] += logits * outer(wy, wx) (one fused multiply-add per "
        "element); wsum[y0:y0+h, x0:x0+w] += outer(wy, wx). threads: OpenMP threads, 0 for "
        "OpenMP's default. NonFiniteError (an ArithmeticError) for NaN or infinite logits.");
  m.def("argmax_labels", &argmax_labels, py::arg("acc").noconvert(), py::arg("wsum").noconvert(),
        py::arg("rows"), py::arg("valid") = py::none(), py::arg("nodata") = 255,
        py::arg("confidence") = false, py::arg("threads") = 0,
        "uint8 argmax over classes of the first `rows` rows; nodata where wsum <= 0 or invalid. "
        "With confidence=True also returns round(255 * max softmax probability).");
}
