/*
 * SSIM sums of one tile of a prediction against its reference, in one pass per band.
 *
 * cloudclear.metrics.native loads this library through ctypes (it uses no Python API, so it
 * builds without Python's headers) and falls back to the numpy / torch tiles of
 * cloudclear.metrics.maths when it is not built. Both compute the same figure the same way:
 *
 *   - values are reflectance (raw * scale + offset, clipped to [0, peak] when asked) minus a
 *     level per band and tile (the mean of a sparse sample), in float32: the local variances
 *     E[x'^2] - E[x']^2 then subtract numbers of the size of the local contrast, not of the
 *     squared reflectance, and float32 stays within 1e-6 of the float64 figure;
 *   - four planes per band (x, y, xy, x^2 + y^2), convolved by the separable window (vertical,
 *     then horizontal), then the SSIM formula in float32, each term formed from numbers of its
 *     own size, summed in double over the selected pixels.
 *
 * Here the four planes of the window's rows stay in a ring of rows, and each output row is
 * convolved and put through the formula while its rows are in the CPU's cache: no plane of the
 * tile is ever written to memory, where the numpy / torch tiles make a dozen passes over it.
 *
 * Floating-point contraction is off (-ffp-contract=off in pyproject.toml): SSIM of equal images
 * is then 1 to the bit (2 cov and var x + var y are computed from identical numbers), and every
 * CPU the library is built for gives the same sums.
 */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

enum { T_U8 = 0, T_U16 = 1, T_I16 = 2, T_U32 = 3, T_I32 = 4, T_F32 = 5, T_F64 = 6 };

#define MAX_K 15
#define LANES 8

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* One copy for CPUs with AVX2 and FMA (x86-64-v3), one for any x86-64, picked at load time. */
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

/* One raster of the tile: the first pixel of its window (halo included) and its strides, in
 * elements; columns are contiguous. */
typedef struct {
    const char *data;
    int type;
    ptrdiff_t band_stride, row_stride;
    const double *scale_offset; /* per band: scale, offset */
    int clip;
} Source;

static size_t type_size(int type) {
    switch (type) {
    case T_U8: return 1;
    case T_U16: case T_I16: return 2;
    case T_U32: case T_I32: case T_F32: return 4;
    case T_F64: return 8;
    default: return 0;
    }
}

/* How one band's raw values become centred float32 reflectance in a tile. */
typedef struct {
    double s, o, level, peak; /* reflectance = raw * s + o, clipped to [0, peak] when clip */
    int clip;
    int ints;   /* 8- and 16-bit integers: (raw - base) * sf + rest, all but one rounding exact */
    int32_t base; /* the raw value nearest the level */
    float sf, rest, lo, hi; /* scale; base * s + o - level; the clip bounds less the level */
} Centring;

static Centring centring(const Source *src, int band, double peak, double level) {
    Centring k = {src->scale_offset[2 * band], src->scale_offset[2 * band + 1], level, peak, src->clip, 0, 0, 0, 0, 0, 0};
    if (type_size(src->type) <= 2 && k.s > 0.0 && isfinite(k.s) && isfinite(k.o)) {
        /* raw - base is exact in int32 and in float32 (under 2^24), so x' = (raw - base) * s + rest
         * rounds once in the product, to float32 precision of the centred value, not of the
         * reflectance, and once in the sum with rest (under half a step of s). */
        const double b = nearbyint((level - k.o) / k.s);
        k.ints = 1;
        k.base = (int32_t)(b < -1e9 ? -1e9 : b > 1e9 ? 1e9 : b);
        k.sf = (float)k.s;
        k.rest = (float)(k.base * k.s + k.o - level);
        k.lo = (float)(0.0 - level);
        k.hi = (float)(peak - level);
    }
    return k;
}

#define LOAD_INT(T)                                                                  \
    {                                                                                \
        const T *restrict a = (const T *)p;                                          \
        const int32_t base = k->base;                                                \
        const float sf = k->sf, rest = k->rest, lo = k->lo, hi = k->hi;              \
        if (k->clip) {                                                               \
            for (ptrdiff_t c = 0; c < n; c++) {                                      \
                float v = (float)((int32_t)a[c] - base) * sf + rest;                 \
                v = v < lo ? lo : v;                                                 \
                out[c] = v > hi ? hi : v;                                            \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t c = 0; c < n; c++) out[c] = (float)((int32_t)a[c] - base) * sf + rest; \
        }                                                                            \
    }

#define LOAD_ANY(T)                                                                  \
    {                                                                                \
        const T *restrict a = (const T *)p;                                          \
        const double s = k->s, o = k->o, level = k->level, peak = k->peak;           \
        if (k->clip) {                                                               \
            for (ptrdiff_t c = 0; c < n; c++) {                                      \
                double v = (double)a[c] * s + o;                                     \
                v = v < 0.0 ? 0.0 : v;                                               \
                v = v > peak ? peak : v;                                             \
                out[c] = (float)(v - level);                                         \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t c = 0; c < n; c++) out[c] = (float)((double)a[c] * s + o - level); \
        }                                                                            \
    }

/* Row `row` of band `band`, n values, as centred float32 reflectance into out. */
INLINE void load_row(const Source *src, const Centring *k, int band, int row, ptrdiff_t n, float *restrict out) {
    const char *p = src->data + (band * src->band_stride + row * src->row_stride) * (ptrdiff_t)type_size(src->type);
    if (k->ints) {
        switch (src->type) {
        case T_U8: LOAD_INT(uint8_t) return;
        case T_U16: LOAD_INT(uint16_t) return;
        case T_I16: LOAD_INT(int16_t) return;
        }
    }
    switch (src->type) {
    case T_U8: LOAD_ANY(uint8_t) break;
    case T_U16: LOAD_ANY(uint16_t) break;
    case T_I16: LOAD_ANY(int16_t) break;
    case T_U32: LOAD_ANY(uint32_t) break;
    case T_I32: LOAD_ANY(int32_t) break;
    case T_F32: LOAD_ANY(float) break;
    case T_F64: LOAD_ANY(double) break;
    }
}

/* Value (row, col) of band `band` as reflectance (clipped when asked), not centred. */
static double value_at(const Source *src, int band, int row, ptrdiff_t col, double peak) {
    const ptrdiff_t at = band * src->band_stride + row * src->row_stride + col;
    double v;
    switch (src->type) {
    case T_U8: v = ((const uint8_t *)src->data)[at]; break;
    case T_U16: v = ((const uint16_t *)src->data)[at]; break;
    case T_I16: v = ((const int16_t *)src->data)[at]; break;
    case T_U32: v = ((const uint32_t *)src->data)[at]; break;
    case T_I32: v = ((const int32_t *)src->data)[at]; break;
    case T_F32: v = ((const float *)src->data)[at]; break;
    default: v = ((const double *)src->data)[at]; break;
    }
    v = v * src->scale_offset[2 * band] + src->scale_offset[2 * band + 1];
    if (src->clip) {
        v = v < 0.0 ? 0.0 : v;
        v = v > peak ? peak : v;
    }
    return v;
}

/* The band's level: the mean reflectance of every 4th row and 16th column (NaN left out), a
 * constant near the values (any constant keeps the covariances exact). */
static double band_level(const Source *src, int band, int rows, ptrdiff_t cols, double peak) {
    double sum = 0.0;
    long count = 0;
    for (int t = 0; t < rows; t += 4) {
        for (ptrdiff_t c = 0; c < cols; c += 16) {
            const double v = value_at(src, band, t, c, peak);
            if (v == v) { /* not NaN */
                sum += v;
                count++;
            }
        }
    }
    return count ? sum / (double)count : 0.0;
}

/* v[c] = sum_k kern[k] * rows[k][c], c < n: each output kept in a register through the window. */
INLINE void vertical(int K, const float *const *rows, const float *restrict kern, float *restrict v, ptrdiff_t n) {
    const float *restrict r[MAX_K];
    for (int k = 0; k < K; k++) r[k] = rows[k];
    for (ptrdiff_t c = 0; c < n; c++) {
        float a = kern[0] * r[0][c];
#pragma GCC unroll 16
        for (int k = 1; k < K; k++) a += kern[k] * r[k][c];
        v[c] = a;
    }
}

/* m[c] = sum_k kern[k] * v[c + k], c < n. */
INLINE void horizontal(int K, const float *restrict v, const float *restrict kern, float *restrict m, ptrdiff_t n) {
    for (ptrdiff_t c = 0; c < n; c++) {
        float a = kern[0] * v[c];
#pragma GCC unroll 16
        for (int k = 1; k < K; k++) a += kern[k] * v[c + k];
        m[c] = a;
    }
}

INLINE int tile(int K, const Source *pred, const Source *ref, int nb, int h, int w, const float *kern, double peak,
                double c1, double c2, double cov_norm, const uint8_t *sel, ptrdiff_t sel_stride, float *scratch,
                double *out) {
    const ptrdiff_t W2 = w + K - 1;
    const int H2 = h + K - 1;
    float *ring = scratch;               /* K rows x 4 planes x W2 */
    float *vert = ring + (size_t)K * 4 * W2; /* 4 planes x W2 */
    float *mean = vert + (size_t)4 * W2;  /* 4 planes x w */
    const float tc = (float)(2.0 * cov_norm), cn = (float)cov_norm, c1f = (float)c1, c2f = (float)c2;
    for (int b = 0; b < nb; b++) {
        const double lx = band_level(pred, b, H2, W2, peak), ly = band_level(ref, b, H2, W2, peak);
        const Centring kx = centring(pred, b, peak, lx), ky = centring(ref, b, peak, ly);
        const float lxf = (float)lx, lyf = (float)ly, dl = (float)(lx - ly);
        double lanes[LANES] = {0};
        for (int t = 0; t < H2; t++) {
            float *x = ring + (size_t)(t % K) * 4 * W2, *y = x + W2, *xy = y + W2, *s2 = xy + W2;
            load_row(pred, &kx, b, t, W2, x);
            load_row(ref, &ky, b, t, W2, y);
            for (ptrdiff_t c = 0; c < W2; c++) {
                xy[c] = x[c] * y[c];
                s2[c] = x[c] * x[c] + y[c] * y[c];
            }
            if (t < K - 1) continue;
            const int i = t - (K - 1); /* the output row whose window ends at row t */
            for (int p = 0; p < 4; p++) {
                const float *rows[MAX_K];
                for (int k = 0; k < K; k++) rows[k] = ring + ((size_t)((i + k) % K) * 4 + p) * W2;
                vertical(K, rows, kern, vert + (size_t)p * W2, W2);
                horizontal(K, vert + (size_t)p * W2, kern, mean + (size_t)p * w, w);
            }
            const float *ux_ = mean, *uy_ = mean + w, *sxy_ = mean + 2 * w, *s2_ = mean + 3 * w;
            const uint8_t *srow = sel + (ptrdiff_t)i * sel_stride;
            float *val = vert; /* free again: the row's SSIM, zero where not selected, to a multiple of LANES */
            for (ptrdiff_t c = 0; c < w; c++) {
                float ux = ux_[c], uy = uy_[c];
                float a2 = (sxy_[c] - ux * uy) * tc + c2f;            /* 2 cov + C2 */
                float b2 = (s2_[c] - (ux * ux + uy * uy)) * cn + c2f; /* var x + var y + C2 */
                float d = (ux - uy) + dl;                             /* mean x - mean y */
                float mx = ux + lxf, my = uy + lyf;
                float den = (mx * mx + my * my) + c1f;
                val[c] = (1.0f - (d * d) / den) * (a2 / b2);
            }
            for (ptrdiff_t c = 0; c < w; c++) val[c] = srow[c] ? val[c] : 0.0f; /* NaN where not selected: 0 */
            for (ptrdiff_t c = w; c % LANES; c++) val[c] = 0.0f;
            for (ptrdiff_t c0 = 0; c0 < w; c0 += LANES) {
                for (int l = 0; l < LANES; l++) lanes[l] += (double)val[c0 + l];
            }
        }
        out[b] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }
    return 0;
}

/* Floats of scratch that cc_ssim_tile needs for a tile `w` columns wide and a window of `ksize`. */
size_t cc_ssim_scratch(int w, int ksize) {
    const size_t W2 = (size_t)w + ksize - 1;
    return (size_t)ksize * 4 * W2 + 4 * W2 + 4 * (size_t)w;
}

/*
 * Adds to out[b] the sum of the SSIM map of band b over the selected pixels of an h x w tile.
 *
 * pred / ref: the first value of the tile's window (ksize - 1 rows and columns more than the
 * tile: the halo), of type *_type (T_*), with their band and row strides in elements (columns
 * contiguous); *_so: per band, scale then offset; *_clip: clip reflectance to [0, peak].
 * kern: the window's 1-D kernel (separable); c1, c2, cov_norm: the SSIM constants. sel: h rows
 * of w bytes (non-zero: selected), sel_stride bytes apart; every selected pixel's window must
 * hold valid values (others may hold anything, NaN included). scratch: cc_ssim_scratch floats.
 * Returns 0, or -1 when a type or the window size is not supported (nothing added).
 */
CLONES int cc_ssim_tile(const void *pred, int pred_type, ptrdiff_t pred_bs, ptrdiff_t pred_rs, const double *pred_so,
                        int pred_clip, const void *ref, int ref_type, ptrdiff_t ref_bs, ptrdiff_t ref_rs,
                        const double *ref_so, int ref_clip, int nb, int h, int w, int ksize, const float *kern,
                        double peak, double c1, double c2, double cov_norm, const uint8_t *sel,
                        ptrdiff_t sel_stride, float *scratch, double *out) {
    if (!type_size(pred_type) || !type_size(ref_type) || ksize < 1 || ksize > MAX_K || h < 1 || w < 1) return -1;
    const Source p = {(const char *)pred, pred_type, pred_bs, pred_rs, pred_so, pred_clip};
    const Source r = {(const char *)ref, ref_type, ref_bs, ref_rs, ref_so, ref_clip};
    /* The two windows cloudclear has, with their sizes known to the compiler (unrolled loops). */
    switch (ksize) {
    case 11: return tile(11, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    case 7: return tile(7, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    default: return tile(ksize, &p, &r, nb, h, w, kern, peak, c1, c2, cov_norm, sel, sel_stride, scratch, out);
    }
}
