// The int8 ops finetune_lab::w8a8_mm and w8a8_lora_mm with AVX512-VNNI (what they compute, and
// what the AVX2 build shares with this one: w8a8_ops.h). Built with decode_attention.cpp into one
// library by core.inference.own_kernels (g++ against torch's headers, kept in the model cache).
//
// vpdpbusd sums each byte's products into a register of its own, and the two become one integer
// before any rounding. Each weight stretch is one 64-byte load of 16 outputs' weights for one
// lane of one chunk, and vpdpbusd multiplies it by that lane's 4 activation bytes (high, then
// low), broadcast: 16 outputs' sums in one register, none to add up across a register's lanes
// at the end. Several rows share each load and several tiles each broadcast, so a prompt's pass
// (dozens of rows) is arithmetic, not loads: Compare's two prompts of 37 tokens took 40 ms of
// products, not 74, with the weights as plain rows (SmolLM2, a 2-core Xeon without AMX).
// vpdpbusd multiplies unsigned by signed bytes: hence w + 128, and each block's sums start from
// -128 * (the sum of its high, of its low bytes), so each ends as the exact integer
// sum(w * byte). (Taking the offset off after the float sum instead lost the answer to rounding
// where a block held a large activation.) The 16 lanes are added pairwise in the order the
// kernel before packing used (_mm512_reduce_add_ps), so its answers are the same to the bit.
#include "w8a8_ops.h"

#include <immintrin.h>

#include <cstring>

namespace {

// Each weight stream is asked for into cache this far ahead of its loads, so memory is read
// while the chunk before is multiplied. A step's 211 products (134 MB of int8 weights) ran in
// 3.63 ms against 4.06 with one row, and 3.89 against 4.77 with two (medians of six processes
// taking turns, 2 threads, the EPYC Zen 5); 512 and 2048 bytes ahead did no better. Near a
// tile's end a stream asks on into the tile its column reads next (kCols tiles on), not the
// one beside it, which another column is reading already: a step's 121 products, one row 0.09-0.14
// ms faster, two rows 0.10-0.20 (bench/kernel_pair.py: paired medians of 40 rounds).
constexpr int64_t kPrefetchAhead = 1024;

// 16 bf16 values as floats (a bf16 is the top half of a float's bits), those at or past `valid` as 0.
__attribute__((target("avx512f,avx512bw,avx512vl")))
inline __m512 load_bf16_masked(const at::BFloat16* x, int64_t valid) {
  __mmask16 mask = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max<int64_t>(valid, 0)) - 1);
  __m256i bits = _mm256_maskz_loadu_epi16(mask, x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Values already rounded to integers in [-127, 127], as int8 bytes.
__attribute__((target("avx512f,avx512bw")))
inline __m128i to_int8(__m512 whole) {
  return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(whole));
}

// x in steps of a block's high byte (t = x * 127 / amax, so |t| <= 127): its high byte round(t),
// then its low byte round((t - high) * 254), what high left in steps of 1/254 (|t - high| <= 1/2,
// so |low| <= 127). Both round to nearest, ties to even, as torch.round.
__attribute__((target("avx512f,avx512bw")))
inline void split(__m512 t, __m128i& high, __m128i& low) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m512 whole = _mm512_roundscale_ps(t, kNearest);
  high = to_int8(whole);
  low = to_int8(_mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(t, whole), _mm512_set1_ps(float(kLowSteps))), kNearest));
}

__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl")))
void quantize_row(const at::BFloat16* x, int64_t K, int64_t m, QuantizedRows& q) {
  int8_t* high = q.high.data() + m * q.chunks * kChunk;
  int8_t* low = q.low.data() + m * q.chunks * kChunk;
  for (int64_t g = 0; g < q.groups; ++g) {
    int64_t c0 = g * kGroupChunks, c1 = std::min(q.chunks, c0 + kGroupChunks);
    __m512 largest[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = c0; c < c1; ++c)
      for (int quarter = 0; quarter < 4; ++quarter) {
        int64_t k = c * kChunk + quarter * 16;
        largest[quarter] = _mm512_max_ps(largest[quarter], _mm512_abs_ps(load_bf16_masked(x + k, K - k)));
      }
    alignas(64) float each[64], inverse[64];  // value v of a chunk is in lane v / 4
    for (int quarter = 0; quarter < 4; ++quarter) _mm512_store_ps(each + quarter * 16, largest[quarter]);
    block_scales(each, m, g, q, inverse);
    __m512i high_sums = _mm512_setzero_si512(), low_sums = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; ++c) {
      for (int quarter = 0; quarter < 4; ++quarter) {
        int64_t k = c * kChunk + quarter * 16;
        __m128i h, l;
        split(_mm512_mul_ps(load_bf16_masked(x + k, K - k), _mm512_load_ps(inverse + quarter * 16)), h, l);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(high + k), h);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(low + k), l);
      }
      // each lane's 4 values summed by vpdpbusd with ones
      high_sums = _mm512_dpbusd_epi32(high_sums, _mm512_set1_epi8(1), _mm512_loadu_si512(high + c * kChunk));
      low_sums = _mm512_dpbusd_epi32(low_sums, _mm512_set1_epi8(1), _mm512_loadu_si512(low + c * kChunk));
    }
    __m512i minus_128 = _mm512_set1_epi32(-128);
    _mm512_storeu_si512(q.start_high.data() + q.block(m, g, 0), _mm512_mullo_epi32(high_sums, minus_128));
    _mm512_storeu_si512(q.start_low.data() + q.block(m, g, 0), _mm512_mullo_epi32(low_sums, minus_128));
  }
}

QuantizedRows quantize_rows(const at::BFloat16* x, int64_t M, int64_t K) {
  int64_t chunks = (K + kChunk - 1) / kChunk, groups = (chunks + kGroupChunks - 1) / kGroupChunks;
  QuantizedRows q{chunks, groups, std::vector<int8_t>(M * chunks * kChunk), std::vector<int8_t>(M * chunks * kChunk),
                  {}, std::vector<float>(M * groups * kLanes), std::vector<int32_t>(M * groups * kLanes),
                  std::vector<int32_t>(M * groups * kLanes)};
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_row(x + m * K, K, m, q);
  });
  return q;
}

// 16 floats' bf16 bits (rounded to nearest, ties to even, as at::BFloat16), one per 32-bit lane.
__attribute__((target("avx512f,avx512bw,avx512vl")))
inline __m512i bf16_bits(__m512 values) {
  __m512i bits = _mm512_castps_si512(values);
  __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
}

// 16 floats rounded to bf16 and stored.
__attribute__((target("avx512f,avx512bw,avx512vl")))
inline void store_bf16(at::BFloat16* out, __m512 values) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(bf16_bits(values)));
}

// 16 floats rounded to bf16 and back: what a bf16 tensor would hold.
__attribute__((target("avx512f,avx512bw,avx512vl")))
inline __m512 round_to_bf16(__m512 values) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(values), 16));
}

// Rows [m0, m0 + kRows) times the packed tiles [t, t + kCols), into out[m * N + n].
template <int kRows, int kCols>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vl")))
void tile_products(const QuantizedRows& q, int64_t m0, const uint8_t* packed, const at::BFloat16* scales,
                   at::BFloat16* out, int64_t N, int64_t t) {
  const int64_t chunks = q.chunks;
  alignas(64) float lanes[kRows][kCols][kLanes][kTile];  // per lane, the 16 outputs' sums over its blocks
  const int64_t tile_bytes = kLanes * chunks * kChunk;
  const uint8_t* tile_end[kCols];
  for (int c = 0; c < kCols; ++c) tile_end[c] = packed + (t + c + 1) * tile_bytes;
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const uint8_t* w_lane[kCols];
    for (int c = 0; c < kCols; ++c) w_lane[c] = packed + ((t + c) * kLanes + lane) * chunks * kChunk;
    __m512 acc[kRows][kCols];
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t g = 0; g < q.groups; ++g) {
      int64_t c0 = g * kGroupChunks, c1 = std::min(chunks, c0 + kGroupChunks);
      __m512i high[kRows][kCols], low[kRows][kCols];
      for (int r = 0; r < kRows; ++r)
        for (int c = 0; c < kCols; ++c) {
          high[r][c] = _mm512_set1_epi32(q.start_high[q.block(m0 + r, g, lane)]);
          low[r][c] = _mm512_set1_epi32(q.start_low[q.block(m0 + r, g, lane)]);
        }
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        __m512i w[kCols];
        for (int c = 0; c < kCols; ++c) {
          const uint8_t* ahead = w_lane[c] + chunk * kChunk + kPrefetchAhead;
          if (ahead >= tile_end[c]) ahead += (kCols - 1) * tile_bytes;  // on into the column's next tile
          _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
          w[c] = _mm512_load_si512(w_lane[c] + chunk * kChunk);
        }
        for (int r = 0; r < kRows; ++r) {
          int32_t four_high, four_low;  // the lane's 4 bytes of this chunk
          std::memcpy(&four_high, q.high_row(m0 + r) + chunk * kChunk + 4 * lane, 4);
          std::memcpy(&four_low, q.low_row(m0 + r) + chunk * kChunk + 4 * lane, 4);
          __m512i xh = _mm512_set1_epi32(four_high), xl = _mm512_set1_epi32(four_low);
          for (int c = 0; c < kCols; ++c) {
            high[r][c] = _mm512_dpbusd_epi32(high[r][c], w[c], xh);
            low[r][c] = _mm512_dpbusd_epi32(low[r][c], w[c], xl);
          }
        }
      }
      for (int r = 0; r < kRows; ++r) {
        __m512 sx = _mm512_set1_ps(q.scale[q.block(m0 + r, g, lane)]);
        for (int c = 0; c < kCols; ++c) {  // the exact integer sum(w * (254 high + low)), then one conversion
          __m512i both = _mm512_add_epi32(_mm512_mullo_epi32(high[r][c], _mm512_set1_epi32(kLowSteps)), low[r][c]);
          acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(both), sx, acc[r][c]);
        }
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c) _mm512_store_ps(lanes[r][c][lane], acc[r][c]);
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) {
      int64_t n = (t + c) * kTile;
      __m512 half[8], quarter[4], eighth[2];  // lanes i and i + 8, then i + 4, i + 2, i + 1
      for (int i = 0; i < 8; ++i) half[i] = _mm512_add_ps(_mm512_load_ps(lanes[r][c][i]), _mm512_load_ps(lanes[r][c][i + 8]));
      for (int i = 0; i < 4; ++i) quarter[i] = _mm512_add_ps(half[i], half[i + 4]);
      for (int i = 0; i < 2; ++i) eighth[i] = _mm512_add_ps(quarter[i], quarter[i + 2]);
      __m512 total = _mm512_add_ps(eighth[0], eighth[1]);
      store_bf16(out + (m0 + r) * N + n, _mm512_mul_ps(total, load_bf16_masked(scales + n, kTile)));
    }
}

// Rows [m0, m0 + kRows) times tiles [t0, t1), kCols tiles at a time while they last.
template <int kRows, int kCols>
void run_of_tiles(const QuantizedRows& q, int64_t m0, const uint8_t* packed, const at::BFloat16* scales,
                  at::BFloat16* out, int64_t N, int64_t t0, int64_t t1) {
  int64_t t = t0;
  for (; t + kCols <= t1; t += kCols) tile_products<kRows, kCols>(q, m0, packed, scales, out, N, t);
  for (; t < t1; ++t) tile_products<kRows, 1>(q, m0, packed, scales, out, N, t);
}

// Rows [m_begin, m_end) times tiles [t0, t1). Registers: kRows x kCols sums of each byte, as
// many scaled sums, kCols weight loads and two broadcasts. With one byte a value 4 x 3 ran a
// prompt's pass fastest (40 ms against 43 for 4 x 2, 6 x 2 and 4 x 4, spilled); with two, 4 x 3
// spills too but still ran fastest (37 rows: 36.7 ms against 38-40 for 3 x 3, 46 for 2 x 4).
// Two rows (Compare's step) take 6 tiles at once: a thread's run of SmolLM2's tiles (18, 30, 96
// or 1536) is a whole number of 6s, and two rows' products over a step were 0.1 ms faster than
// with 4 (18 = 4 x 4 + 2 left alone), and 0.05 faster than 5 or 8; one row is fastest with 4
// (6: 0.09-0.1 ms slower, 8: 0.16).
void rows_times_tiles(const QuantizedRows& q, int64_t m_begin, int64_t m_end, const uint8_t* packed,
                      const at::BFloat16* scales, at::BFloat16* out, int64_t N, int64_t t0, int64_t t1) {
  for (int64_t m0 = m_begin; m0 < m_end; m0 += 4) {
    switch (std::min<int64_t>(4, m_end - m0)) {
      case 1: run_of_tiles<1, 4>(q, m0, packed, scales, out, N, t0, t1); break;
      case 2: run_of_tiles<2, 6>(q, m0, packed, scales, out, N, t0, t1); break;
      case 3: run_of_tiles<3, 3>(q, m0, packed, scales, out, N, t0, t1); break;
      default: run_of_tiles<4, 3>(q, m0, packed, scales, out, N, t0, t1); break;
    }
  }
}

// Outputs [16 t0, 16 t1) of one row of y, in place, plus its s B: per output
// (sum_r xa[from[t] + r] * b[r, n]) * sb[n] in fp32, rounded to bf16 as a bf16 tensor would hold
// it, then added to y; a tile with from[t] < 0 has no adapter and stays as it is. b int8 by tile
// of 16 outputs (own_kernels.pack_lora_b: per tile, its rank rows of 16 bytes), so a thread's run
// of tiles reads one stretch of it, and sb (N) bf16: s B quantized per output. `from` lets one
// call serve layers that share an input (q, k and v; gate and up): each tile reads its own
// layer's stretch of x A.
__attribute__((target("avx512f,avx512bw,avx512vl")))
void add_lora(at::BFloat16* y, const float* xa, const int8_t* b, const at::BFloat16* sb, int64_t rank,
              const int64_t* from, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    if (from[t] < 0) continue;
    const int8_t* tile = b + t * rank * kTile;
    const float* x = xa + from[t];
    __m512 sum = _mm512_setzero_ps();
    for (int64_t r = 0; r < rank; ++r) {
      __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tile + r * kTile));
      sum = _mm512_add_ps(sum, _mm512_mul_ps(_mm512_set1_ps(x[r]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes))));
    }
    int64_t n = t * kTile;
    __m512 update = round_to_bf16(_mm512_mul_ps(sum, load_bf16_masked(sb + n, kTile)));
    store_bf16(y + n, _mm512_add_ps(load_bf16_masked(y + n, kTile), update));
  }
}

}  // namespace
