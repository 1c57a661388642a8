/* Compiled CPU passes of the Cox fit over one partition's rows (see kernels/cox_cpu.py).
 *
 * Arrays come through the buffer protocol, C-contiguous, of the dtypes cox_cpu.py makes them
 * (float64, int64, uint8); their lengths are checked here against n, p and G, and every
 * row's grid and row indices before use (a bad one raises ValueError, nothing is read out of
 * bounds). Each pass reads the caller's row-major covariates once, in their own order,
 * centring each row as it goes, with the GIL released. Sums run in a fixed order and nothing
 * is compiled with fast-math: the same inputs give the same bytes on a given machine (on
 * x86-64 the loops are compiled twice, for AVX2 + FMA and for the baseline, and the CPU picks
 * one when the module loads; no multiply-add is fused and exp is this file's own, so both
 * give the same bits: fused ones, explicit in both clones, were slower in the passes on the
 * AMD EPYC this was tuned on and gained 1–4 % in exp only, where the baseline clone's software
 * fma(), ~30x a hardware one, would cost far more; docs/performance.md, session 8). Built
 * with -fno-math-errno: square roots four at a time, correctly rounded either way. Pass 1 may
 * also keep per-grid-point buckets of r x xᵀ, from which pass 2's sum is taken without reading
 * X again (cox_cpu.one_pass says when). With keep None, X is instead the fit's re-laid copy
 * (pack_rows; cox_cpu.packs says when): the same operations in the same order, so the same
 * bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* COX_ONE_TARGET=1 (baseline) or 3 (x86-64-v3) builds one of the two clones alone: the
 * tests build both and compare their bits. */
#if defined(COX_ONE_TARGET) && COX_ONE_TARGET == 3
#define CLONES __attribute__((target("arch=x86-64-v3")))
#elif defined(COX_ONE_TARGET)
#define CLONES
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

enum { DEAD = 1, LATE = 2, NOT_AT_RISK = 4 };
/* A row's grid slot (row_flags): 2(b − 1) + dead as one int32, SLOT_LATE added for a late
 * entry; pass 2 reads it in place of b and flags (4 bytes a row, not 9, and one bounds check).
 * A slot at or past 2G (with b ≥ 2^30, or b < 1: SLOT_NONE) is refused where it is read. */
#define SLOT_LATE ((uint32_t)1 << 31)
#define SLOT_NONE ((uint32_t)0x7fffffff)

#define RB 32 /* rows per block of pass 1 (32: 3–4 % less CPU than 64, interleaved; 16 no better) */
/* The re-laid copy (pack_rows): per block of four rows, column k's four values at 4k, then the
 * rows' slots at 4p (int64: 2(b − 1) + dead, LATE_SLOT added for a late entry). */
#define STRIDE(p) (4 * (p) + 4)
#define LATE_SLOT ((int64_t)1 << 62)
#define BLOCK 128 /* rows per block of pass 2: a (p, BLOCK) array stays in L1 */

typedef struct {
    const uint32_t *slot; /* each row's slot (pass 2), or NULL: b and flags */
    const double *X, *mean, *w;
    const double *P; /* the re-laid copy (pack_rows) in place of X and keep, or NULL */
    const int64_t *keep, *a, *b;
    const uint8_t *flags;
    Py_ssize_t n, p, rows, nkeep, G;
} rows_t;

/* Whether row i's indices are unusable (1 <= b <= G, 0 <= a < b, keep within X's rows; no a
 * (everyone at risk from the first grid point): no late entry). */
static inline int bad_row(const rows_t *s, Py_ssize_t i) {
    return (uint64_t)(s->b[i] - 1) >= (uint64_t)s->G ||
           (s->a ? (uint64_t)s->a[i] >= (uint64_t)s->b[i] || ((s->flags[i] & LATE) && s->a[i] < 1)
                 : (s->flags[i] & LATE) != 0) ||
           (s->nkeep && (uint64_t)s->keep[i] >= (uint64_t)s->rows);
}

static inline const double *row_of(const rows_t *s, Py_ssize_t i) {
    return s->X + (s->nkeep ? s->keep[i] : i) * s->p;
}

/* Row i's address for a prefetch, before bad_row has checked it: an index out of X's rows
 * gives row 0, so no pointer outside X is ever formed. */
static inline const double *row_ahead(const rows_t *s, Py_ssize_t i) {
    int64_t k = s->nkeep ? s->keep[i] : i;
    return s->X + ((uint64_t)k < (uint64_t)s->rows ? k : 0) * s->p;
}

/* Fetch row i (i < n) of the pass's rows ahead of use, its first and last doubles: where they
 * are X's own rows in order (no keep: take_rows checks X has n rows), X + i p directly, with
 * no index to read or check. */
static inline __attribute__((always_inline)) void fetch_row(const rows_t *s, int own,
                                                            Py_ssize_t i, Py_ssize_t p) {
    const double *x = own ? s->X + i * p : row_ahead(s, i);
    __builtin_prefetch(x, 0, 3);
    __builtin_prefetch(x + p - 1, 0, 3);
}

/* 64-byte aligned zeros (bins whose 4-vectors never straddle a cache line) */
static double *aligned_zeros(Py_ssize_t count) {
    size_t bytes = ((size_t)(count > 0 ? count : 1) * sizeof(double) + 63) & ~(size_t)63;
    double *out = aligned_alloc(64, bytes);
    if (out) memset(out, 0, bytes);
    return out;
}

/* -- the loops (no Python objects; they run without the GIL) ----------------------------- */

/* Four doubles as one value (GCC/Clang vector extension: AVX registers where the clone has
 * them, two SSE2 halves otherwise); loads through memcpy, so no alignment is assumed. Every
 * operation on them is one IEEE operation per lane, so both clones give the same bits. */
typedef double v4 __attribute__((vector_size(32)));
typedef int64_t v4i __attribute__((vector_size(32)));
#define LOAD4(dst, src) memcpy(&(dst), (src), sizeof(v4))
#define STORE4(dst, src) memcpy((dst), &(src), sizeof(v4))
#define TOTAL4(v) (((v)[0] + (v)[1]) + ((v)[2] + (v)[3]))

/* exp of the four values at z, in place, by fdlibm's method (e_exp.c, error below 1 ulp):
 * x = k ln2 + r with |r| ≤ ln2/2, exp(r) by a rational approximation, then times 2^k in two
 * factors, so that a result in the subnormal range is rounded once. Below −1000 gives 0, above
 * 710 inf, NaN NaN. Only +, −, ×, ÷ and integer operations (no libm, no fused multiply-add):
 * the same bits in every clone, one AVX2 instruction per operation where the clone has AVX2. */
static inline __attribute__((always_inline)) void exp4(double *z) {
    v4 x;
    LOAD4(x, z);
    const v4 lo = {-1000.0, -1000.0, -1000.0, -1000.0}, hi = {710.0, 710.0, 710.0, 710.0};
    const v4 shifter = {0x1.8p52, 0x1.8p52, 0x1.8p52, 0x1.8p52};
    v4i below = x < lo, above = x > hi;   /* false for NaN: NaN goes through */
    x = (v4)(((v4i)x & ~below) | ((v4i)lo & below));
    x = (v4)(((v4i)x & ~above) | ((v4i)hi & above));
    v4 kd = x * 1.44269504088896338700e+00 + shifter;   /* round(x / ln2) + 1.5·2^52 */
    v4i k = (v4i)kd - (v4i)shifter;
    kd = kd - shifter;
    v4 h = x - kd * 6.93147180369123816490e-01;   /* k·ln2hi is exact (ln2hi: 32 bits) */
    v4 l = kd * 1.90821492927058770002e-10;
    v4 r = h - l, t = r * r;
    v4 c = r - t * (1.66666666666666019037e-01 +
                    t * (-2.77777777770155933842e-03 +
                         t * (6.61375632143793436117e-05 +
                              t * (-1.65339022054652515390e-06 +
                                   t * 4.13813679705723846039e-08))));
    v4 y = 1.0 - ((l - (r * c) / (2.0 - c)) - h);
    v4i k1 = ((k + 2048) >> 1) - 1024, k2 = k - k1;   /* k in [−1443, 1025]: halves normal */
    v4 s1 = (v4)((k1 + 1023) << 52), s2 = (v4)((k2 + 1023) << 52);
    x = (y * s1) * s2;
    STORE4(z, x);
}

/* u (one grid point's bin) += r z zᵀ over the first `rows` rows k of z zᵀ, each from column
 * 4⌊k/4⌋ to qq (the row's whole 4-vectors). z = (1, centred x, zeros) of qq doubles: row 0
 * is (r, r x), pass 1's bin; all q = 1 + p rows hold r x xᵀ too (a bucket, one pass per step).
 * Each entry is u + (r z_k) z_j: the same operations in every clone. */
static inline __attribute__((always_inline)) void add_outer(double *u, const double *z,
                                                            double ri, Py_ssize_t rows,
                                                            Py_ssize_t qq) {
    for (Py_ssize_t k = 0; k < rows; k++) {
        double rk = ri * z[k];
        v4 rv = {rk, rk, rk, rk}, y, w;
        for (Py_ssize_t j = k & ~(Py_ssize_t)3; j < qq; j += 4, u += 4) {
            LOAD4(y, z + j);
            LOAD4(w, u);
            w += rv * y;
            STORE4(u, w);
        }
    }
}

/* The columns k … k + 3 of the four rows x0 … x3 as four 4-vectors (row l in lane l):
 * shuffles only, exact. */
static inline __attribute__((always_inline)) void transpose4(const double *x0, const double *x1,
                                                             const double *x2, const double *x3,
                                                             v4 *c) {
    v4 a0, a1, a2, a3;
    LOAD4(a0, x0);
    LOAD4(a1, x1);
    LOAD4(a2, x2);
    LOAD4(a3, x3);
    const v4i lo = {0, 4, 2, 6}, hi = {1, 5, 3, 7}, first = {0, 1, 4, 5}, second = {2, 3, 6, 7};
    v4 t0 = __builtin_shuffle(a0, a1, lo), t1 = __builtin_shuffle(a0, a1, hi);
    v4 t2 = __builtin_shuffle(a2, a3, lo), t3 = __builtin_shuffle(a2, a3, hi);
    c[0] = __builtin_shuffle(t0, t2, first);
    c[1] = __builtin_shuffle(t1, t3, first);
    c[2] = __builtin_shuffle(t0, t2, second);
    c[3] = __builtin_shuffle(t1, t3, second);
}

/* The centred row x − mean into c and its lanes of (x − mean)·β: lane k mod 4 adds the terms k
 * of the first p4 columns (whole 4-vectors), then, with `tail`, the row's last four columns
 * times `last` (β where not yet added, else 0); p < 4 one column at a time. Into out. */
static inline __attribute__((always_inline)) void centre_row(const double *x,
                                                             const double *mean,
                                                             const double *bp, double *c,
                                                             Py_ssize_t p4, Py_ssize_t p,
                                                             int tail, const v4 *last,
                                                             v4 *out) {
    /* the loads are of x, not of c just stored (no store-to-load stall) */
    v4 acc = {0.0, 0.0, 0.0, 0.0}, u, mk, b;
    Py_ssize_t k = 0;
    for (; k < p4; k += 4) {
        LOAD4(u, x + k);
        LOAD4(mk, mean + k);
        LOAD4(b, bp + k);
        u -= mk;
        STORE4(c + k, u);
        acc += u * b;
    }
    if (tail) {
        LOAD4(u, x + p - 4);
        LOAD4(mk, mean + p - 4);
        u -= mk;
        STORE4(c + p - 4, u);
        acc += u * *last;
    } else {
        for (; k < p; k++) {   /* p < 4 */
            double ck = x[k] - mean[k];
            c[k] = ck;
            acc[k & 3] += ck * bp[k];
        }
    }
    *out = acc;
}

/* The m rows (zero rows to a whole block past them) of RB rows of the re-laid copy P (see
 * pack_rows), centred: each row's bin (D for deaths, else L, at b − 1) and, entering late, its
 * bin in E at a − 1 (else NULL), after checking the slot (and a) lie on the grid; their
 * xβ − shift into eta, its min and max into lov, hiv (whole blocks) or lo, hi; and each row's
 * z = (1, x, zeros) from its columns transposed four at a time. Returns 1 at a bad row.
 * xβ takes the operations of centre_row and the transposition of its lanes, in their order:
 * sum l adds the columns k ≡ l mod 4 of whole 4-vectors, then the last p mod 4 columns
 * (p ≥ 4) go into the last sums (where centre_row adds x·0 to the others: exactly nothing,
 * as no sum is −0), then the sums in order. No shuffles for xβ, no centring, no row
 * addresses. */
static inline __attribute__((always_inline)) int packed_rows(
    const rows_t *s, const double *P, Py_ssize_t p, const double *bp, double *z, Py_ssize_t qq,
    Py_ssize_t m, double shift, double *eta, v4 *lov, v4 *hiv, double *lo, double *hi,
    const double *stop, double **bins, double **lates, double *D, double *L, double *E,
    Py_ssize_t cells, Py_ssize_t row0) {
    Py_ssize_t p4 = p & ~(Py_ssize_t)3;
    const v4 sh = {shift, shift, shift, shift};
    const uint64_t slots = 2 * (uint64_t)s->G;
    for (Py_ssize_t g = 0; g < m; g += 4) {
        const double *blk = P + g / 4 * STRIDE(p);
        double *zr = z + g * qq + 1;
        /* the next block's rows, fetched while this block's exp and bins run */
        for (Py_ssize_t l = 0; l < STRIDE(p); l += 8)
            if (blk + RB / 4 * STRIDE(p) + l < stop)
                __builtin_prefetch(blk + RB / 4 * STRIDE(p) + l, 0, 3);
        for (Py_ssize_t l = 0; l < 4 && g + l < m; l++) {
            int64_t slot;
            memcpy(&slot, blk + 4 * p + l, sizeof slot);
            uint64_t at = (uint64_t)(slot & ~LATE_SLOT);
            if (at >= slots) return 1;
            bins[g + l] = ((at & 1) ? D : L) + (Py_ssize_t)(at >> 1) * cells;
            __builtin_prefetch(bins[g + l], 1, 3);
            lates[g + l] = NULL;
            if (slot & LATE_SLOT) {   /* 1 ≤ a < b */
                int64_t a = s->a ? s->a[row0 + g + l] : 0;
                if ((uint64_t)(a - 1) >= (at >> 1)) return 1;
                lates[g + l] = E + (a - 1) * cells;
            }
        }
        v4 a[4] = {{0.0, 0.0, 0.0, 0.0}, {0.0, 0.0, 0.0, 0.0}, {0.0, 0.0, 0.0, 0.0},
                   {0.0, 0.0, 0.0, 0.0}}, x;
        Py_ssize_t k = 0;
        for (; k < p4; k += 4) {
            for (int j = 0; j < 4; j++) {
                LOAD4(x, blk + 4 * (k + j));
                a[j] += x * bp[k + j];
            }
            v4 c[4];
            transpose4(blk + 4 * k, blk + 4 * (k + 1), blk + 4 * (k + 2), blk + 4 * (k + 3), c);
            STORE4(zr + k, c[0]);
            STORE4(zr + qq + k, c[1]);
            STORE4(zr + 2 * qq + k, c[2]);
            STORE4(zr + 3 * qq + k, c[3]);
        }
        if (p >= 4 && k < p) {   /* the last columns into the last sums; z from the last four */
            for (; k < p; k++) {
                LOAD4(x, blk + 4 * k);
                a[k - p + 4] += x * bp[k];
            }
            v4 c[4];
            transpose4(blk + 4 * (p - 4), blk + 4 * (p - 3), blk + 4 * (p - 2),
                       blk + 4 * (p - 1), c);
            STORE4(zr + p - 4, c[0]);
            STORE4(zr + qq + p - 4, c[1]);
            STORE4(zr + 2 * qq + p - 4, c[2]);
            STORE4(zr + 3 * qq + p - 4, c[3]);
        } else {   /* p < 4 */
            for (; k < p; k++) {
                LOAD4(x, blk + 4 * k);
                a[k] += x * bp[k];
                for (int l = 0; l < 4; l++) zr[l * qq + k] = x[l];
            }
        }
        v4 e = (a[0] + a[1]) + (a[2] + a[3]);
        if (g + 4 <= m) {
            v4i below = e < *lov, above = e > *hiv;   /* false for NaN */
            *lov = (v4)(((v4i)e & below) | ((v4i)*lov & ~below));
            *hiv = (v4)(((v4i)e & above) | ((v4i)*hiv & ~above));
        } else {
            for (Py_ssize_t l = 0; l < m - g; l++) {
                if (e[l] < *lo) *lo = e[l];
                if (e[l] > *hi) *hi = e[l];
            }
        }
        e -= sh;
        STORE4(eta + g, e);
    }
    return 0;
}

/* Doubles per grid point in add_outer's bin of `rows` rows, for p covariates. */
static Py_ssize_t bin_cells(Py_ssize_t p, Py_ssize_t rows) {
    Py_ssize_t qq = (p + 4) & ~(Py_ssize_t)3, cells = 0;
    for (Py_ssize_t k = 0; k < rows; k++) cells += qq - (k & ~(Py_ssize_t)3);
    return cells;
}


/* Rows start … start + m − 1 of a block of pass 1 (the caller's rows): each checked, its bin
 * (D for deaths, else L, at b − 1) and, entering late, its bin in E at a − 1 (else NULL), the
 * centred row into z (after its leading 1) and the lanes of its xβ into accs (centre_row).
 * Returns 1 at a bad row. */
static inline __attribute__((always_inline)) int centre_rows(
    const rows_t *s, Py_ssize_t start, Py_ssize_t m, const double *bp, double *z,
    Py_ssize_t p4, Py_ssize_t p, int tail, const v4 *last, v4 *accs, double **bins,
    double **lates, double *D, double *L, double *E, Py_ssize_t cells) {
    Py_ssize_t qq = p4 + 4;   /* (p + 4) & ~3 */
    const int own = !s->nkeep;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (bad_row(s, start + i)) return 1;
        const double *x = row_of(s, start + i);
        if (start + i + RB < s->n)   /* the next block's row, fetched meanwhile */
            fetch_row(s, own, start + i + RB, p);
        /* the row's bin, wanted again after the block's exp: fetched into L1 meanwhile */
        bins[i] = ((s->flags[start + i] & DEAD) ? D : L) + (s->b[start + i] - 1) * cells;
        __builtin_prefetch(bins[i], 1, 3);
        lates[i] = (s->flags[start + i] & LATE) ? E + (s->a[start + i] - 1) * cells : NULL;
        centre_row(x, s->mean, bp, z + i * qq + 1, p4, p, tail, last, accs + i);
    }
    return 0;
}

/* r = w exp(xβ − shift) of the block's m rows into r (eta holds the exps; w = 1 where unit),
 * and r z zᵀ of each (add_outer: `rows` rows; 1, the bins (r, r x)) into its bins. */
static inline __attribute__((always_inline)) void add_bins(const rows_t *s, Py_ssize_t start,
                                                           Py_ssize_t m, int unit,
                                                           const double *eta, double *r,
                                                           const double *z, Py_ssize_t qq,
                                                           Py_ssize_t rows, double **bins,
                                                           double **lates) {
    for (Py_ssize_t i = 0; i < m; i++) {
        Py_ssize_t row = start + i;
        double ri = unit ? eta[i] : eta[i] * s->w[row];
        r[row] = ri;
        double *bin = bins[i];
        if (rows == 1) {   /* the bins: (r, r x), r times z's first entry 1 */
            v4 rv = {ri, ri, ri, ri}, y, w;
            for (Py_ssize_t j = 0; j < qq; j += 4) {
                LOAD4(y, z + i * qq + j);
                LOAD4(w, bin + j);
                w += rv * y;
                STORE4(bin + j, w);
            }
        } else {
            add_outer(bin, z + i * qq, ri, rows, qq);
        }
        if (lates[i]) add_outer(lates[i], z + i * qq, ri, rows, qq);
    }
}

/* Rows i: r_i = w_i exp(x_i β − shift) into r; r z zᵀ (add_outer, `rows` rows: 1 for the
 * bins (r, r x), 1 + p for buckets that hold r x xᵀ too) added into grid point b−1 of D
 * (deaths) or L and, for late entries, grid point a−1 of E (each G × `cells`). Min and max of
 * xβ into lohi. Rows in blocks of RB: z and xβ for the block (four columns at a time, lane
 * k mod 4 adding the terms k, then the lanes in order), exp four rows at a time, then the
 * bins. z: (RB + 1) × qq doubles, zero. Returns 1 at a bad row. */
CLONES static int pass1_rows(const rows_t *s, const double *beta, int unit, double shift,
                             double *r, double *D, double *L, double *E, Py_ssize_t rows,
                             Py_ssize_t cells, double *z, double *lohi) {
    Py_ssize_t p = s->p, qq = (p + 4) & ~(Py_ssize_t)3, p4 = p & ~(Py_ssize_t)3;
    double lo = INFINITY, hi = -INFINITY, eta[RB];
    v4 accs[RB], last = {0.0, 0.0, 0.0, 0.0};
    double *bins[RB], *lates[RB];
    const v4 inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    v4 lov = inf, hiv = -inf;
    const double *bp = beta;
    /* the last columns (p ≥ 4, p not a multiple of 4): the row's last four, the lanes of those
     * already summed times 0 (exactly 0 for finite x) */
    int tail = p4 < p && p >= 4;
    for (Py_ssize_t l = 0; l < 4 && tail; l++) last[l] = p - 4 + l >= p4 ? bp[p - 4 + l] : 0.0;
    for (Py_ssize_t i = 0; i < RB; i++) z[i * qq] = 1.0;
    /* β = 0 (a fit's first evaluation), unshifted: xβ is ±0 for finite x and exp(±0) is 1, so
     * r = w exactly without xβ's lanes or exp (the same bits) */
    int zero = shift == 0.0 && !s->P;
    for (Py_ssize_t k = 0; k < p && zero; k++) zero = bp[k] == 0.0;
    for (Py_ssize_t start = 0; start < s->n; start += RB) {
        Py_ssize_t m = s->n - start < RB ? s->n - start : RB;
        if (s->P) {   /* the re-laid copy: centred, four rows per block, no shuffles for xβ */
            const double *stop = s->P + (s->n + 3) / 4 * STRIDE(p),
                         *P = s->P + start / 4 * STRIDE(p);
            int bad;
            switch (p) {   /* the usual widths with their loops unrolled */
#define PACKED(width) packed_rows(s, P, width, bp, z, qq, m, shift, eta, &lov, &hiv, &lo, &hi, \
                                  stop, bins, lates, D, L, E, cells, start)
            case 4: bad = PACKED(4); break;
            case 5: bad = PACKED(5); break;
            case 8: bad = PACKED(8); break;
            case 10: bad = PACKED(10); break;
            case 12: bad = PACKED(12); break;
            default: bad = PACKED(p);
#undef PACKED
            }
            if (bad) return 1;
        } else {
            int bad;
            switch (p4) {   /* the usual widths with their loops unrolled */
#define ROWS(width) centre_rows(s, start, m, bp, z, width, p, tail, &last, accs, bins, lates, \
                                D, L, E, cells)
            case 4: bad = ROWS(4); break;
            case 8: bad = ROWS(8); break;
            case 12: bad = ROWS(12); break;
            default: bad = ROWS(p4);
#undef ROWS
            }
            if (bad) return 1;
            /* xβ of four rows at a time: their lanes transposed, then added in order */
            Py_ssize_t i = 0;
            if (zero) {
                for (; i < m; i++) eta[i] = 1.0;   /* exp(0): no exp below */
                if (m) lo = hi = 0.0;   /* (every xβ is +0) */
            }
            for (; i + 4 <= m; i += 4) {
                v4 t[4], sh = {shift, shift, shift, shift};
                transpose4((const double *)(accs + i), (const double *)(accs + i + 1),
                           (const double *)(accs + i + 2), (const double *)(accs + i + 3), t);
                v4 e = (t[0] + t[1]) + (t[2] + t[3]);
                v4i below = e < lov, above = e > hiv;   /* false for NaN */
                lov = (v4)(((v4i)e & below) | ((v4i)lov & ~below));
                hiv = (v4)(((v4i)e & above) | ((v4i)hiv & ~above));
                e -= sh;
                STORE4(eta + i, e);
            }
            for (; i < m; i++) {
                double e = TOTAL4(accs[i]);
                if (e < lo) lo = e;
                if (e > hi) hi = e;
                eta[i] = e - shift;
            }
            for (i = m; i < RB; i++) eta[i] = 0.0;
        }
        for (Py_ssize_t i = 0; i < m && !zero; i += 4) exp4(eta + i);
        switch (qq) {   /* the usual widths with their loops unrolled */
#define BINS(width) add_bins(s, start, m, unit, eta, r, z, width, rows, bins, lates)
        case 8: BINS(8); break;
        case 12: BINS(12); break;
        case 16: BINS(16); break;
        default: BINS(qq);
#undef BINS
        }
    }
    for (int l = 0; l < 4; l++) {
        if (lov[l] < lo) lo = lov[l];
        if (hiv[l] > hi) hi = hiv[l];
    }
    lohi[0] = lo;
    lohi[1] = hi;
    return 0;
}

/* acc (nb) = Σ_g L2[g] wl_g + D2[g] wd_g − E2[g] wl_g with wl_g = cum[g+1]·scale and wd_g =
 * (cum[g+1] − e[g])·scale (≤ 0 by rounding: 0): pass 2's Σ r v z zᵀ from pass 1's buckets
 * (G × nb each). */
CLONES static void bucket_rows(Py_ssize_t G, Py_ssize_t nb, const double *D2, const double *L2,
                               const double *E2, const double *cum, const double *e,
                               double scale, double *acc) {
    for (Py_ssize_t g = 0; g < G; g++) {
        double wl = cum[g + 1] * scale, wd = (cum[g + 1] - e[g]) * scale;
        if (wd <= 0.0) wd = 0.0;
        const double *l = L2 + g * nb, *d = D2 + g * nb, *x = E2 ? E2 + g * nb : NULL;
        if (x)
            for (Py_ssize_t c = 0; c < nb; c++) acc[c] += (l[c] * wl + d[c] * wd) - x[c] * wl;
        else
            for (Py_ssize_t c = 0; c < nb; c++) acc[c] += l[c] * wl + d[c] * wd;
    }
}

/* acc (p × p, upper triangle) += Σ_i T[k][i] T[j][i] over the m rows (a multiple of 4) of a
 * (p, BLOCK) block: four lanes per dot product; rows k in pairs, each pair's dot products
 * with four rows j at a time sharing the loads (eight sums in registers); the lanes added in
 * a fixed order. */
static inline __attribute__((always_inline)) void block_outer(const double *T, Py_ssize_t p,
                                                              Py_ssize_t m, double *acc) {
    Py_ssize_t k = 0;
    for (; k + 1 < p; k += 2) {
        const double *tk = T + k * BLOCK, *tl = tk + BLOCK;
        /* (k, k) and (k, k + 1) and (k + 1, k + 1) */
        {
            v4 s0 = {0}, s1 = {0}, s2 = {0}, x, y;
            for (Py_ssize_t i = 0; i < m; i += 4) {
                LOAD4(x, tk + i);
                LOAD4(y, tl + i);
                s0 += x * x;
                s1 += x * y;
                s2 += y * y;
            }
            acc[k * p + k] += TOTAL4(s0);
            acc[k * p + k + 1] += TOTAL4(s1);
            acc[(k + 1) * p + k + 1] += TOTAL4(s2);
        }
        Py_ssize_t j = k + 2;
        for (; j + 3 < p; j += 4) {
            const double *t0 = T + j * BLOCK;
            v4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
            v4 x, u, y;
            for (Py_ssize_t i = 0; i < m; i += 4) {
                LOAD4(x, tk + i);
                LOAD4(u, tl + i);
                LOAD4(y, t0 + i);
                a0 += x * y;
                b0 += u * y;
                LOAD4(y, t0 + BLOCK + i);
                a1 += x * y;
                b1 += u * y;
                LOAD4(y, t0 + 2 * BLOCK + i);
                a2 += x * y;
                b2 += u * y;
                LOAD4(y, t0 + 3 * BLOCK + i);
                a3 += x * y;
                b3 += u * y;
            }
            acc[k * p + j] += TOTAL4(a0);
            acc[k * p + j + 1] += TOTAL4(a1);
            acc[k * p + j + 2] += TOTAL4(a2);
            acc[k * p + j + 3] += TOTAL4(a3);
            acc[(k + 1) * p + j] += TOTAL4(b0);
            acc[(k + 1) * p + j + 1] += TOTAL4(b1);
            acc[(k + 1) * p + j + 2] += TOTAL4(b2);
            acc[(k + 1) * p + j + 3] += TOTAL4(b3);
        }
        if (j + 1 < p) {   /* two rows j left: four sums, each load used twice */
            const double *t0 = T + j * BLOCK;
            v4 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, x, u, y;
            for (Py_ssize_t i = 0; i < m; i += 4) {
                LOAD4(x, tk + i);
                LOAD4(u, tl + i);
                LOAD4(y, t0 + i);
                a0 += x * y;
                b0 += u * y;
                LOAD4(y, t0 + BLOCK + i);
                a1 += x * y;
                b1 += u * y;
            }
            acc[k * p + j] += TOTAL4(a0);
            acc[k * p + j + 1] += TOTAL4(a1);
            acc[(k + 1) * p + j] += TOTAL4(b0);
            acc[(k + 1) * p + j + 1] += TOTAL4(b1);
            j += 2;
        }
        for (; j < p; j++) {
            const double *t0 = T + j * BLOCK;
            v4 a0 = {0}, b0 = {0}, x, u, y;
            for (Py_ssize_t i = 0; i < m; i += 4) {
                LOAD4(x, tk + i);
                LOAD4(u, tl + i);
                LOAD4(y, t0 + i);
                a0 += x * y;
                b0 += u * y;
            }
            acc[k * p + j] += TOTAL4(a0);
            acc[(k + 1) * p + j] += TOTAL4(b0);
        }
    }
    if (k < p) {   /* the last row of an odd p: its diagonal */
        const double *tk = T + k * BLOCK;
        v4 s0 = {0}, x;
        for (Py_ssize_t i = 0; i < m; i += 4) {
            LOAD4(x, tk + i);
            s0 += x * x;
        }
        acc[k * p + k] += TOTAL4(s0);
    }
}

/* Row i's weight t = r_i v·scale in pass 2 from its grid slot `at` (2(b − 1) + dead) and
 * whether it enters late: v = cum[b] − cum[a] (less e[b − 1] for a death) for a late entry,
 * else the table W[at + 2] (W[2b + dead], the same operations done once per grid point).
 * Returns 1 at a slot past the grid (at ≥ slots = 2G) or a late entry outside 1 ≤ a < b. */
static inline __attribute__((always_inline)) int slot_weight(const rows_t *s, Py_ssize_t i,
                                                             uint64_t at, int late,
                                                             uint64_t slots, const double *r,
                                                             const double *cum,
                                                             const double *e, double scale,
                                                             const double *W, double *t) {
    if (at >= slots) return 1;
    if (late) {   /* 1 ≤ a < b */
        int64_t a = s->a ? s->a[i] : 0, b = (int64_t)(at >> 1) + 1;
        if ((uint64_t)(a - 1) >= (uint64_t)(b - 1)) return 1;
        double v = cum[b] - cum[a];
        if (at & 1) v -= e[b - 1];
        *t = r[i] * (v * scale);
    } else {
        *t = r[i] * W[at + 2];
    }
    return 0;
}

/* T (p, BLOCK) = √t·(x − mean) of the rows lo … end of the re-laid copy with t > 0 (a NaN
 * kept), in order, zero rows to whole 4-vectors, and their count (so padded) in *m: the T
 * that pass2_rows forms from the caller's rows, but where every row is kept (the usual case)
 * each four rows' column is one multiply, no transposition. Returns 1 at a bad row. */
static inline __attribute__((always_inline)) int packed_block(const rows_t *s, Py_ssize_t lo,
                                                              Py_ssize_t end, const double *r,
                                                              const double *cum,
                                                              const double *e, double scale,
                                                              const double *W, double *tt,
                                                              double *T, Py_ssize_t *m) {
    Py_ssize_t p = s->p, n = end - lo, all = 1;
    const uint64_t slots = 2 * (uint64_t)s->G;
    for (Py_ssize_t i = lo; i < end; i++) {
        int64_t slot;
        memcpy(&slot, s->P + i / 4 * STRIDE(p) + 4 * p + i % 4, sizeof slot);
        double t;
        if (slot_weight(s, i, (uint64_t)(slot & ~LATE_SLOT), (slot & LATE_SLOT) != 0, slots, r,
                        cum, e, scale, W, &t))
            return 1;
        all &= !(t <= 0.0);
        tt[i - lo] = t;
    }
    if (all) {
        for (Py_ssize_t i = n; i % 4; i++) tt[i] = 0.0;   /* the copy's zero rows */
        const double *blk = s->P + lo / 4 * STRIDE(p);
        /* the next block's rows, fetched while this block's products run (the copy ends at
         * a whole block: no fetch past it) */
        const char *ahead = (const char *)(blk + BLOCK / 4 * STRIDE(p)),
                   *stop = (const char *)(s->P + (s->n + 3) / 4 * STRIDE(p));
        for (Py_ssize_t g = 0; g < n; g += 4, blk += STRIDE(p)) {
            v4 t, x;
            for (int l = 0; l < STRIDE(p) * 8; l += 64, ahead += 64)
                if (ahead < stop) __builtin_prefetch(ahead, 0, 3);
            LOAD4(t, tt + g);
            for (int l = 0; l < 4; l++) t[l] = __builtin_sqrt(t[l]);
            for (Py_ssize_t k = 0; k < p; k++) {
                LOAD4(x, blk + 4 * k);
                x *= t;
                STORE4(T + k * BLOCK + g, x);
            }
        }
        *m = (n + 3) & ~(Py_ssize_t)3;
        return 0;
    }
    Py_ssize_t k4 = 0;
    for (Py_ssize_t i = lo; i < end; i++) {   /* rows with t ≤ 0 left out, one value at a time */
        double t = tt[i - lo];
        if (t <= 0.0) continue;
        t = __builtin_sqrt(t);
        const double *x = s->P + i / 4 * STRIDE(p) + (i & 3);
        for (Py_ssize_t k = 0; k < p; k++) T[k * BLOCK + k4] = x[4 * k] * t;
        k4++;
    }
    for (; k4 % 4; k4++)
        for (Py_ssize_t k = 0; k < p; k++) T[k * BLOCK + k4] = 0.0;
    *m = k4;
    return 0;
}

/* Rows lo … hi of the kept rows (keep empty: X's rows), centred, into out in blocks of four
 * rows — block j holds column k's four rows at out[j STRIDE(p) + 4k …], then their slots from
 * b and flags (b and flags of the kept rows, indexed as keep) — with zero rows to a whole block
 * (x − mean with x = mean, slot 0): the layout that pass 1 and pass 2 read where the fit keeps
 * a re-laid copy (cox_cpu.packs; they check each slot). Returns 1 at a row index past X. */
CLONES static int pack_rows(const rows_t *s, Py_ssize_t lo, Py_ssize_t hi, double *out) {
    Py_ssize_t p = s->p, p4 = p & ~(Py_ssize_t)3;
    for (Py_ssize_t i = lo; i < hi; i += 4) {
        double *blk = out + (i - lo) / 4 * STRIDE(p);
        const double *x[4];
        for (Py_ssize_t l = 0; l < 4; l++) {
            int64_t slot = 0;
            if (i + l >= hi) {
                x[l] = s->mean;
            } else {
                if (s->nkeep && (uint64_t)s->keep[i + l] >= (uint64_t)s->rows) return 1;
                x[l] = row_of(s, i + l);
                uint8_t f = s->flags[i + l];
                slot = 2 * (s->b[i + l] - 1) + (f & DEAD) + ((f & LATE) ? LATE_SLOT : 0);
            }
            memcpy(blk + 4 * p + l, &slot, sizeof slot);
        }
        Py_ssize_t k = 0;
        for (; k < p4; k += 4) {
            v4 c[4], mk;
            transpose4(x[0] + k, x[1] + k, x[2] + k, x[3] + k, c);
            for (int j = 0; j < 4; j++) {
                double mj = s->mean[k + j];
                mk = (v4){mj, mj, mj, mj};
                c[j] -= mk;
                STORE4(blk + 4 * (k + j), c[j]);
            }
        }
        for (; k < p; k++)
            for (int l = 0; l < 4; l++) blk[4 * k + l] = x[l][k] - s->mean[k];
    }
    return 0;
}

/* acc (p × p, upper) = Σ_i t_i x_i x_iᵀ, t_i = r_i v_i scale with v_i = cum[b] − cum[a] (cum[a]
 * only for late entries), less e[b − 1] for deaths; t ≤ 0 (rounding) counts as 0, a NaN goes
 * on. v·scale of the rows that do not enter late from a table W (2(G + 1) doubles) by b and
 * death. Rows in blocks: the block's t (rows with t > 0 kept, in order), then T = √t·(x − mean)
 * transposed four rows × four columns at a time by shuffles (padded with zero rows to whole
 * 4-vectors), then T Tᵀ. Returns 1 at a bad row. */
CLONES static int pass2_rows(const rows_t *s, const double *r, const double *cum,
                             const double *e, double scale, double *T, double *acc,
                             double *W) {
    /* W[2b + dead]: v·scale of a row that does not enter late, by its b and whether it dies */
    for (Py_ssize_t b = 1; b <= s->G; b++) {
        W[2 * b] = cum[b] * scale;
        W[2 * b + 1] = (cum[b] - e[b - 1]) * scale;
    }
    Py_ssize_t p = s->p, p4 = p & ~(Py_ssize_t)3;
    double tt[BLOCK];
    const double *xs[BLOCK];
    Py_ssize_t ix[BLOCK];
    for (Py_ssize_t lo = 0; lo < s->n; lo += BLOCK) {
        Py_ssize_t m = 0, end = lo + BLOCK < s->n ? lo + BLOCK : s->n;
        if (s->P) {
            if (packed_block(s, lo, end, r, cum, e, scale, W, tt, T, &m)) return 1;
            block_outer(T, p, m, acc);
            continue;
        }
        if (s->slot) {   /* the same t from the slot: W[2b + dead] is W[slot + 2] */
            const uint64_t slots = 2 * (uint64_t)s->G;
            for (Py_ssize_t i = lo; i < end; i++) {
                uint32_t sl = s->slot[i];
                double t;
                if (slot_weight(s, i, sl & ~SLOT_LATE, (sl & SLOT_LATE) != 0, slots, r, cum, e,
                                scale, W, &t))
                    return 1;
                if (t <= 0.0) continue;
                tt[m] = t;
                ix[m++] = i;
            }
            if (s->nkeep) {   /* the kept rows' rows of X, checked */
                for (Py_ssize_t j = 0; j < m; j++) {
                    int64_t k = s->keep[ix[j]];
                    if ((uint64_t)k >= (uint64_t)s->rows) return 1;
                    xs[j] = s->X + k * p;
                }
            } else {
                for (Py_ssize_t j = 0; j < m; j++) xs[j] = s->X + ix[j] * p;
            }
        } else
        for (Py_ssize_t i = lo; i < end; i++) {
            if (bad_row(s, i)) return 1;
            uint8_t f = s->flags[i];
            double t;
            if (f & LATE) {
                double v = cum[s->b[i]] - cum[s->a[i]];
                if (f & DEAD) v -= e[s->b[i] - 1];
                t = r[i] * (v * scale);
            } else {   /* v·scale from the table: the same operations, done once per grid point */
                t = r[i] * W[2 * s->b[i] + (f & DEAD)];
            }
            if (t <= 0.0) continue;
            tt[m] = t;
            xs[m++] = row_of(s, i);
        }
        for (; m % 4; m++) {   /* zero rows: (mean − mean)·0 adds exactly 0 */
            tt[m] = 0.0;
            xs[m] = s->mean;
        }
        for (Py_ssize_t i = 0; i < m; i += 4) {
            /* the next block's rows, fetched while this block's products run */
            for (Py_ssize_t j = lo + BLOCK + i; j < lo + BLOCK + i + 4 && j < s->n; j++) {
                __builtin_prefetch(row_ahead(s, j), 0, 3);
                __builtin_prefetch(row_ahead(s, j) + p - 1, 0, 3);
            }
            v4 t;
            LOAD4(t, tt + i);
            for (int l = 0; l < 4; l++) t[l] = __builtin_sqrt(t[l]);
            Py_ssize_t k = 0;
            for (; k < p4; k += 4) {
                v4 c[4];
                transpose4(xs[i] + k, xs[i + 1] + k, xs[i + 2] + k, xs[i + 3] + k, c);
                for (int j = 0; j < 4; j++) {
                    double mk = s->mean[k + j];
                    v4 mv = {mk, mk, mk, mk}, y = (c[j] - mv) * t;
                    STORE4(T + (k + j) * BLOCK + i, y);
                }
            }
            for (; k < p; k++) {
                double mk = s->mean[k];
                v4 c = {xs[i][k], xs[i + 1][k], xs[i + 2][k], xs[i + 3][k]};
                v4 mv = {mk, mk, mk, mk}, y = (c - mv) * t;
                STORE4(T + k * BLOCK + i, y);
            }
        }
        block_outer(T, p, m, acc);
    }
    return 0;
}

/* Efron's terms per grid point j with m_j deaths of total weight dw_j: the k-th of them
 * (k = 0 … m_j − 1, f = k / m_j) sees den = S0_j − f E0_j and weighs dw_j / m_j. Into c, e,
 * alpha, beta, gamma: Σ w/den, Σ w f/den, Σ w/den², Σ w f/den², Σ w f²/den²; returns
 * Σ w log den, and sets *bad when some den is below ``under`` (the sums are unusable). */
/* x = m 2^e with m in [0.5, 1) for a positive normal x: returns m, adds e to *e. */
static inline double split_exponent(double x, int64_t *e) {
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    *e += (int64_t)((bits >> 52) & 0x7ff) - 1022;
    bits = (bits & ~(0x7ffULL << 52)) | (1022ULL << 52);
    memcpy(&x, &bits, sizeof x);
    return x;
}

CLONES static double efron_rows(Py_ssize_t G, const double *s0, const double *e0,
                                const double *m, const double *dw, double under, double *c,
                                double *e, double *alpha, double *beta, double *gamma,
                                int *bad) {
    const v4 lane = {0.0, 1.0, 2.0, 3.0}, one = {1.0, 1.0, 1.0, 1.0};
    const v4 small = {1e-150, 1e-150, 1e-150, 1e-150}, large = {1e150, 1e150, 1e150, 1e150};
    const v4i expo = {0x7ffLL << 52, 0x7ffLL << 52, 0x7ffLL << 52, 0x7ffLL << 52};
    const v4i half = {1022LL << 52, 1022LL << 52, 1022LL << 52, 1022LL << 52};
    double ll = 0.0;
    for (Py_ssize_t j = 0; j < G; j++) {
        double mj = m[j], sc = 0.0, se = 0.0, sa = 0.0, sb = 0.0, sg = 0.0, sl = 0.0;
        if (mj > 0.0) {
            double meanwt = dw[j] / mj, step = 1.0 / mj;
            int64_t deaths = (int64_t)mj;
            /* the deaths four at a time (lane l: k = 4i + l; lanes past the deaths weigh 0
             * and see den 1); Σ log den as the log of a running product per lane, kept in
             * [0.5, 1) × 2^pexp (a log per grid point, not per death); a den outside
             * [1e-150, 1e150] is logged on its own, so no product overflows or underflows */
            v4 vc = {0}, ve = {0}, va = {0}, vb = {0}, vg = {0}, prod = one;
            v4i pexp = {0};
            for (int64_t k0 = 0, it = 0; k0 < deaths; k0 += 4, it++) {
                v4 kv = lane + (double)k0;
                v4i real = kv < mj;
                v4 f = kv * step;
                v4 den = s0[j] - f * e0[j];
                den = (v4)(((v4i)den & real) | ((v4i)one & ~real));
                v4i ok = den >= under;
                if ((ok[0] & ok[1] & ok[2] & ok[3]) == 0) *bad = 1;
                v4i inside = (den >= small) & (den <= large);
                if ((inside[0] & inside[1] & inside[2] & inside[3]) == 0)
                    for (int l = 0; l < 4; l++)
                        if (!inside[l]) sl += log(den[l]);
                prod *= (v4)(((v4i)den & inside) | ((v4i)one & ~inside));
                if (it & 1) {   /* prod = mantissa in [0.5, 1) times 2^(its exponent) */
                    v4i bits = (v4i)prod;
                    pexp += ((bits >> 52) & 0x7ff) - 1022;
                    prod = (v4)((bits & ~expo) | half);
                }
                v4 inv = 1.0 / den;
                v4 w0 = (v4)((v4i)(meanwt * inv) & real), w1 = w0 * f, w3 = w1 * inv;
                vc += w0;
                ve += w1;
                va += w0 * inv;
                vb += w3;
                vg += w3 * f;
            }
            int64_t total = 0;
            double pr = 1.0;
            for (int l = 0; l < 4; l++) {
                pr *= split_exponent(prod[l], &total);
                total += pexp[l];
            }
            sl += log(pr) + (double)total * 0.6931471805599453;
            sc = TOTAL4(vc);
            se = TOTAL4(ve);
            sa = TOTAL4(va);
            sb = TOTAL4(vb);
            sg = TOTAL4(vg);
            ll += meanwt * sl;
        }
        c[j] = sc;
        e[j] = se;
        alpha[j] = sa;
        beta[j] = sb;
        gamma[j] = sg;
    }
    return ll;
}

/* The grid parts of the score and the information from the risk-set sums S1, E1 (G, p) and
 * the per-grid-point weights: score = Σ_j c_j S1_j − e_j E1_j and the upper triangle of
 * outer = Σ_j α_j S1_j S1_jᵀ − β_j (S1_j E1_jᵀ + E1_j S1_jᵀ) + γ_j E1_j E1_jᵀ. Without E1
 * (Breslow) only the c and α terms. */
CLONES static void grid_rows(Py_ssize_t G, Py_ssize_t p, const double *s1, const double *e1,
                             const double *c, const double *e, const double *alpha,
                             const double *beta, const double *gamma, double *score,
                             double *outer) {
    for (Py_ssize_t j = 0; j < G; j++) {
        const double *s = s1 + j * p;
        double cj = c[j], aj = alpha[j];
        if (!e1) {
            for (Py_ssize_t k = 0; k < p; k++) {
                score[k] += cj * s[k];
                double as = aj * s[k];
                for (Py_ssize_t l = k; l < p; l++) outer[k * p + l] += as * s[l];
            }
            continue;
        }
        const double *d = e1 + j * p;
        double ej = e[j], bj = beta[j], gj = gamma[j];
        for (Py_ssize_t k = 0; k < p; k++) {
            score[k] += cj * s[k] - ej * d[k];
            double as = aj * s[k], bs = bj * s[k], bd = bj * d[k], gd = gj * d[k];
            for (Py_ssize_t l = k; l < p; l++)
                outer[k * p + l] += (as * s[l] - (bs * d[l] + bd * s[l])) + gd * d[l];
        }
    }
    for (Py_ssize_t k = 0; k < p; k++)
        for (Py_ssize_t l = 0; l < k; l++) outer[k * p + l] = outer[l * p + k];
}

/* out = exp4 of x, four at a time (the tail through a zero-padded vector) */
CLONES static void exp_rows(Py_ssize_t n, const double *x, double *out) {
    Py_ssize_t i = 0;
    for (; i + 4 <= n; i += 4) {
        memcpy(out + i, x + i, 4 * sizeof(double));
        exp4(out + i);
    }
    if (i < n) {
        double tail[4] = {0.0, 0.0, 0.0, 0.0};
        memcpy(tail, x + i, (n - i) * sizeof(double));
        exp4(tail);
        memcpy(out + i, tail, (n - i) * sizeof(double));
    }
}

/* out[i] = the number of grid times ≤ t[i] (see day_ranks below); floor inlined where the clone
 * has it (exact in every clone, so the same ranks) */
CLONES static void day_rows(Py_ssize_t n, const double *t, double first, const int64_t *tab,
                            Py_ssize_t span, int64_t T, int64_t *o) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = __builtin_floor(t[i]) - first;
        o[i] = !(d >= 0.0) ? 0 : d >= (double)span ? T : tab[(Py_ssize_t)d];
    }
}

/* -- the Python functions ------------------------------------------------------------------ */

#define MAXBUF 16

typedef struct {
    Py_buffer b[MAXBUF];
    int used;
} buffers_t;

static void release_all(buffers_t *B) {
    for (int i = 0; i < B->used; i++) PyBuffer_Release(&B->b[i]);
    B->used = 0;
}

/* A C-contiguous buffer of ``obj`` of exactly ``count`` items of ``size`` bytes (count < 0:
 * any whole number of items, returned in *count_out). */
static void *take(buffers_t *B, PyObject *obj, Py_ssize_t size, Py_ssize_t count, int write,
                  const char *what, Py_ssize_t *count_out) {
    Py_buffer *v = &B->b[B->used];
    if (PyObject_GetBuffer(obj, v, (write ? PyBUF_WRITABLE : PyBUF_SIMPLE)) < 0) return NULL;
    B->used++;
    if (v->len % size || (count >= 0 && v->len != count * size)) {
        PyErr_Format(PyExc_ValueError, "_cox_c: %s has %zd bytes, not %zd items of %zd",
                     what, v->len, count, size);
        return NULL;
    }
    if (count_out) *count_out = v->len / size;
    return v->buf;
}

static PyObject *bad_index(void) {
    PyErr_SetString(PyExc_ValueError, "_cox_c: a grid or row index out of range");
    return NULL;
}

/* The partition's arrays: X (rows, p), keep (0 or n), mean (p), w (n), a (n, or None),
 * b (n), flags (n); G grid points. With `packed` and keep None, X is the re-laid copy of the
 * n rows (pack: n rounded up to 4 rows of p). */
static int take_rows(buffers_t *B, rows_t *s, PyObject *X, PyObject *keep, PyObject *mean,
                     PyObject *w, PyObject *a, PyObject *b, PyObject *flags, Py_ssize_t G,
                     int packed) {
    Py_ssize_t xn;
    s->G = G;
    s->P = NULL;
    s->slot = NULL;
    if (!(s->mean = take(B, mean, 8, -1, 0, "mean", &s->p))) return -1;
    if (!(s->b = take(B, b, 8, -1, 0, "b", &s->n))) return -1;
    if (s->p == 0) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: no covariates");
        return -1;
    }
    if (packed && keep == Py_None) {
        Py_ssize_t size = (s->n + 3) / 4 * STRIDE(s->p);
        if (!(s->P = take(B, X, 8, size, 0, "the re-laid copy", NULL))) return -1;
        s->X = NULL;
        s->keep = NULL;
        s->nkeep = 0;
        s->rows = s->n;
        goto per_row;
    }
    if (!(s->X = take(B, X, 8 * s->p, -1, 0, "X", &xn))) return -1;
    if (!(s->keep = take(B, keep, 8, -1, 0, "keep", &s->nkeep))) return -1;
    s->rows = xn;
    if (s->nkeep != 0 && s->nkeep != s->n) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: keep must be empty or one per row");
        return -1;
    }
    if (s->nkeep == 0 && xn != s->n) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: X must have one row per row");
        return -1;
    }
per_row:
    if (!(s->w = take(B, w, 8, s->n, 0, "w", NULL))) return -1;
    s->a = NULL;
    if (a != Py_None && !(s->a = take(B, a, 8, s->n, 0, "a", NULL))) return -1;
    if (!(s->flags = take(B, flags, 1, s->n, 0, "flags", NULL))) return -1;
    return 0;
}

/* pass1(X, keep, mean, beta, w, unit, a, b, flags, shift, r, dead, alive, late[, dead2,
 * alive2, late2]) -> (lo, hi): bins (G, 1 + p) added into. With dead2 (one pass per step):
 * buckets (G, bucket_cells(p)) of r z zᵀ, z = (1, x), added into as well (late2 is only
 * written where some row enters late and may then be alive2) */
static PyObject *pass1(PyObject *self, PyObject *args) {
    PyObject *X, *keep, *mean, *beta, *w, *a, *b, *flags, *r, *dead, *alive, *late;
    PyObject *dead2 = Py_None, *alive2 = Py_None, *late2 = Py_None;
    int unit;
    double shift, lohi[2];
    if (!PyArg_ParseTuple(args, "OOOOOpOOOdOOOO|OOO", &X, &keep, &mean, &beta, &w, &unit, &a,
                          &b, &flags, &shift, &r, &dead, &alive, &late, &dead2, &alive2,
                          &late2))
        return NULL;
    buffers_t B = {.used = 0};
    rows_t s;
    PyObject *out = NULL;
    double *z = NULL, *own = NULL, *D2 = NULL, *L2 = NULL, *E2 = NULL;
    Py_ssize_t cells;
    double *D = take(&B, dead, 8, -1, 1, "dead", &cells);
    if (!D || take_rows(&B, &s, X, keep, mean, w, a, b, flags, 0, 1) < 0) goto done;
    Py_ssize_t q = s.p + 1, qq = (s.p + 4) & ~(Py_ssize_t)3;
    s.G = cells / q;
    double *L = take(&B, alive, 8, s.G * q, 1, "alive", NULL);
    double *E = L ? take(&B, late, 8, s.G * q, 1, "late", NULL) : NULL;
    const double *bt = E ? take(&B, beta, 8, s.p, 0, "beta", NULL) : NULL;
    double *rr = bt ? take(&B, r, 8, s.n, 1, "r", NULL) : NULL;
    if (!rr) goto done;
    if (cells != s.G * q) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: the bins must be (G, 1 + p)");
        goto done;
    }
    Py_ssize_t rows = 1, nb = qq;
    if (dead2 != Py_None) {
        rows = q;
        nb = bin_cells(s.p, q);
        if (!(D2 = take(&B, dead2, 8, s.G * nb, 1, "dead2", NULL)) ||
            !(L2 = take(&B, alive2, 8, s.G * nb, 1, "alive2", NULL)) ||
            !(E2 = take(&B, late2, 8, s.G * nb, 1, "late2", NULL)))
            goto done;
    } else {   /* the bins padded to whole 4-vectors, aligned; no late entries without a (a
                * row flagged LATE is refused), so then no late bins to clear or add */
        if (!(own = aligned_zeros((s.a ? 3 : 2) * s.G * qq))) {
            PyErr_NoMemory();
            goto done;
        }
        D2 = own, L2 = own + s.G * qq, E2 = s.a ? own + 2 * s.G * qq : L2;
    }
    if (!(z = PyMem_Calloc((RB + 1) * qq, sizeof(double)))) {
        PyErr_NoMemory();
        goto done;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = pass1_rows(&s, bt, unit, shift, rr, D2, L2, E2, rows, nb, z, lohi);
    if (!bad) {   /* the bins: row 0 of each grid point's r z zᵀ */
        int three = E2 != L2;
        for (Py_ssize_t g = 0; g < s.G; g++)
            for (Py_ssize_t k = 0; k < q; k++) {
                D[g * q + k] += D2[g * nb + k];
                L[g * q + k] += L2[g * nb + k];
                if (three) E[g * q + k] += E2[g * nb + k];
            }
    }
    Py_END_ALLOW_THREADS
    out = bad ? bad_index() : Py_BuildValue("(dd)", lohi[0], lohi[1]);
done:
    PyMem_Free(z);
    free(own);
    release_all(&B);
    return out;
}

/* buckets(dead2, alive2, late2 or None, cum, e, scale, out): out (p, p) = Σ r v x xᵀ, as
 * pass2 gives it, from pass 1's buckets of r x xᵀ (see bucket_rows) */
static PyObject *buckets(PyObject *self, PyObject *args) {
    PyObject *dead2, *alive2, *late2, *cum, *e, *out;
    double scale;
    if (!PyArg_ParseTuple(args, "OOOOOdO", &dead2, &alive2, &late2, &cum, &e, &scale, &out))
        return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    double *acc = NULL;
    Py_ssize_t G = 0, pp2 = 0, cells = 0;
    const double *ee = take(&B, e, 8, -1, 0, "e", &G);
    double *o = ee ? take(&B, out, 8, -1, 1, "out", &pp2) : NULL;
    if (!o) goto done;
    Py_ssize_t p = 0;
    while ((p + 1) * (p + 1) <= pp2) p++;
    if (p == 0 || p * p != pp2) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: out must be (p, p)");
        goto done;
    }
    Py_ssize_t nb = bin_cells(p, p + 1);
    const double *C = take(&B, cum, 8, G + 1, 0, "cum", NULL);
    const double *D2 = C ? take(&B, dead2, 8, G * nb, 0, "dead2", &cells) : NULL;
    const double *L2 = D2 ? take(&B, alive2, 8, G * nb, 0, "alive2", NULL) : NULL;
    if (!L2) goto done;
    const double *E2 = NULL;
    if (late2 != Py_None && !(E2 = take(&B, late2, 8, G * nb, 0, "late2", NULL))) goto done;
    if (!(acc = PyMem_Calloc(nb, sizeof(double)))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    bucket_rows(G, nb, D2, L2, E2, C, ee, scale, acc);
    Py_END_ALLOW_THREADS
    /* rows and columns 1 … p of z zᵀ (z = (1, x)) */
    const double *u = acc;
    Py_ssize_t qq = (p + 4) & ~(Py_ssize_t)3;
    for (Py_ssize_t k = 0; k <= p; k++) {
        Py_ssize_t j0 = k & ~(Py_ssize_t)3;
        if (k)
            for (Py_ssize_t j = k; j <= p; j++)
                o[(k - 1) * p + j - 1] = o[(j - 1) * p + k - 1] = u[j - j0];
        u += qq - j0;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyMem_Free(acc);
    release_all(&B);
    return ret;
}

/* pack(X, keep, mean, b, flags, lo, hi, out): rows lo … hi of the kept rows (keep empty: of
 * X; b and flags of the kept rows), centred, into out ((hi − lo) / 4 rounded up blocks of
 * STRIDE(p) doubles): see pack_rows */
static PyObject *pack(PyObject *self, PyObject *args) {
    PyObject *X, *keep, *mean, *b, *flags, *out;
    Py_ssize_t lo, hi, xn, nb;
    if (!PyArg_ParseTuple(args, "OOOOOnnO", &X, &keep, &mean, &b, &flags, &lo, &hi, &out))
        return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    rows_t s = {.P = NULL};
    if (!(s.mean = take(&B, mean, 8, -1, 0, "mean", &s.p))) goto done;
    if (s.p == 0) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: no covariates");
        goto done;
    }
    if (!(s.X = take(&B, X, 8 * s.p, -1, 0, "X", &xn)) ||
        !(s.keep = take(&B, keep, 8, -1, 0, "keep", &s.nkeep)))
        goto done;
    s.rows = xn;
    if (!(s.b = take(&B, b, 8, -1, 0, "b", &nb)) ||
        !(s.flags = take(&B, flags, 1, nb, 0, "flags", NULL)))
        goto done;
    if (nb != (s.nkeep ? s.nkeep : xn)) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: b and flags must have one entry per row");
        goto done;
    }
    if (lo < 0 || lo > hi || hi > nb) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: rows lo … hi must lie within the rows");
        goto done;
    }
    double *o = take(&B, out, 8, (hi - lo + 3) / 4 * STRIDE(s.p), 1, "out", NULL);
    if (!o) goto done;
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = pack_rows(&s, lo, hi, o);
    Py_END_ALLOW_THREADS
    if (bad) {
        bad_index();
        goto done;
    }
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_all(&B);
    return ret;
}

/* exp(x, out): out = exp(x) as pass 1 computes it (exp4) */
static PyObject *exp_(PyObject *self, PyObject *args) {
    PyObject *x, *out;
    if (!PyArg_ParseTuple(args, "OO", &x, &out)) return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    Py_ssize_t n = 0;
    const double *xx = take(&B, x, 8, -1, 0, "x", &n);
    double *o = xx ? take(&B, out, 8, n, 1, "out", NULL) : NULL;
    if (!o) goto done;
    Py_BEGIN_ALLOW_THREADS
    exp_rows(n, xx, o);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_all(&B);
    return ret;
}

/* bucket_cells(p): doubles per grid point in pass 1's buckets of r z zᵀ, z = (1, x) */
static PyObject *bucket_cells_(PyObject *self, PyObject *args) {
    Py_ssize_t p;
    if (!PyArg_ParseTuple(args, "n", &p)) return NULL;
    if (p < 1) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: p must be at least 1");
        return NULL;
    }
    return PyLong_FromSsize_t(bin_cells(p, p + 1));
}

/* pass2(X, keep, mean, r, a, b, flags, cum, e, scale, out[, slot]): out (p, p) = Σ r v x xᵀ;
 * with slot (int32 per row, row_flags) the rows' grid points are read from it, not b and
 * flags: the same sums */
static PyObject *pass2(PyObject *self, PyObject *args) {
    PyObject *X, *keep, *mean, *r, *a, *b, *flags, *cum, *e, *out, *slot = Py_None;
    double scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOdO|O", &X, &keep, &mean, &r, &a, &b, &flags, &cum,
                          &e, &scale, &out, &slot))
        return NULL;
    buffers_t B = {.used = 0};
    rows_t s;
    PyObject *ret = NULL;
    double *T = NULL, *acc = NULL, *W = NULL;
    Py_ssize_t G;
    const double *ee = take(&B, e, 8, -1, 0, "e", &G);
    if (!ee || take_rows(&B, &s, X, keep, mean, r, a, b, flags, G, 1) < 0) goto done;
    const double *rr = take(&B, r, 8, s.n, 0, "r", NULL);
    const double *C = rr ? take(&B, cum, 8, G + 1, 0, "cum", NULL) : NULL;
    double *o = C ? take(&B, out, 8, s.p * s.p, 1, "out", NULL) : NULL;
    if (!o) goto done;
    if (slot != Py_None && !s.P && !(s.slot = take(&B, slot, 4, s.n, 0, "slot", NULL)))
        goto done;
    T = PyMem_Calloc(s.p * BLOCK, sizeof(double));
    acc = PyMem_Calloc(s.p * s.p, sizeof(double));
    W = PyMem_Calloc(2 * (G + 1), sizeof(double));
    if (!T || !acc || !W) {
        PyErr_NoMemory();
        goto done;
    }
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = pass2_rows(&s, rr, C, ee, scale, T, acc, W);
    Py_END_ALLOW_THREADS
    if (bad) {
        bad_index();
        goto done;
    }
    for (Py_ssize_t k = 0; k < s.p; k++)
        for (Py_ssize_t j = k; j < s.p; j++) o[k * s.p + j] = o[j * s.p + k] = acc[k * s.p + j];
    ret = Py_None;
    Py_INCREF(ret);
done:
    PyMem_Free(T);
    PyMem_Free(acc);
    PyMem_Free(W);
    release_all(&B);
    return ret;
}

/* efron(s0, e0, m, dw, under, c, e, alpha, beta, gamma) -> (Σ w log den, bad) */
static PyObject *efron(PyObject *self, PyObject *args) {
    PyObject *s0, *e0, *m, *dw, *c, *e, *al, *be, *ga;
    double under;
    if (!PyArg_ParseTuple(args, "OOOOdOOOOO", &s0, &e0, &m, &dw, &under, &c, &e, &al, &be, &ga))
        return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    Py_ssize_t G = 0;
    const double *S0 = take(&B, s0, 8, -1, 0, "s0", &G);
    const double *E0 = S0 ? take(&B, e0, 8, G, 0, "e0", NULL) : NULL;
    const double *M = E0 ? take(&B, m, 8, G, 0, "m", NULL) : NULL;
    const double *DW = M ? take(&B, dw, 8, G, 0, "dw", NULL) : NULL;
    double *out[5] = {NULL};
    PyObject *objs[5] = {c, e, al, be, ga};
    const char *names[5] = {"c", "e", "alpha", "beta", "gamma"};
    for (int i = 0; i < 5 && DW; i++)
        if (!(out[i] = take(&B, objs[i], 8, G, 1, names[i], NULL))) goto done;
    if (!DW) goto done;
    for (Py_ssize_t j = 0; j < G; j++)
        if (!(M[j] >= 0.0 && M[j] < 9.0e15)) {   /* a count of deaths */
            PyErr_SetString(PyExc_ValueError, "_cox_c: m must hold counts of deaths");
            goto done;
        }
    int bad = 0;
    double ll;
    Py_BEGIN_ALLOW_THREADS
    ll = efron_rows(G, S0, E0, M, DW, under, out[0], out[1], out[2], out[3], out[4], &bad);
    Py_END_ALLOW_THREADS
    ret = Py_BuildValue("(dO)", ll, bad ? Py_True : Py_False);
done:
    release_all(&B);
    return ret;
}

/* day_ranks(t, first, table, T, out): out[i] = the number of grid times ≤ t[i] when every
 * grid time is a whole day: table[floor(t) − first] within the table, 0 before it, T after. */
static PyObject *day_ranks(PyObject *self, PyObject *args) {
    PyObject *t, *table, *out;
    double first;
    long long T;
    if (!PyArg_ParseTuple(args, "OdOLO", &t, &first, &table, &T, &out)) return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    Py_ssize_t n, span;
    const double *tt = take(&B, t, 8, -1, 0, "t", &n);
    const int64_t *tab = tt ? take(&B, table, 8, -1, 0, "table", &span) : NULL;
    int64_t *o = tab ? take(&B, out, 8, n, 1, "out", NULL) : NULL;
    if (!o) goto done;
    Py_BEGIN_ALLOW_THREADS
    day_rows(n, tt, first, tab, span, (int64_t)T, o);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_all(&B);
    return ret;
}

/* grid_products(s1, e1 or None, c, e, alpha, beta, gamma, score, outer): see grid_rows */
static PyObject *grid_products(PyObject *self, PyObject *args) {
    PyObject *s1, *e1, *c, *e, *al, *be, *ga, *score, *outer;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &s1, &e1, &c, &e, &al, &be, &ga, &score, &outer))
        return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    Py_ssize_t G = 0, p = 0, cells = 0;
    double *sc = take(&B, score, 8, -1, 1, "score", &p);
    const double *S1 = sc ? take(&B, s1, 8, -1, 0, "s1", &cells) : NULL;
    if (!S1) goto done;
    if (p == 0 || cells % p) {
        PyErr_SetString(PyExc_ValueError, "_cox_c: s1 must be (G, p)");
        goto done;
    }
    G = cells / p;
    const double *E1 = NULL;
    if (e1 != Py_None && !(E1 = take(&B, e1, 8, G * p, 0, "e1", NULL))) goto done;
    const double *w[5] = {NULL};
    PyObject *objs[5] = {c, e, al, be, ga};
    const char *names[5] = {"c", "e", "alpha", "beta", "gamma"};
    for (int i = 0; i < 5; i++)
        if (!(w[i] = take(&B, objs[i], 8, G, 0, names[i], NULL))) goto done;
    double *o = take(&B, outer, 8, p * p, 1, "outer", NULL);
    if (!o) goto done;
    Py_BEGIN_ALLOW_THREADS
    grid_rows(G, p, S1, E1, w[0], w[1], w[2], w[3], w[4], sc, o);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    release_all(&B);
    return ret;
}

/* row_flags(b, a or None, a0 or None, event, flags[, slot]) -> rows at risk somewhere (b > a):
 * flags[i] = DEAD (event ≠ 0) | LATE (a > a0, or a > 0 without a0) | NOT_AT_RISK (b ≤ a); with
 * slot (int32), slot[i] = 2(b − 1) + dead, SLOT_LATE added for LATE (SLOT_NONE where b < 1 or
 * b > 2^30, which pass 2 refuses). */
static PyObject *row_flags(PyObject *self, PyObject *args) {
    PyObject *b, *a, *a0, *event, *flags, *slot = Py_None;
    if (!PyArg_ParseTuple(args, "OOOOO|O", &b, &a, &a0, &event, &flags, &slot)) return NULL;
    buffers_t B = {.used = 0};
    PyObject *ret = NULL;
    Py_ssize_t n = 0, kept = 0;
    const int64_t *bb = take(&B, b, 8, -1, 0, "b", &n);
    const double *ev = bb ? take(&B, event, 8, n, 0, "event", NULL) : NULL;
    uint8_t *fl = ev ? take(&B, flags, 1, n, 1, "flags", NULL) : NULL;
    if (!fl) goto done;
    const int64_t *aa = NULL, *a00 = NULL;
    if (a != Py_None && !(aa = take(&B, a, 8, n, 0, "a", NULL))) goto done;
    if (a0 != Py_None && !(a00 = take(&B, a0, 8, n, 0, "a0", NULL))) goto done;
    uint32_t *sl = NULL;
    if (slot != Py_None && !(sl = take(&B, slot, 4, n, 1, "slot", NULL))) goto done;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t ai = aa ? aa[i] : 0;
        uint8_t f = ev[i] != 0.0 ? DEAD : 0;
        if (ai > (a00 ? a00[i] : 0)) f |= LATE;
        if (bb[i] <= ai) f |= NOT_AT_RISK;
        else kept++;
        fl[i] = f;
        if (sl) {
            uint64_t at = 2 * (uint64_t)(bb[i] - 1) + (f & DEAD);
            sl[i] = bb[i] < 1 || at >= SLOT_NONE ? SLOT_NONE
                                                 : (uint32_t)at | ((f & LATE) ? SLOT_LATE : 0);
        }
    }
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(kept);
done:
    release_all(&B);
    return ret;
}

static PyMethodDef methods[] = {
    {"pass1", pass1, METH_VARARGS, "Pass 1 of the Cox fit (kernels/cox_cpu.py)."},
    {"pass2", pass2, METH_VARARGS, "Pass 2 of the Cox fit (kernels/cox_cpu.py)."},
    {"buckets", buckets, METH_VARARGS, "Pass 2's sum from pass 1's buckets of r x x'."},
    {"bucket_cells", bucket_cells_, METH_VARARGS, "Doubles per grid point in a bucket."},
    {"exp", exp_, METH_VARARGS, "exp as pass 1 computes it."},
    {"pack", pack, METH_VARARGS, "The re-laid copy of X that the passes may read."},
    {"grid_products", grid_products, METH_VARARGS, "The grid parts of score and information."},
    {"row_flags", row_flags, METH_VARARGS, "Each row's flags (dead, late, not at risk)."},
    {"day_ranks", day_ranks, METH_VARARGS, "Ranks of times on a grid of whole days."},
    {"efron", efron, METH_VARARGS, "Efron's tie terms per grid point (kernels/cox_cpu.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cox_c", "Compiled CPU passes of the Cox fit.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cox_c(void) { return PyModule_Create(&module); }
