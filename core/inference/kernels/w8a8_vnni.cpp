// Int8 weights times int8 activations with AVX512-VNNI: the torch op finetune_lab::w8a8_mm.
//
// Built with decode_attention.cpp into one library by core.inference.own_kernels (g++ against
// torch's headers, kept in the model cache).
// y[m, n] = scales[n] * sum_b sx[m, b] * sum_{k in block b} qweight[n, k] * xq[m, k]: each row
// of the activations is quantized to int8 per block of 32 values with one float scale, as
// llama.cpp's q8_0 does, but not 32 neighbours: the row goes in chunks of 64 bytes, 16 lanes of
// 4, and a block is one lane's 4 values in each of 8 chunks. A lane's integer sums then run over
// the 8 chunks before one conversion and one scaling, where contiguous blocks need both every
// chunk, for every row: Compare's two rows cost 0.24 ms less a step (4.7-4.8 against 4.9-5.1 ms
// of products, the Xeon), a prompt's pass 9% less. The weight is the app's int8 weight with one
// scale per output row. vpdpbusd multiplies unsigned by signed bytes: the weight goes in as w + 128 (its
// bytes with the top bit flipped, one instruction shared by every row), and each 32-bit lane's
// sum starts from -128 * (the sum of its 4 values of xq), so it ends as the exact integer
// sum(w * xq). (Taking the offset off after the float sum instead lost the answer to rounding
// where a block held a large activation.)
// Each row's result is computed the same way whatever the number of rows, so a row's answer
// does not depend on the batch it is in.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kWidthStep = 32;  // the rows' width is a multiple of it (own_kernels.BLOCK)
constexpr int64_t kChunk = 64;      // bytes per AVX512 load: 16 lanes of 4 values
constexpr int64_t kGroupChunks = 8; // chunks whose lanes share one scale each (a block of 32 values)
constexpr int64_t kTileRows = 4;    // weight rows per tile (the unit the threads share out)
constexpr int64_t kGroupRows = 4;   // activation rows multiplied together
constexpr int64_t kSerialBytes = 1 << 17;  // smaller weights: one thread (waking the other costs more)

// One activation row, ready for vpdpbusd: its int8 values, and per group of 8 chunks each 32-bit
// lane's scale and start. A block is the lane's 4 values in each of the group's chunks (32 values
// 64 apart in the row, fewer in a last group that is short), so a lane's sums stay integer over
// the whole group and are scaled once per group, not once per chunk.
struct QuantizedRow {
  std::vector<int8_t> values;       // xq, padded with zeros to whole chunks
  std::vector<float> lane_scale;    // per group 16 lanes
  std::vector<int32_t> lane_start;  // per group 16 lanes: -128 * the sum of the lane's values
};

// 16 bf16 values as floats (a bf16 is the top half of a float's bits), those at or past `valid` as 0.
__attribute__((target("avx512f,avx512bw,avx512vl")))
inline __m512 load_bf16_masked(const at::BFloat16* x, int64_t valid) {
  __mmask16 mask = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max<int64_t>(valid, 0)) - 1);
  __m256i bits = _mm256_maskz_loadu_epi16(mask, x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// x * inverse rounded to the nearest integer (ties to even, as torch.round), as int8 bytes.
__attribute__((target("avx512f,avx512bw")))
inline __m128i to_int8(__m512 x, __m512 inverse) {
  return _mm512_cvtsepi32_epi8(_mm512_cvt_roundps_epi32(_mm512_mul_ps(x, inverse), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl")))
QuantizedRow quantize_row(const at::BFloat16* x, int64_t K) {
  int64_t chunks = (K + kChunk - 1) / kChunk, groups = (chunks + kGroupChunks - 1) / kGroupChunks;
  QuantizedRow q{std::vector<int8_t>(chunks * kChunk, 0), std::vector<float>(groups * 16, 0.f),
                 std::vector<int32_t>(groups * 16, 0)};
  for (int64_t g = 0; g < groups; ++g) {
    int64_t c0 = g * kGroupChunks, c1 = std::min(chunks, c0 + kGroupChunks);
    __m512 largest[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = c0; c < c1; ++c)
      for (int quarter = 0; quarter < 4; ++quarter) {
        int64_t k = c * kChunk + quarter * 16;
        largest[quarter] = _mm512_max_ps(largest[quarter], _mm512_abs_ps(load_bf16_masked(x + k, K - k)));
      }
    alignas(64) float each[64], inverse[64];  // value v of a chunk is in lane v / 4
    for (int quarter = 0; quarter < 4; ++quarter) _mm512_store_ps(each + quarter * 16, largest[quarter]);
    for (int lane = 0; lane < 16; ++lane) {
      float amax = std::max(std::max(each[4 * lane], each[4 * lane + 1]), std::max(each[4 * lane + 2], each[4 * lane + 3]));
      q.lane_scale[g * 16 + lane] = amax / 127.f;
      for (int i = 0; i < 4; ++i) inverse[4 * lane + i] = amax > 0.f ? 127.f / amax : 0.f;
    }
    __m512i sums = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; ++c) {
      for (int quarter = 0; quarter < 4; ++quarter) {
        int64_t k = c * kChunk + quarter * 16;
        __m128i bytes = to_int8(load_bf16_masked(x + k, K - k), _mm512_load_ps(inverse + quarter * 16));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q.values.data() + k), bytes);
      }
      // each lane's 4 values summed by vpdpbusd with ones
      sums = _mm512_dpbusd_epi32(sums, _mm512_set1_epi8(1), _mm512_loadu_si512(q.values.data() + c * kChunk));
    }
    _mm512_storeu_si512(q.lane_start.data() + g * 16, _mm512_mullo_epi32(sums, _mm512_set1_epi32(-128)));
  }
  return q;
}

// The group's rows times weight rows [n0, n1), into out[r * N + n], kTile weight rows at a time.
template <int kRows, int kTile>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void tile_products(const QuantizedRow* rows, const int8_t* weight, const at::BFloat16* scales,
                   at::BFloat16* out, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  int64_t chunks = (K + kChunk - 1) / kChunk;
  __mmask64 last = K % kChunk ? (__mmask64(1) << (K % kChunk)) - 1 : ~__mmask64(0);
  const __m512i top_bit = _mm512_set1_epi8(char(0x80));
  for (int64_t n = n0; n < n1; n += kTile) {
    int64_t tile = std::min<int64_t>(kTile, n1 - n);
    __m512 acc[kTile][kRows];
    for (int j = 0; j < kTile; ++j)
      for (int r = 0; r < kRows; ++r) acc[j][r] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < chunks; c0 += kGroupChunks) {
      int64_t g = c0 / kGroupChunks, c1 = std::min(chunks, c0 + kGroupChunks);
      __m512i dot[kTile][kRows];
      for (int r = 0; r < kRows; ++r) {
        __m512i start = _mm512_loadu_si512(rows[r].lane_start.data() + g * 16);
        for (int j = 0; j < kTile; ++j) dot[j][r] = start;
      }
      for (int64_t c = c0; c < c1; ++c) {
        __mmask64 valid = c == chunks - 1 ? last : ~__mmask64(0);
        __m512i x[kRows];
        for (int r = 0; r < kRows; ++r) x[r] = _mm512_loadu_si512(rows[r].values.data() + c * kChunk);
        for (int j = 0; j < kTile; ++j) {
          const int8_t* w = weight + (n + std::min<int64_t>(j, tile - 1)) * K + c * kChunk;
          // Ask for the next tile's bytes now: the weights come from L3 or memory, each step reads
          // every weight once, and without this the products ran at 0.71 of torch's time, not 0.5.
          if (n + kTile + j < n1) _mm_prefetch(reinterpret_cast<const char*>(w + kTile * K), _MM_HINT_T0);
          // bytes past K stay 0 here, so w + 128 meets xq's zero padding
          __m512i w_plus_128 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(valid, w), top_bit);
          for (int r = 0; r < kRows; ++r) dot[j][r] = _mm512_dpbusd_epi32(dot[j][r], w_plus_128, x[r]);
        }
      }
      for (int r = 0; r < kRows; ++r) {
        __m512 sx = _mm512_loadu_ps(rows[r].lane_scale.data() + g * 16);
        for (int j = 0; j < kTile; ++j) acc[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j][r]), sx, acc[j][r]);
      }
    }
    for (int j = 0; j < tile; ++j)
      for (int r = 0; r < kRows; ++r)
        out[r * N + n + j] = at::BFloat16(_mm512_reduce_add_ps(acc[j][r]) * float(scales[n + j]));
  }
}

// Every row times the weight. Each thread takes a run of weight tiles and multiplies it by
// every group of rows in turn, so the run (at most 16 tiles of 4 rows: 37-98 KB here) is read
// from memory once and from cache for the other groups, where group by group over the whole
// weight read it once per group. A prompt's pass is bound by arithmetic all the same: Compare's
// two prompts of 37 tokens took 119 ms instead of 128 (SmolLM2, 2 cores).
void all_products(const std::vector<QuantizedRow>& rows, const int8_t* weight, const at::BFloat16* scales,
                  at::BFloat16* out, int64_t N, int64_t K) {
  int64_t tiles = (N + kTileRows - 1) / kTileRows, M = rows.size();
  at::parallel_for(0, tiles, N * K < kSerialBytes ? tiles : 16, [&](int64_t t0, int64_t t1) {
    int64_t n0 = t0 * kTileRows, n1 = std::min(N, t1 * kTileRows);
    for (int64_t m0 = 0; m0 < M; m0 += kGroupRows) {
      const QuantizedRow* group = rows.data() + m0;
      at::BFloat16* group_out = out + m0 * N;
      switch (std::min(kGroupRows, M - m0)) {
        case 1: tile_products<1, 4>(group, weight, scales, group_out, N, K, n0, n1); break;
        case 2: tile_products<2, 4>(group, weight, scales, group_out, N, K, n0, n1); break;
        case 3: tile_products<3, 2>(group, weight, scales, group_out, N, K, n0, n1); break;
        default: tile_products<4, 2>(group, weight, scales, group_out, N, K, n0, n1); break;
      }
    }
  });
}

at::Tensor w8a8_mm(const at::Tensor& rows, const at::Tensor& qweight, const at::Tensor& scales) {
  TORCH_CHECK(rows.dim() == 2 && qweight.dim() == 2 && rows.size(1) == qweight.size(1), "w8a8_mm: rows (M, K) and weight (N, K)");
  TORCH_CHECK(rows.scalar_type() == at::kBFloat16 && scales.scalar_type() == at::kBFloat16, "w8a8_mm: bf16 rows and scales");
  TORCH_CHECK(qweight.scalar_type() == at::kChar && rows.size(1) % kWidthStep == 0, "w8a8_mm: an int8 weight, K a multiple of 32");
  auto x = rows.contiguous();
  auto w = qweight.contiguous();
  auto s = scales.contiguous();
  int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto out = at::empty({M, N}, x.options());
  std::vector<QuantizedRow> quantized;
  for (int64_t m = 0; m < M; ++m) quantized.push_back(quantize_row(x.data_ptr<at::BFloat16>() + m * K, K));
  all_products(quantized, w.data_ptr<int8_t>(), s.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), N, K);
  return out;
}

at::Tensor w8a8_mm_meta(const at::Tensor& rows, const at::Tensor& qweight, const at::Tensor& scales) {
  return at::empty({rows.size(0), qweight.size(0)}, rows.options());
}

}  // namespace

TORCH_LIBRARY(finetune_lab, m) {
  m.def("w8a8_mm(Tensor rows, Tensor qweight, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(finetune_lab, CPU, m) { m.impl("w8a8_mm", &w8a8_mm); }
TORCH_LIBRARY_IMPL(finetune_lab, Meta, m) { m.impl("w8a8_mm", &w8a8_mm_meta); }
