// The int8 ops finetune_lab::w8a8_mm and w8a8_lora_mm with AVX2 (what they compute, and what the
// AVX512-VNNI build shares with this one: w8a8_ops.h), for a CPU without AVX512-VNNI, or one
// torch runs as AVX2 (ATEN_CPU_CAPABILITY=avx2). Built with decode_attention.cpp into one
// library by core.inference.own_kernels.
//
// AVX2 has no byte-by-byte dot product that adds into 32 bits (vpdpbusd): its vpmaddubsw adds
// pairs of byte products into 16 bits, which w + 128 overflows (2 * 255 * 127). So each
// activation value goes whole, as the int16 254 * high + low (at most 32,385), and vpmaddwd
// multiplies weights widened to int16 by them, adding pairs into 32 bits: a 64-byte stretch
// (16 outputs' 4 bytes of one lane) is four loads of 4 outputs' bytes, each widened once for
// all rows (the 128 taken off), and one multiply-add per row. Two 32-bit sums per output run
// over the group's chunks, and are added into one (vphaddd) before the conversion to float.
// The integers are those the VNNI kernel sums and the float steps are its steps, in its order,
// so the two builds give the same outputs to the bit.
#include "w8a8_ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t kPrefetchAhead = 1024;  // as the VNNI kernel: its stream asks this far ahead

// 8 bf16 values as floats (a bf16 is the top half of a float's bits), those at or past `valid` as 0.
__attribute__((target("avx2,fma")))
inline __m256 load8_bf16(const at::BFloat16* x, int64_t valid) {
  __m128i bits;
  if (valid >= 8) {
    bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x));
  } else {
    alignas(16) uint16_t part[8] = {};
    std::memcpy(part, x, 2 * std::max<int64_t>(valid, 0));
    bits = _mm_load_si128(reinterpret_cast<const __m128i*>(part));
  }
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// 8 floats' bf16 bits (rounded to nearest, ties to even, as at::BFloat16), one per 32-bit lane.
__attribute__((target("avx2,fma")))
inline __m256i bf16_bits(__m256 values) {
  __m256i bits = _mm256_castps_si256(values);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd)), 16);
}

// 8 floats rounded to bf16 and stored.
__attribute__((target("avx2,fma")))
inline void store_bf16(at::BFloat16* out, __m256 values) {
  __m256i bits = bf16_bits(values);
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256(bits, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}

// 8 floats rounded to bf16 and back: what a bf16 tensor would hold.
__attribute__((target("avx2,fma")))
inline __m256 round_to_bf16(__m256 values) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(values), 16));
}

// x in steps of a block's high byte (t = x * 127 / amax, so |t| <= 127): its high byte round(t),
// its low byte round((t - high) * 254), both as the VNNI kernel rounds them, and the two as one
// value, 254 * high + low, in int16.
__attribute__((target("avx2,fma")))
inline void store_whole(__m256 t, int16_t* out) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m256 high = _mm256_round_ps(t, kNearest);
  __m256 low = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(t, high), _mm256_set1_ps(float(kLowSteps))), kNearest);
  __m256i whole = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_cvtps_epi32(high), _mm256_set1_epi32(kLowSteps)),
                                   _mm256_cvtps_epi32(low));
  __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(whole), _mm256_extracti128_si256(whole, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
}

__attribute__((target("avx2,fma")))
void quantize_row(const at::BFloat16* x, int64_t K, int64_t m, QuantizedRows& q) {
  int16_t* whole = q.whole.data() + m * q.chunks * kChunk;
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t g = 0; g < q.groups; ++g) {
    int64_t c0 = g * kGroupChunks, c1 = std::min(q.chunks, c0 + kGroupChunks);
    __m256 largest[8];  // per eighth of a chunk (8 values: lanes 2e and 2e + 1)
    for (auto& each : largest) each = _mm256_setzero_ps();
    for (int64_t c = c0; c < c1; ++c)
      for (int eighth = 0; eighth < 8; ++eighth) {
        int64_t k = c * kChunk + eighth * 8;
        largest[eighth] = _mm256_max_ps(largest[eighth], _mm256_andnot_ps(sign, load8_bf16(x + k, K - k)));
      }
    alignas(32) float each[64], inverse[64];  // value v of a chunk is in lane v / 4
    for (int eighth = 0; eighth < 8; ++eighth) _mm256_store_ps(each + eighth * 8, largest[eighth]);
    block_scales(each, m, g, q, inverse);
    for (int64_t c = c0; c < c1; ++c)
      for (int eighth = 0; eighth < 8; ++eighth) {
        int64_t k = c * kChunk + eighth * 8;
        store_whole(_mm256_mul_ps(load8_bf16(x + k, K - k), _mm256_load_ps(inverse + eighth * 8)), whole + k);
      }
  }
}

// The 16 outputs' integer sums of one lane over a group, from the four registers that hold them
// as pairs (register i: outputs 4i..4i+3, each as two sums), as 8 + 8 floats.
__attribute__((target("avx2,fma")))
inline void lane_sums(const __m256i pairs[4], __m256& low, __m256& high) {
  // hadd of outputs 0-3 and 4-7 gives 0 1 4 5 | 2 3 6 7; the 64-bit permute puts them in order.
  low = _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_hadd_epi32(pairs[0], pairs[1]), 0xD8));
  high = _mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_hadd_epi32(pairs[2], pairs[3]), 0xD8));
}

// Outputs [first, first + 8) of a tile from the 16 lanes' sums: added pairwise (lanes i and
// i + 8, then i + 4, i + 2, i + 1, as the VNNI kernel adds them), scaled, and stored as bf16.
__attribute__((target("avx2,fma")))
inline void store_outputs(const float (*lanes)[kTile], int first, const at::BFloat16* scales, at::BFloat16* out) {
  __m256 half[8], quarter[4], eighth[2];
  for (int i = 0; i < 8; ++i) half[i] = _mm256_add_ps(_mm256_load_ps(lanes[i] + first), _mm256_load_ps(lanes[i + 8] + first));
  for (int i = 0; i < 4; ++i) quarter[i] = _mm256_add_ps(half[i], half[i + 4]);
  for (int i = 0; i < 2; ++i) eighth[i] = _mm256_add_ps(quarter[i], quarter[i + 2]);
  __m256 total = _mm256_add_ps(eighth[0], eighth[1]);
  store_bf16(out + first, _mm256_mul_ps(total, load8_bf16(scales + first, 8)));
}

// Rows [m0, m0 + kRows) times the packed tile t, into out[m * N + n].
template <int kRows>
__attribute__((target("avx2,fma")))
void tile_products(const QuantizedRows& q, int64_t m0, const uint8_t* packed, const at::BFloat16* scales,
                   at::BFloat16* out, int64_t N, int64_t t) {
  const int64_t chunks = q.chunks;
  alignas(32) float lanes[kRows][kLanes][kTile];  // per lane, the 16 outputs' sums over its blocks
  const __m128i offset = _mm_set1_epi8(char(0x80));  // the packed bytes are w + 128 (the VNNI kernel's)
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    const uint8_t* w_lane = packed + (t * kLanes + lane) * chunks * kChunk;
    __m256 acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < q.groups; ++g) {
      int64_t c0 = g * kGroupChunks, c1 = std::min(chunks, c0 + kGroupChunks);
      __m256i sums[kRows][4];
      for (int r = 0; r < kRows; ++r)
        for (int i = 0; i < 4; ++i) sums[r][i] = _mm256_setzero_si256();
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        __m256i x[kRows];  // the lane's 4 values of this chunk, in each 64-bit quarter
        for (int r = 0; r < kRows; ++r) {
          int64_t four;
          std::memcpy(&four, q.whole_row(m0 + r) + chunk * kChunk + 4 * lane, 8);
          x[r] = _mm256_set1_epi64x(four);
        }
        const uint8_t* stretch = w_lane + chunk * kChunk;
        _mm_prefetch(reinterpret_cast<const char*>(stretch + kPrefetchAhead), _MM_HINT_T0);
        for (int i = 0; i < 4; ++i) {
          __m128i bytes = _mm_xor_si128(_mm_load_si128(reinterpret_cast<const __m128i*>(stretch + 16 * i)), offset);
          __m256i w = _mm256_cvtepi8_epi16(bytes);
          for (int r = 0; r < kRows; ++r) sums[r][i] = _mm256_add_epi32(sums[r][i], _mm256_madd_epi16(w, x[r]));
        }
      }
      for (int r = 0; r < kRows; ++r) {  // the exact integer sum(w * (254 high + low)), then one conversion
        __m256 sx = _mm256_set1_ps(q.scale[q.block(m0 + r, g, lane)]), low, high;
        lane_sums(sums[r], low, high);
        acc[r][0] = _mm256_fmadd_ps(low, sx, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(high, sx, acc[r][1]);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      _mm256_store_ps(lanes[r][lane], acc[r][0]);
      _mm256_store_ps(lanes[r][lane] + 8, acc[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int part = 0; part < 2; ++part)  // outputs 0-7, then 8-15 of the tile
      store_outputs(lanes[r], 8 * part, scales + t * kTile, out + (m0 + r) * N + t * kTile);
}

QuantizedRows quantize_rows(const at::BFloat16* x, int64_t M, int64_t K) {
  int64_t chunks = (K + kChunk - 1) / kChunk, groups = (chunks + kGroupChunks - 1) / kGroupChunks;
  QuantizedRows q{chunks, groups, {}, {}, std::vector<int16_t>(M * chunks * kChunk),
                  std::vector<float>(M * groups * kLanes), {}, {}};
  at::parallel_for(0, M, 8, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) quantize_row(x + m * K, K, m, q);
  });
  return q;
}

// Rows [m_begin, m_end) times tiles [t0, t1), two rows at a time and one tile: AVX2's 16
// registers hold two rows' sums of one tile (four each) and what they multiply. Over a step's
// products (bench/kernel_pair.py, the EPYC Zen 5): one row over one tile 4.19 ms, over 2, 3 or
// 4 tiles at once 5.51, 4.88, 4.37 (the VNNI kernel: 4.24); a prompt's pass of 37 rows two at
// a time 39.6 ms, three or four 42.5-44.0 (the VNNI kernel: 16.5).
void rows_times_tiles(const QuantizedRows& q, int64_t m_begin, int64_t m_end, const uint8_t* packed,
                      const at::BFloat16* scales, at::BFloat16* out, int64_t N, int64_t t0, int64_t t1) {
  for (int64_t m0 = m_begin; m0 < m_end; m0 += 2)
    for (int64_t t = t0; t < t1; ++t) {
      if (m_end - m0 == 1)
        tile_products<1>(q, m0, packed, scales, out, N, t);
      else
        tile_products<2>(q, m0, packed, scales, out, N, t);
    }
}

// Outputs [16 t0, 16 t1) of one row of y, in place, plus its s B, as the VNNI kernel's add_lora
// computes them (the same products and sums, 8 outputs a register).
__attribute__((target("avx2,fma")))
void add_lora(at::BFloat16* y, const float* xa, const int8_t* b, const at::BFloat16* sb, int64_t rank,
              const int64_t* from, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    if (from[t] < 0) continue;
    const int8_t* tile = b + t * rank * kTile;
    const float* x = xa + from[t];
    for (int part = 0; part < 2; ++part) {
      __m256 sum = _mm256_setzero_ps();
      for (int64_t r = 0; r < rank; ++r) {
        __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tile + r * kTile + 8 * part));
        sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_set1_ps(x[r]), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))));
      }
      int64_t n = t * kTile + 8 * part;
      __m256 update = round_to_bf16(_mm256_mul_ps(sum, load8_bf16(sb + n, 8)));
      store_bf16(y + n, _mm256_add_ps(load8_bf16(y + n, 8), update));
    }
  }
}

}  // namespace
