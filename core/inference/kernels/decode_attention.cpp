// One decoding step's attention over a static KV cache, reading only the slots in use: the
// torch op finetune_lab::one_query_attention.
//
// Built with w8a8_vnni.cpp into one library by core.inference.own_kernels. A static cache has a
// fixed number of slots (512 in the compiled step) and a mask that hides the empty ones, and
// torch's attention kernel reads all of them every step. This op finds each batch row's last
// slot the mask lets through and stops there: the slots after it add exactly nothing to the
// softmax. query (B, H, G, D): the G query heads that share key/value head h, packed as
// core.inference.decode_attention packs them; key, value (B, H, S, D); mask (B, 1, 1, S), bool
// (true: attend) or added to the scores, or none. Scores, softmax and sums are fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

__attribute__((target("avx512f")))
inline __m512 load16(const at::BFloat16* x) {
  __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// How many of row b's leading slots its mask lets through (the slots after the last one add nothing).
int64_t slots_in_use(const bool* allowed, const float* added, int64_t b, int64_t S) {
  int64_t last = S;
  if (allowed != nullptr) while (last > 0 && !allowed[b * S + last - 1]) --last;
  if (added != nullptr) while (last > 0 && std::isinf(added[b * S + last - 1]) && added[b * S + last - 1] < 0) --last;
  return last;
}

// One (batch row, key/value head): its G queries over its first `slots` keys. `allowed` (a bool
// mask) or `added` (a float one) is row b's mask, or null.
__attribute__((target("avx512f")))
void head_attention(const at::BFloat16* q, const at::BFloat16* k, const at::BFloat16* v, const bool* allowed,
                    const float* added, at::BFloat16* out, int64_t G, int64_t D, int64_t slots, float scale) {
  std::vector<float> scores(G * slots);
  for (int64_t s = 0; s < slots; ++s) {
    for (int64_t g = 0; g < G; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) sum = _mm512_fmadd_ps(load16(q + g * D + d), load16(k + s * D + d), sum);
      float score = _mm512_reduce_add_ps(sum) * scale;
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
      __m512 weight = _mm512_set1_ps(row[s]);
      for (int64_t d = 0; d < D; d += 16)
        _mm512_storeu_ps(acc.data() + d, _mm512_fmadd_ps(weight, load16(v + s * D + d), _mm512_loadu_ps(acc.data() + d)));
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
