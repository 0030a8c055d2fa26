/* The baseline's first stage, fused: 3x3 convolution (1 -> 32 channels) plus bias, 2x2 max-pooling,
 * ReLU, on 28x28 images, and its weight and bias gradients. Built and loaded by fastpath.py.
 *
 * Fusing skips the 26x26x32 convolution output (86 KB per image) that separate ops write and read
 * back: each pooled value is the max of four 32-channel dot products over 9 pixels, computed in
 * registers, and the backward pass needs only which of the four won (one byte per value).
 * The 32 channels are the vector lanes. With OpenMP, `threads` threads share the work; built against
 * the libgomp that torch loads, they are torch's own threads, so the two never compete for cores.
 *
 * Every result is the same on any number of threads, so the thread count can follow the machine's load
 * in the middle of a run (machine.py): work is cut into fixed pieces (CHUNK images, fixed blocks of a
 * matrix product) whatever the thread count, and sums over pieces are added in a fixed order.
 */
#include <stdint.h>
#include <stdlib.h>

#define K 9   /* 3x3 taps */
#define W 28  /* input width and height */
#define P 13  /* pooled width and height */
#define CHUNK 8  /* images per piece of the backward pass's sums */

/* 32 channels as two vectors of 16 floats (GCC and Clang vector extensions: AVX-512 registers where
 * the CPU has them, narrower instructions elsewhere). */
typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
typedef uint8_t u16v __attribute__((vector_size(16)));

static inline f16v load(const float *p) { f16v v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, f16v v) { __builtin_memcpy(p, &v, sizeof v); }
static inline f16v pick(i16v mask, f16v a, f16v b) { return (f16v)(((i16v)a & mask) | ((i16v)b & ~mask)); }

/* x: (n, 28, 28); weight: (32, 9) as torch stores it; bias: (32).
 * h: (n, 13, 13, 32), relu(max-pool(conv(x) + bias)), channels last (Keras's flatten order).
 * which: (n, 13, 13, 32), the winning pool position 0-3 (row-major in the 2x2 window), or NULL. */
void conv_pool_forward(const float *restrict x, int64_t n, const float *restrict weight,
                       const float *restrict bias, float *restrict h, uint8_t *restrict which, int threads) {
    f16v w[K][2], b[2] = {load(bias), load(bias + 16)};
    for (int k = 0; k < K; k++)
        for (int half = 0; half < 2; half++)
            for (int c = 0; c < 16; c++) w[k][half][c] = weight[(16 * half + c) * K + k];
    const f16v zero = {0};
#pragma omp parallel for num_threads(threads) schedule(dynamic, CHUNK)
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * W * W;
        for (int i = 0; i < P; i++)
            for (int j = 0; j < P; j++) {
                const int64_t at = ((img * P + i) * P + j) * 32;
                for (int half = 0; half < 2; half++) {
                    f16v best = zero;
                    i16v arg = {0};
                    for (int q = 0; q < 4; q++) {
                        const float *patch = xi + (2 * i + q / 2) * W + 2 * j + q % 2;
                        f16v acc = b[half];
                        for (int k = 0; k < K; k++) acc += patch[(k / 3) * W + k % 3] * w[k][half];
                        /* ties keep the first position, as torch's max-pooling does */
                        const i16v better = q == 0 ? ~(i16v){0} : (i16v)(acc > best);
                        best = pick(better, acc, best);
                        arg = (arg & ~better) | (q & better);
                    }
                    store(h + at + 16 * half, pick((i16v)(best > zero), best, zero));
                    if (which) {
                        const u16v arg8 = __builtin_convertvector(arg, u16v);
                        __builtin_memcpy(which + at + 16 * half, &arg8, sizeof arg8);
                    }
                }
            }
    }
}

/* Sums over images [begin, end) of the weight gradient, as (9, 32), then the bias gradient (32), into out. */
static void backward_range(const float *restrict x, const float *restrict h, const uint8_t *restrict which,
                           const float *restrict gh, int64_t begin, int64_t end, float *restrict out) {
    const f16v zero = {0};
    for (int half = 0; half < 2; half++) {  /* one half at a time: its 10 sums stay in registers */
        f16v gw[K] = {zero}, gb = zero;
        for (int64_t img = begin; img < end; img++) {
            const float *xi = x + img * W * W;
            for (int i = 0; i < P; i++)
                for (int j = 0; j < P; j++) {
                    const int64_t a = ((img * P + i) * P + j) * 32 + 16 * half;
                    const f16v g = pick((i16v)(load(h + a) > zero), load(gh + a), zero);  /* the ReLU */
                    u16v arg8;
                    __builtin_memcpy(&arg8, which + a, sizeof arg8);
                    const i16v arg = __builtin_convertvector(arg8, i16v);
                    gb += g;
#pragma GCC unroll 4
                    for (int q = 0; q < 4; q++) {  /* g flows to the pool position that won */
                        const f16v gq = pick((i16v)(arg == q), g, zero);
                        const float *patch = xi + (2 * i + q / 2) * W + 2 * j + q % 2;
#pragma GCC unroll 9
                        for (int k = 0; k < K; k++) gw[k] += patch[(k / 3) * W + k % 3] * gq;
                    }
                }
        }
        for (int k = 0; k < K; k++) store(out + k * 32 + 16 * half, gw[k]);
        store(out + K * 32 + 16 * half, gb);
    }
}

/* Gradients of the loss with respect to weight (32, 9) and bias (32), written (not added) there,
 * given gh = dloss/dh (n, 13, 13, 32) and the forward pass's x, h and which. Each piece of CHUNK images
 * is summed on its own and the pieces are added in order: the same bits on any number of threads.
 * Returns 0, or -1 where the memory for the pieces' sums cannot be had. */
int conv_pool_backward(const float *restrict x, int64_t n, const float *restrict h,
                       const uint8_t *restrict which, const float *restrict gh,
                       float *restrict grad_weight, float *restrict grad_bias, int threads) {
    const int64_t pieces = n > 0 ? (n + CHUNK - 1) / CHUNK : 1;
    float (*partial)[(K + 1) * 32] = calloc(pieces, sizeof *partial);
    if (!partial) return -1;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int64_t p = 0; p < pieces; p++)
        backward_range(x, h, which, gh, p * CHUNK, (p + 1) * CHUNK < n ? (p + 1) * CHUNK : n, partial[p]);
    for (int64_t p = 1; p < pieces; p++)
        for (int v = 0; v < (K + 1) * 32; v++) partial[0][v] += partial[p][v];
    for (int c = 0; c < 32; c++) {
        for (int k = 0; k < K; k++) grad_weight[c * K + k] = partial[0][k * 32 + c];
        grad_bias[c] = partial[0][K * 32 + c];
    }
    free(partial);
    return 0;
}

/* A Fortran BLAS sgemm: C = alpha op(A) op(B) + beta C, column-major; and MKL's per-thread limit on its
 * own threads (mkl_set_num_threads_local), which returns the previous one. */
typedef void (*sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                         const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                         const float *beta, float *c, const int *ldc);
typedef int (*local_threads_fn)(int);

/* sgemm cut into `blocks` fixed blocks, each one BLAS call limited to one thread: the blocks, and so
 * the bits, are the same on any number of threads (MKL alone splits a product by its thread count, and
 * rounds differently for each). split: 0 cuts the rows of C, 1 its columns, 2 the inner dimension k,
 * whose blocks' products are then added to C in order. (Rows of the column-major C are the columns of
 * the row-major matrix torch sees.) Returns 0, or -1 where memory for the products of k blocks is short. */
int gemm_blocks(sgemm_fn sgemm, local_threads_fn local_threads, char transa, char transb, int m, int n, int k,
                float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                int blocks, int split, int threads) {
    const int total = split == 0 ? m : split == 1 ? n : k, size = (total + blocks - 1) / blocks;
    float *sums = NULL;  /* k blocks after the first: their own products, m x n each */
    if (split == 2 && blocks > 1 && !(sums = malloc(sizeof(float) * (size_t)m * n * (blocks - 1)))) return -1;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (int i = 0; i < blocks; i++) {
        const int first = i * size, count = total - first < size ? total - first : size;
        if (count <= 0) continue;
        const int before = local_threads(1);
        if (split == 0)
            sgemm(&transa, &transb, &count, &n, &k, &alpha, transa == 'N' ? a + first : a + (int64_t)first * lda,
                  &lda, b, &ldb, &beta, c + first, &ldc);
        else if (split == 1)
            sgemm(&transa, &transb, &m, &count, &k, &alpha, a, &lda,
                  transb == 'N' ? b + (int64_t)first * ldb : b + first, &ldb, &beta, c + (int64_t)first * ldc, &ldc);
        else {
            const float zero = 0;
            const float *ai = transa == 'N' ? a + (int64_t)first * lda : a + first;
            const float *bi = transb == 'N' ? b + first : b + (int64_t)first * ldb;
            if (i == 0)
                sgemm(&transa, &transb, &m, &n, &count, &alpha, ai, &lda, bi, &ldb, &beta, c, &ldc);
            else
                sgemm(&transa, &transb, &m, &n, &count, &alpha, ai, &lda, bi, &ldb, &zero,
                      sums + (size_t)m * n * (i - 1), &m);
        }
        local_threads(before);
    }
    if (sums) {
        for (int i = 1; i < blocks && i * size < total; i++)
            for (int col = 0; col < n; col++)
                for (int row = 0; row < m; row++)
                    c[(int64_t)col * ldc + row] += sums[(size_t)m * n * (i - 1) + (size_t)col * m + row];
        free(sums);
    }
    return 0;
}
