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

namespace py = pybind11;

namespace {

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

const float* vector_of(const py::buffer_info& info, ssize_t n, const char* name) {
  if (info.ndim != 1 || info.shape[0] != n ||
      (n > 1 && info.strides[0] != static_cast<ssize_t>(sizeof(float)))) {
    throw std::invalid_argument(std::string(name) + " must be a contiguous vector of length " +
                                std::to_string(n));
  }
  return static_cast<const float*>(info.ptr);
}

// exp(x) for x <= 0, vectorisable (std::exp is a scalar call): x log2(e) = k + r with k an
// integer and |r| <= 1/2; e^(r ln 2) by its Taylor series to the 6th power (truncation
// error about 1e-7), 2^k put in the exponent bits. x is clamped at -87, near where expf
// underflows: a softmax sum that holds exp(0) = 1 does not see the difference.
inline float exp_nonpositive(float x) {
  const float t = std::max(x, -87.0f) * 1.44269504f;  // log2(e)
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

void require_c_contiguous(const py::buffer_info& info, const char* name) {
  ssize_t expected = info.itemsize;
  for (ssize_t i = info.ndim - 1; i >= 0; --i) {
    if (info.shape[i] > 1 && info.strides[i] != expected) {
      throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    }
    expected *= info.shape[i];
  }
}

void accumulate(py::array_t<float, 0> acc, py::array_t<float, 0> wsum,
                py::array_t<float, 0> logits, py::array_t<float, 0> wy,
                py::array_t<float, 0> wx, ssize_t y0, ssize_t x0, int threads) {
  py::buffer_info a = acc.request(true), s = wsum.request(true);
  py::buffer_info l = logits.request(), by = wy.request(), bx = wx.request();
  require_c_contiguous(a, "acc");
  require_c_contiguous(s, "wsum");
  View<float> L = view<float>(l, 3, "logits");
  const ssize_t C = a.shape[0], H = a.shape[1], Wd = a.shape[2];
  if (a.ndim != 3 || s.ndim != 2 || s.shape[0] != H || s.shape[1] != Wd) {
    throw std::invalid_argument("acc must be (C, H, W) and wsum (H, W)");
  }
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
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(team)
    {
      std::vector<float> wrow_buf(wd);
      float* wrow = wrow_buf.data();
#pragma omp for schedule(static)
      for (ssize_t y = 0; y < h; ++y) {
        const float wyy = WY[y];
        float* srow = S + (y0 + y) * Wd + x0;
#pragma omp simd
        for (ssize_t x = 0; x < wd; ++x) {
          wrow[x] = wyy * WX[x];
          srow[x] += wrow[x];
        }
        for (ssize_t c = 0; c < C; ++c) {
          const float* lrow = L.data + c * L.stride[0] + y * L.stride[1];
          float* arow = A + (c * H + y0 + y) * Wd + x0;
          if (L.stride[2] == 1) {
#pragma omp simd
            for (ssize_t x = 0; x < wd; ++x) arow[x] += lrow[x] * wrow[x];
          } else {
            for (ssize_t x = 0; x < wd; ++x) arow[x] += lrow[x * L.stride[2]] * wrow[x];
          }
        }
      }
    }
  }
}

py::object argmax_labels(py::array_t<float, 0> acc, py::array_t<float, 0> wsum, ssize_t rows,
                         py::object valid, int nodata, bool confidence, int threads) {
  // The accumulator's own buffers: C-contiguous, so every loop runs over contiguous rows.
  py::buffer_info a = acc.request(), s = wsum.request();
  require_c_contiguous(a, "acc");
  require_c_contiguous(s, "wsum");
  if (a.ndim != 3 || s.ndim != 2) throw std::invalid_argument("acc must be (C, H, W), wsum (H, W)");
  const ssize_t C = a.shape[0], H = a.shape[1], Wd = a.shape[2];
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
    require_c_contiguous(v, "valid");
    if (v.ndim != 2 || v.shape[0] < rows || v.shape[1] != Wd) {
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
  {
    py::gil_scoped_release release;
#pragma omp parallel num_threads(team)
    {
      std::vector<float> buf(4 * Wd);  // per thread: running max, and for confidence 1/wsum,
      float* best = buf.data();        // the blended max and the softmax denominator
      float* inv = best + Wd;
      float* top = inv + Wd;
      float* z = top + Wd;
#pragma omp for schedule(static)
      for (ssize_t y = 0; y < rows; ++y) {
        const ssize_t off = y * Wd;
        uint8_t* arg = out + off;  // the argmax is built in place, then masked
        std::copy(A + off, A + off + Wd, best);
        std::fill(arg, arg + Wd, uint8_t(0));
        for (ssize_t c = 1; c < C; ++c) {
          const float* ac = A + c * plane + off;
          const uint8_t cc = static_cast<uint8_t>(c);
#pragma omp simd
          for (ssize_t x = 0; x < Wd; ++x) {
            const bool gt = ac[x] > best[x];
            best[x] = gt ? ac[x] : best[x];
            arg[x] = gt ? cc : arg[x];
          }
        }
        const float* srow = S + off;
        const uint8_t* vrow = V ? V + off : nullptr;
        if (vrow) {
#pragma omp simd
          for (ssize_t x = 0; x < Wd; ++x) arg[x] = (srow[x] > 0.0f && vrow[x]) ? arg[x] : fill;
        } else {
#pragma omp simd
          for (ssize_t x = 0; x < Wd; ++x) arg[x] = srow[x] > 0.0f ? arg[x] : fill;
        }
        if (!cout) continue;
        // max softmax probability of the blended logits acc / wsum: 1 / sum_c exp(l_c - l_max)
        uint8_t* crow = cout + off;
#pragma omp simd
        for (ssize_t x = 0; x < Wd; ++x) {
          inv[x] = srow[x] > 0.0f ? 1.0f / srow[x] : 0.0f;
          top[x] = best[x] * inv[x];
          z[x] = 0.0f;
        }
        for (ssize_t c = 0; c < C; ++c) {
          const float* ac = A + c * plane + off;
#pragma omp simd
          for (ssize_t x = 0; x < Wd; ++x) z[x] += exp_nonpositive(ac[x] * inv[x] - top[x]);
        }
#pragma omp simd
        for (ssize_t x = 0; x < Wd; ++x) {
          const bool ok = srow[x] > 0.0f && (!vrow || vrow[x]);
          crow[x] = ok ? static_cast<uint8_t>(255.0f / z[x] + 0.5f) : uint8_t(0);
        }
      }
    }
  }
  if (confidence) return py::make_tuple(labels, conf);
  return labels;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "segbench's tiler hot loops (weighted accumulation, argmax to uint8 labels)";
  m.def("accumulate", &accumulate, py::arg("acc"), py::arg("wsum"), py::arg("logits"),
        py::arg("wy"), py::arg("wx"), py::arg("y0"), py::arg("x0"), py::arg("threads") = 0,
        "acc[:, y0:y0+h, x0:x0+w] += logits * outer(wy, wx); wsum[y0:y0+h, x0:x0+w] += "
        "outer(wy, wx). threads: OpenMP threads, 0 for OpenMP's default.");
  m.def("argmax_labels", &argmax_labels, py::arg("acc"), py::arg("wsum"), py::arg("rows"),
        py::arg("valid") = py::none(), py::arg("nodata") = 255, py::arg("confidence") = false,
        py::arg("threads") = 0,
        "uint8 argmax over classes of the first `rows` rows; nodata where wsum <= 0 or invalid. "
        "With confidence=True also returns round(255 * max softmax probability).");
}
