/* A one-row int8 x int8 product with AVX512-VNNI, for bench/int8_kernels.py only (not in the app).
 *
 * y[n] = sw[n] * sum_b sx[b] * sum_{k in block b} w[n,k] * xq[k], as llama.cpp's q8_0 multiplies:
 * the row x is quantized to int8 per block of 64 values (one scale each), the weight per output
 * row. vpdpbusd multiplies unsigned by signed bytes, so the weight is kept as w + 128 (uint8) and
 * 128 * sum_b sx[b] * sum(xq in b), the same for every n, is taken off at the end.
 * Build: gcc -O3 -mavx512f -mavx512bw -mavx512vnni -fopenmp -shared -fPIC w8a8_vnni.c -o w8a8_vnni.so
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 64

static inline float bf16_to_float(uint16_t v) { uint32_t u = ((uint32_t)v) << 16; float f; __builtin_memcpy(&f, &u, 4); return f; }
static inline uint16_t float_to_bf16(float f) { uint32_t u; __builtin_memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return (uint16_t)(u >> 16); }

/* x: K bf16 values; w_u8: N rows of K bytes (w + 128); sw: N bf16 scales; y: N bf16. K % 64 == 0. */
void w8a8_row(const uint16_t *x, const uint8_t *w_u8, const uint16_t *sw, uint16_t *y, int N, int K, int threads) {
    int blocks = K / BLOCK;
    int8_t *xq = aligned_alloc(64, K);
    float *sx = malloc(sizeof(float) * blocks), offset = 0;
    for (int b = 0; b < blocks; b++) {
        float amax = 0;
        for (int k = b * BLOCK; k < (b + 1) * BLOCK; k++) amax = fmaxf(amax, fabsf(bf16_to_float(x[k])));
        sx[b] = amax / 127.f;
        float inv = amax > 0 ? 127.f / amax : 0;
        int sum = 0;
        for (int k = b * BLOCK; k < (b + 1) * BLOCK; k++) { xq[k] = (int8_t)lrintf(bf16_to_float(x[k]) * inv); sum += xq[k]; }
        offset += 128.f * sx[b] * sum;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int n0 = 0; n0 < N; n0 += 4) {
        int rows = N - n0 < 4 ? N - n0 : 4;
        const uint8_t *w[4];
        __m512 acc[4];
        for (int j = 0; j < 4; j++) { w[j] = w_u8 + (size_t)(n0 + (j < rows ? j : 0)) * K; acc[j] = _mm512_setzero_ps(); }
        for (int b = 0; b < blocks; b++) {
            __m512i xv = _mm512_load_si512((const void *)(xq + b * BLOCK));
            __m512 scale = _mm512_set1_ps(sx[b]);
            for (int j = 0; j < 4; j++) {
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(w[j] + b * BLOCK), xv);
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[j]);
            }
        }
        for (int j = 0; j < rows; j++) y[n0 + j] = float_to_bf16((_mm512_reduce_add_ps(acc[j]) - offset) * bf16_to_float(sw[n0 + j]));
    }
    free(xq);
    free(sx);
}
