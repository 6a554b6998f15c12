// One decoding step's attention over a static KV cache, reading only the slots in use: the
// torch op finetune_lab::one_query_attention.
//
// Built into each of core.inference.own_kernels' libraries: with w8a8_vnni.cpp on AVX-512, and
// with w8a8_avx2.cpp and FINETUNE_LAB_AVX2 defined, 8 floats a register. A static cache has a
// fixed number of slots (512 in the compiled step) and a mask that hides the empty ones, and
// torch's attention kernel reads all of them every step. This op finds each batch row's last
// slot the mask lets through and stops there: the slots after it add exactly nothing to the
// softmax. query (B, H, G, D): the G query heads that share key/value head h, packed as
// core.inference.decode_attention packs them; key, value (B, H, S, D); mask (B, 1, 1, S), bool
// (true: attend) or added to the scores, or none. Scores, softmax and sums are fp32.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

#ifdef FINETUNE_LAB_AVX2
#define VECTOR_ISA "avx2,fma"
using Floats = __m256;
constexpr int64_t kFloats = 8;

__attribute__((target(VECTOR_ISA)))
inline Floats load_floats(const at::BFloat16* x) {
  __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
__attribute__((target(VECTOR_ISA))) inline Floats zeros() { return _mm256_setzero_ps(); }
__attribute__((target(VECTOR_ISA))) inline Floats broadcast(float x) { return _mm256_set1_ps(x); }
__attribute__((target(VECTOR_ISA))) inline Floats fmadd(Floats a, Floats b, Floats c) { return _mm256_fmadd_ps(a, b, c); }
__attribute__((target(VECTOR_ISA))) inline Floats load(const float* x) { return _mm256_loadu_ps(x); }
__attribute__((target(VECTOR_ISA))) inline void store(float* x, Floats v) { _mm256_storeu_ps(x, v); }
__attribute__((target(VECTOR_ISA))) inline float total(Floats v) {
  __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}
#else
#define VECTOR_ISA "avx512f"
using Floats = __m512;
constexpr int64_t kFloats = 16;

__attribute__((target(VECTOR_ISA)))
inline Floats load_floats(const at::BFloat16* x) {
  __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
__attribute__((target(VECTOR_ISA))) inline Floats zeros() { return _mm512_setzero_ps(); }
__attribute__((target(VECTOR_ISA))) inline Floats broadcast(float x) { return _mm512_set1_ps(x); }
__attribute__((target(VECTOR_ISA))) inline Floats fmadd(Floats a, Floats b, Floats c) { return _mm512_fmadd_ps(a, b, c); }
__attribute__((target(VECTOR_ISA))) inline Floats load(const float* x) { return _mm512_loadu_ps(x); }
__attribute__((target(VECTOR_ISA))) inline void store(float* x, Floats v) { _mm512_storeu_ps(x, v); }
__attribute__((target(VECTOR_ISA))) inline float total(Floats v) { return _mm512_reduce_add_ps(v); }
#endif

// How many of row b's leading slots its mask lets through (the slots after the last one add nothing).
int64_t slots_in_use(const bool* allowed, const float* added, int64_t b, int64_t S) {
  int64_t last = S;
  if (allowed != nullptr) while (last > 0 && !allowed[b * S + last - 1]) --last;
  if (added != nullptr) while (last > 0 && std::isinf(added[b * S + last - 1]) && added[b * S + last - 1] < 0) --last;
  return last;
}

// One (batch row, key/value head): its G queries over its first `slots` keys. `allowed` (a bool
// mask) or `added` (a float one) is row b's mask, or null.
__attribute__((target(VECTOR_ISA)))
void head_attention(const at::BFloat16* q, const at::BFloat16* k, const at::BFloat16* v, const bool* allowed,
                    const float* added, at::BFloat16* out, int64_t G, int64_t D, int64_t slots, float scale) {
  std::vector<float> scores(G * slots);
  for (int64_t s = 0; s < slots; ++s) {
    for (int64_t g = 0; g < G; ++g) {
      Floats sum = zeros();
      for (int64_t d = 0; d < D; d += kFloats) sum = fmadd(load_floats(q + g * D + d), load_floats(k + s * D + d), sum);
      float score = total(sum) * scale;
      if (allowed != nullptr && !allowed[s]) score = -std::numeric_limits<float>::infinity();
      if (added != nullptr) score += added[s];
      scores[g * slots + s] = score;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* row = scores.data() + g * slots;
    float top = -std::numeric_limits<float>::infinity(), total = 0.f;
    for (int64_t s = 0; s < slots; ++s) top = std::max(top, row[s]);
    for (int64_t s = 0; s < slots; ++s) total += (row[s] = std::isinf(top) ? 0.f : std::exp(row[s] - top));
    std::vector<float> acc(D, 0.f);
    for (int64_t s = 0; s < slots; ++s) {
      Floats weight = broadcast(row[s]);
      for (int64_t d = 0; d < D; d += kFloats) store(acc.data() + d, fmadd(weight, load_floats(v + s * D + d), load(acc.data() + d)));
    }
    float inverse = total > 0.f ? 1.f / total : 0.f;
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = at::BFloat16(acc[d] * inverse);
  }
}

at::Tensor one_query_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                               const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && key.sizes() == value.sizes(), "one_query_attention: 4-D inputs");
  TORCH_CHECK(query.scalar_type() == at::kBFloat16 && key.scalar_type() == at::kBFloat16 && value.scalar_type() == at::kBFloat16,
              "one_query_attention: bf16 query, key and value");
  int64_t B = query.size(0), H = query.size(1), G = query.size(2), D = query.size(3), S = key.size(2);
  TORCH_CHECK(key.size(0) == B && key.size(1) == H && key.size(3) == D && D % 16 == 0, "one_query_attention: shapes");
  auto q = query.contiguous();
  auto k = key.contiguous();
  auto v = value.contiguous();
  at::Tensor m;  // the mask as bools, or as floats added to the scores: converted once, read per head
  if (mask.has_value()) {
    TORCH_CHECK(mask->numel() == B * S, "one_query_attention: one mask row of S slots per batch row");
    m = mask->scalar_type() == at::kBool ? mask->contiguous() : mask->to(at::kFloat).contiguous();
  }
  const bool* allowed = m.defined() && m.scalar_type() == at::kBool ? m.data_ptr<bool>() : nullptr;
  const float* added = m.defined() && m.scalar_type() == at::kFloat ? m.data_ptr<float>() : nullptr;
  auto out = at::empty_like(q);
  std::vector<int64_t> slots(B);
  for (int64_t b = 0; b < B; ++b) slots[b] = slots_in_use(allowed, added, b, S);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t b = i / H;
      head_attention(q.data_ptr<at::BFloat16>() + i * G * D, k.data_ptr<at::BFloat16>() + i * S * D,
                     v.data_ptr<at::BFloat16>() + i * S * D, allowed ? allowed + b * S : nullptr,
                     added ? added + b * S : nullptr, out.data_ptr<at::BFloat16>() + i * G * D, G, D, slots[b],
                     float(scale));
    }
  });
  return out;
}

at::Tensor one_query_attention_meta(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                    const std::optional<at::Tensor>& mask, double scale) {
  return at::empty_like(query);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(finetune_lab, m) {
  m.def("one_query_attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(finetune_lab, CPU, m) { m.impl("one_query_attention", &one_query_attention); }
TORCH_LIBRARY_IMPL(finetune_lab, Meta, m) { m.impl("one_query_attention", &one_query_attention_meta); }
