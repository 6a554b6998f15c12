// The part of the int8 ops that is the same on every instruction set: the activation rows'
// quantized form, the ops' checks and their calls (finetune_lab::w8a8_mm and w8a8_lora_mm).
// Included by w8a8_vnni.cpp (AVX512-VNNI) and w8a8_avx2.cpp (AVX2), each of which defines, after
// it, quantize_rows, rows_times_tiles and add_lora; core.inference.own_kernels builds the one the
// CPU runs into a library, and this registers its ops.
//
// y[m, n] = scales[n] * sum_b sx[m, b] * sum_{k in block b} w[n, k] * xq[m, k]: each row of the
// activations is quantized per block of 32 values with one float scale, as llama.cpp's q8_0
// does, but to 16 bits, not 8: each value is two int8 bytes, xq = 254 * high + low, the high
// byte in steps of the block's largest / 127 and the low one in 1/254 of those. One byte a
// value moved greedy answers: on SmolLM2 a step's logits were 0.30 from fp32's on average
// against torch's int8 path's 0.27 (bf16 activations), with two bytes 0.27. Nor are a block's
// values 32 neighbours: the row goes in chunks of 64 bytes, 16 lanes of 4, and a block is one
// lane's 4 values in each of 8 chunks (a group). A block's integer sum runs over its 8 chunks
// before one conversion and one scaling.
//
// The weight comes packed (own_kernels.pack): for each tile of 16 output rows, lane by lane,
// chunk by chunk, the tile's 16 rows' 4 bytes of that lane, each byte w + 128. One 64-byte
// stretch then holds 16 outputs' weights for one lane of one chunk.
//
// Every output's arithmetic is one fixed sequence, on either instruction set: per lane, the
// exact integer sum(w * xq) of each block, converted to float and scaled, added group by group;
// then the 16 lanes added pairwise (as _mm512_reduce_add_ps adds a register). So a row's answer
// does not depend on the batch it is in, nor on how its outputs were tiled, nor on which of the
// two kernels computed it: they agree to the bit (tests/test_kernel_builds.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kWidthStep = 32;  // the rows' width is a multiple of it (own_kernels.BLOCK)
constexpr int64_t kChunk = 64;      // bytes of a weight stretch: 16 lanes of 4 values
constexpr int64_t kLanes = 16;
constexpr int64_t kTile = 16;       // output rows per packed tile
constexpr int64_t kGroupChunks = 8; // chunks whose lanes share one scale each (a block of 32 values)
constexpr int64_t kSerialBytes = 1 << 17;  // smaller weights: one thread (waking the other costs more)
constexpr int32_t kLowSteps = 254;  // a low byte's steps per step of the high byte

// The activation rows, quantized (each row padded with zeros to whole chunks), and per row, group
// and lane the block's scale (of a low byte's step). The VNNI kernel takes each value as its two
// int8 bytes, high and low, and the starts of a block's two sums (-128 * the sum of its high, of
// its low bytes: it multiplies w + 128); the AVX2 one takes each value whole, 254 * high + low,
// as one int16.
struct QuantizedRows {
  int64_t chunks, groups;
  std::vector<int8_t> high, low;
  std::vector<int16_t> whole;
  std::vector<float> scale;
  std::vector<int32_t> start_high, start_low;
  const int8_t* high_row(int64_t m) const { return high.data() + m * chunks * kChunk; }
  const int8_t* low_row(int64_t m) const { return low.data() + m * chunks * kChunk; }
  const int16_t* whole_row(int64_t m) const { return whole.data() + m * chunks * kChunk; }
  int64_t block(int64_t m, int64_t g, int64_t lane) const { return (m * groups + g) * kLanes + lane; }
};

// Row m's block scales for group g, from each of a chunk's 64 values' largest magnitude over
// the group (`each`; value v is in lane v / 4): per lane, its scale (of a low byte's step) into
// q, and into `inverse` the factor that takes the lane's values to steps of its high byte.
inline void block_scales(const float each[64], int64_t m, int64_t g, QuantizedRows& q, float inverse[64]) {
  for (int lane = 0; lane < kLanes; ++lane) {
    float amax = std::max(std::max(each[4 * lane], each[4 * lane + 1]), std::max(each[4 * lane + 2], each[4 * lane + 3]));
    q.scale[q.block(m, g, lane)] = amax / 127.f / float(kLowSteps);
    for (int i = 0; i < 4; ++i) inverse[4 * lane + i] = amax > 0.f ? 127.f / amax : 0.f;
  }
}

// Each instruction set's own, defined by the file that includes this one:
// the rows (M, K) quantized; rows [m_begin, m_end) times the packed tiles [t0, t1) into
// out[m * N + n]; and one row's s B added to its outputs in tiles [t0, t1) (w8a8_lora_mm).
QuantizedRows quantize_rows(const at::BFloat16* x, int64_t M, int64_t K);
void rows_times_tiles(const QuantizedRows& q, int64_t m_begin, int64_t m_end, const uint8_t* packed,
                      const at::BFloat16* scales, at::BFloat16* out, int64_t N, int64_t t0, int64_t t1);
void add_lora(at::BFloat16* y, const float* xa, const int8_t* b, const at::BFloat16* sb, int64_t rank,
              const int64_t* from, int64_t t0, int64_t t1);

// Every row times the weight's first `tiles` tiles; then `after(t0, t1)` on the thread that
// computed tiles [t0, t1). Each thread takes a run of tiles and multiplies it by every group of
// rows in turn, so the run is read from memory once and from cache for the other groups.
template <typename After>
void all_products(const QuantizedRows& q, int64_t M, const uint8_t* packed, const at::BFloat16* scales,
                  at::BFloat16* out, int64_t N, int64_t tiles, After after) {
  int64_t K = q.chunks * kChunk;
  at::parallel_for(0, tiles, N * K < kSerialBytes ? tiles : 4, [&](int64_t t0, int64_t t1) {
    rows_times_tiles(q, 0, M, packed, scales, out, N, t0, t1);
    after(t0, t1);
  });
}

// rows (M, K) bf16; packed (tiles, 16 lanes, chunks, 64) uint8 as own_kernels.pack makes it;
// scales (N) bf16, N = 16 * tiles.
void check_rows_and_weight(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& scales, const char* op) {
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kBFloat16 && rows.size(1) % kWidthStep == 0,
              op, ": bf16 rows (M, K), K a multiple of 32");
  int64_t chunks = (rows.size(1) + kChunk - 1) / kChunk;
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kByte && packed.size(1) == kLanes &&
              packed.size(2) == chunks && packed.size(3) == kChunk && scales.size(0) == packed.size(0) * kTile,
              op, ": a weight packed by own_kernels.pack for rows of this width");
  TORCH_CHECK(scales.dim() == 1 && scales.scalar_type() == at::kBFloat16, op, ": bf16 scales, one per output");
}

at::Tensor w8a8_mm(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& scales) {
  check_rows_and_weight(rows, packed, scales, "w8a8_mm");
  int64_t M = rows.size(0), K = rows.size(1), N = scales.size(0);
  auto x = rows.contiguous();
  auto p = packed.contiguous();
  auto s = scales.contiguous();
  auto out = at::empty({M, N}, x.options());
  QuantizedRows q = quantize_rows(x.data_ptr<at::BFloat16>(), M, K);
  all_products(q, M, p.data_ptr<uint8_t>(), s.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), N, N / kTile,
               [](int64_t, int64_t) {});
  return out;
}

at::Tensor w8a8_mm_meta(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& scales) {
  return at::empty({rows.size(0), scales.size(0)}, rows.options());
}

// An adapter's parts as w8a8_lora_mm reads them from one byte tensor (own_kernels.pack_adapter),
// in this order: A packed as own_kernels.pack packs a weight (its rank padded to 16; for layers
// sharing an input, their A's one under another), s B by tile (N / 16, rank, 16) int8, each
// tile's start in x A (N / 16) int64, A's scales (a_rows) bf16, then s B's (N) bf16. One tensor,
// not five: each tensor argument costs the op's call from Python, and the compiled step's code
// a load from the module tree, 120 times a step.
struct AdapterParts {
  const uint8_t* a;
  const int8_t* b;
  const int64_t* from;
  const at::BFloat16* a_scales;
  const at::BFloat16* b_scales;
};

AdapterParts adapter_parts(const at::Tensor& adapter, int64_t a_rows, int64_t rank, int64_t chunks, int64_t N) {
  int64_t a_bytes = a_rows * chunks * kChunk, b_bytes = N * rank, from_bytes = N / kTile * 8;
  TORCH_CHECK(adapter.dim() == 1 && adapter.scalar_type() == at::kByte && adapter.is_contiguous() &&
              reinterpret_cast<uintptr_t>(adapter.data_ptr()) % kChunk == 0 &&
              a_rows % kTile == 0 && 0 < rank && rank <= a_rows &&
              adapter.numel() == a_bytes + b_bytes + from_bytes + 2 * (a_rows + N),
              "w8a8_lora_mm: an adapter packed by own_kernels.pack_adapter for this weight, rank and A");
  const uint8_t* bytes = adapter.data_ptr<uint8_t>();
  const int64_t* from = reinterpret_cast<const int64_t*>(bytes + a_bytes + b_bytes);
  for (int64_t t = 0; t < N / kTile; ++t)
    TORCH_CHECK(from[t] < 0 || from[t] + rank <= a_rows, "w8a8_lora_mm: a tile's x A starts past A's rows");
  const at::BFloat16* scales = reinterpret_cast<const at::BFloat16*>(bytes + a_bytes + b_bytes + from_bytes);
  return {bytes, reinterpret_cast<const int8_t*>(bytes + a_bytes), from, scales, scales + a_rows};
}

// A layer and a LoRA adapter on the last `tuned` rows, in one call (Compare's tuned pane): the
// layer's weight `packed` and the adapter's parts (AdapterParts). Each thread multiplies every
// row by its run of the layer's tiles, then the tuned rows by A's tiles (x A; the base rows need
// none), and adds s B to the tuned rows' outputs in its run while they are in cache. Both
// threads compute x A: it is a tile or a few, and one thread computing it first while the other
// waited cost Compare 0.5 ms a step (SmolLM2, the 2-core EPYC). In the compiled Compare step
// that is one call a layer (or a group of layers) where the sum in inductor's code was a kernel
// more (core.inference.compiled_views).
at::Tensor w8a8_lora_mm(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& scales,
                        const at::Tensor& adapter, int64_t a_rows, int64_t rank, int64_t tuned) {
  check_rows_and_weight(rows, packed, scales, "w8a8_lora_mm");
  int64_t M = rows.size(0), K = rows.size(1), N = scales.size(0);
  TORCH_CHECK(0 <= tuned && tuned <= M, "w8a8_lora_mm: tuned rows among the rows");
  auto x = rows.contiguous();
  auto p = packed.contiguous();
  auto s = scales.contiguous();
  QuantizedRows q = quantize_rows(x.data_ptr<at::BFloat16>(), M, K);
  AdapterParts lora = adapter_parts(adapter, a_rows, rank, q.chunks, N);
  auto out = at::empty({M, N}, x.options());
  at::BFloat16* y = out.data_ptr<at::BFloat16>();
  all_products(q, M, p.data_ptr<uint8_t>(), s.data_ptr<at::BFloat16>(), y, N, N / kTile, [&](int64_t t0, int64_t t1) {
    std::vector<at::BFloat16> xa(M * a_rows);  // rows of x A, the tuned ones filled
    rows_times_tiles(q, M - tuned, M, lora.a, lora.a_scales, xa.data(), a_rows, 0, a_rows / kTile);
    for (int64_t m = M - tuned; m < M; ++m) {
      std::vector<float> row(xa.data() + m * a_rows, xa.data() + (m + 1) * a_rows);
      add_lora(y + m * N, row.data(), lora.b, lora.b_scales, rank, lora.from, t0, t1);
    }
  });
  return out;
}

at::Tensor w8a8_lora_mm_meta(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& scales,
                             const at::Tensor& adapter, int64_t a_rows, int64_t rank, int64_t tuned) {
  return at::empty({rows.size(0), scales.size(0)}, rows.options());
}

}  // namespace

TORCH_LIBRARY(finetune_lab, m) {
  m.def("w8a8_mm(Tensor rows, Tensor packed, Tensor scales) -> Tensor");
  m.def("w8a8_lora_mm(Tensor rows, Tensor packed, Tensor scales, Tensor adapter, int a_rows, int rank, int tuned) -> Tensor");
}

TORCH_LIBRARY_IMPL(finetune_lab, CPU, m) {
  m.impl("w8a8_mm", &w8a8_mm);
  m.impl("w8a8_lora_mm", &w8a8_lora_mm);
}
TORCH_LIBRARY_IMPL(finetune_lab, Meta, m) {
  m.impl("w8a8_mm", &w8a8_mm_meta);
  m.impl("w8a8_lora_mm", &w8a8_lora_mm_meta);
}
