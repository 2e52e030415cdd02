// Portable vector math for the host kernels: exp and tanh for float and double, header-only C++17.
//
// Why: the host kernels' loops call exp and tanh element by element. With glibc's libmvec
// (g++ -ffast-math) those calls vectorize; with clang, on aarch64 or on macOS they stay scalar calls
// and the kernels are slower than NumPy. These functions are inline arithmetic -- no libm call, no
// branch, no table -- so GCC and clang vectorize any loop that calls them (AVX2, AVX-512, NEON).
//
// Use: the functions live in namespace xseq_vecmath. <cmath> declares ::exp(double) in the global
// namespace and a using-declaration of xseq_vecmath::exp there would conflict with it, so the
// using-declarations go into the namespace that holds the kernel code, where they hide the C
// library's functions from its unqualified calls:
//     namespace k_name_float { using xseq_vecmath::exp; using xseq_vecmath::tanh; ... exp(x) ... }
//
// Method.
// exp(x) = 2^k (1 + q(r)), k = round(x / ln 2), r = x - k ln 2 (Cody-Waite: ln 2 in two parts, k LN2_HI
//   exact), |r| <= ln(2) / 2, q(r) = r + r^2 P(r) ~ expm1(r), P minimax of degree 5 (float) or 10
//   (double). 2^k is applied by adding k - shift to the exponent field of 1 + q (exact, no overflow)
//   and multiplying once by 2^shift (2 for k >= 0, 2^-64 / 2^-512 below): overflow gives inf, and
//   results below the smallest normal number are rounded once onto the subnormal grid (gradual
//   underflow, not flushed -- unless the process runs with flush-to-zero / denormals-are-zero).
// tanh float: |x| < 1: |x| - |x| s M(s) / Q(s), s = x^2, M / Q a rational minimax fit of
//   (1 - tanh(a) / a) / s; |x| >= 1: 1 - 2 / (e^2|x| + 1), e^2|x| = 2^k (1 + q) from a shorter
//   exp (degree 4, one-step reduction: 2 / (e^2|x| + 1) < 0.24 scales its error down). One division
//   serves both (numerator and denominator are selected first).
// tanh double: |x| < 0.5493 (~atanh(1/2)): |x| + |x|^3 P(x^2), P minimax of degree 10;
//   above: 1 - 2 / (e^2|x| + 1) with the exp above. Both computed, one selected.
// tanh(x) ~ x for tiny x to the last bit (subnormal x is returned unchanged); the sign is copied back
//   from x. The coefficients come from tests/native/vecmath_coefficients.py.
//
// Non-finite input under -ffast-math (which lets the compiler assume there is none): NaN is
// recognised on the integer bit pattern, kept out of the arithmetic and put back (quieted) at the
// end; infinities are clamped like any large argument. So exp(NaN) = NaN, exp(+inf) = +inf,
// exp(-inf) = +0, tanh(NaN) = NaN, tanh(+-inf) = +-1, tanh(+-0) = +-0, as the C library gives.
//
// Accuracy: largest error in ulps of the result against the exact value, built -O3 -ffast-math with
// -march=native (x86-64 AVX-512, plus -mprefer-vector-width=512 -mrecip=none as the host build) or
// -march=armv8-a (aarch64, run under qemu); float over every one of the 2^32 inputs (x86), double
// over ~3 million sampled across the whole range and around every point where the method changes
// (tests/test_vecmath.py demands it on every build):
//                  g++ x86     clang++ x86   g++ aarch64 (sampled)
//     exp float    0.988       0.988         0.96
//     exp double   0.97        0.97          0.96
//     tanh float   1.64 (*)    1.34          1.11
//     tanh double  1.21        1.21          1.18
// (*) GCC 12 with -ffast-math divides float vectors through an approximate reciprocal and a Newton
// step even with -mrecip=none (-mno-recip turns it off: 1.38 ulp, and faster). Subnormal exp results
// are within 1 ulp of the subnormal grid. For comparison, glibc 2.36's libmvec (AVX-512, same samples):
// exp float 2.64, exp double 3.13, tanh float 1.36, tanh double 1.16.
//
// Speed (benchmarks/bench_vecmath.py; ns per element on 16384, 2-core Zen 4, AVX-512 build), this
// header with g++ / g++ -mno-recip / clang++ against glibc's libmvec (g++):
//     exp float 0.17 / 0.17 / 0.22 vs 0.20     exp double 0.46 / 0.46 / 0.57 vs 0.52
//     tanh float 0.27 / 0.22 / 0.19 vs 0.19    tanh double 0.75 / 0.75 / 0.70 vs 0.91
// (clang's own alternative, scalar libm calls: 1.5, 2.7, 8.6 and 7.9).
//
// Requirements: a fused multiply-add in the target (every aarch64; x86 from Haswell / x86-64-v3,
// i.e. -march=native on any x86 CPU since 2013): XSEQ_VECMATH_VECTOR is then 1. Without one (x86
// before FMA3, e.g. -march=x86-64-v2), the functions are the C library's and XSEQ_VECMATH_VECTOR is 0:
// -ffast-math reorders a separate multiply and add, which breaks the reduction (hundreds of ulps),
// and GCC 12 drops __builtin_assoc_barrier when it vectorizes. GCC >= 8 or clang >= 7.
#pragma once

#include <cstdint>
#include <cstring>

// XSEQ_VECMATH_VECTOR: 1 where the functions below are this header's branch-free code, which needs a
// fused multiply-add and a rounding instruction (every aarch64; x86 with FMA3 and SSE4.1:
// -march=haswell / x86-64-v3 and later, or -march=native on such a CPU); 0 elsewhere, where they forward to the C library's (correct; with
// GCC -ffast-math and glibc still vectorized through libmvec, otherwise scalar calls).
#if (defined(__FMA__) && defined(__SSE4_1__)) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
#define XSEQ_VECMATH_VECTOR 1
#else
#define XSEQ_VECMATH_VECTOR 0
#include <cmath>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define XSEQ_VECMATH_INLINE inline __attribute__((always_inline))
#else
#define XSEQ_VECMATH_INLINE inline
#endif

namespace xseq_vecmath {
#if XSEQ_VECMATH_VECTOR
namespace detail {

// a * b + c with one rounding, and evaluated as written: -ffast-math lets the compiler rearrange
// arithmetic, and it would merge the two steps of the Cody-Waite reduction into one product by a
// rounded ln 2 (tens to hundreds of ulps off for large |x|; GCC 12 does so after vectorizing even
// through __builtin_assoc_barrier), or evaluate 2^k q + (2^k + 1) in another order. A call to fma
// is never rearranged.
XSEQ_VECMATH_INLINE float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
XSEQ_VECMATH_INLINE double fma(double a, double b, double c) { return __builtin_fma(a, b, c); }

template <typename T> struct format;

template <> struct format<float> {
    using uint = uint32_t;
    static constexpr int mantissa_bits = 23;
    static constexpr int exponent_bias = 127;
    static constexpr uint abs_mask = 0x7fffffffu;
    static constexpr uint sign_mask = 0x80000000u;
    static constexpr uint inf_bits = 0x7f800000u;
    static constexpr uint quiet_bit = 0x00400000u;
    // exp(EXP_LO) < 2^-150 rounds to +0 and exp(EXP_HI) > FLT_MAX rounds to inf: clamping there
    // changes no result and keeps k in [-150, 128].
    static constexpr float exp_lo = -104.0f;
    static constexpr float exp_hi = 89.0f;
    // tanh(|x|) rounds to 1 from 9.02 on (1 - tanh(x) < 2^-25).
    static constexpr float tanh_hi = 9.25f;
    // Results for k < 0 are built as (1 + q) 2^(k + NEG_SHIFT) and multiplied by 2^-NEG_SHIFT.
    static constexpr int neg_shift = 64;
    static constexpr float log2e = 0x1.715476p+0f;
    static constexpr float ln2_hi = 0x1.62e4p-1f;  // 15 significant bits: k * LN2_HI is exact
    static constexpr float ln2_lo = 0x1.7f7d1cp-20f;
    static constexpr float ln2 = 0x1.62e430p-1f;  // rounded: tanh's one-step reduction

    // q(r) = r + r^2 P(r) ~ expm1(r) for |r| <= 0.3467: minimax P of degree 5,
    // max |P - (expm1(r) - r) / r^2| = 1.35e-9.
    static XSEQ_VECMATH_INLINE float expm1_poly(float r) {
        float p = 0x1.a17e3cp-13f;
        p = fma(p, r, 0x1.6d4352p-10f);
        p = fma(p, r, 0x1.1110acp-7f);
        p = fma(p, r, 0x1.5554e8p-5f);
        p = fma(p, r, 0x1.555556p-3f);
        p = fma(p, r, 0x1p-1f);
        return fma(r * r, p, r);
    }

    // tanh(a) = a - a s M(s) / Q(s), s = a^2, for 0 <= a < TANH_SWITCH: M / Q, of degrees 1 and 2,
    // is the rational minimax approximation of (1 - tanh(a) / a) / s (relative error 2.2e-9), and the
    // rounding errors of the correction a s M / Q (< 0.31 a) reach the result scaled down.
    static constexpr float tanh_switch = 1.0f;
    static XSEQ_VECMATH_INLINE float tanh_m(float s) { return fma(0x1.e1facap-7f, s, 0x1.555556p-2f); }
    static XSEQ_VECMATH_INLINE float tanh_q(float s) {
        const float q = fma(0x1.01fc70p-6f, s, 0x1.c6c918p-2f);
        return fma(q, s, 1.0f);
    }
    // From TANH_SWITCH on, tanh(a) = 1 - 2 / (e^2a + 1) with 2 / (e^2a + 1) < 0.24: e^2a = 2^k (1 + q),
    // r = 2a - k ln2 in one step (k <= 27: error < 6e-8 absolute), q = r + r^2 P(r) with P of
    // degree 4, relative error of q 2.2e-8.
    static XSEQ_VECMATH_INLINE float expm1_short(float r) {
        float p = 0x1.6d757cp-10f;
        p = fma(p, r, 0x1.120b94p-7f);
        p = fma(p, r, 0x1.5554b8p-5f);
        p = fma(p, r, 0x1.5554dcp-3f);
        p = fma(p, r, 0x1p-1f);
        return fma(r * r, p, r);
    }
};

template <> struct format<double> {
    using uint = uint64_t;
    static constexpr int mantissa_bits = 52;
    static constexpr int exponent_bias = 1023;
    static constexpr uint abs_mask = 0x7fffffffffffffffull;
    static constexpr uint sign_mask = 0x8000000000000000ull;
    static constexpr uint inf_bits = 0x7ff0000000000000ull;
    static constexpr uint quiet_bit = 0x0008000000000000ull;
    static constexpr double exp_lo = -746.0;   // exp(-746) < 2^-1075: +0
    static constexpr double exp_hi = 710.0;    // exp(710) > DBL_MAX: inf
    static constexpr double tanh_hi = 19.5;    // tanh(|x|) rounds to 1 from 19.07 on
    static constexpr double tanh_switch = 0.5493;
    static constexpr int neg_shift = 512;
    static constexpr double log2e = 0x1.71547652b82fep+0;
    static constexpr double ln2_hi = 0x1.62e42fee00000p-1;  // 32 significant bits: k * LN2_HI is exact
    static constexpr double ln2_lo = 0x1.a39ef35793c76p-33;

    // q(r) = r + r^2 P(r) ~ expm1(r) for |r| <= 0.3467: minimax P of degree 10,
    // max |P - (expm1(r) - r) / r^2| = 1.4e-18.
    static XSEQ_VECMATH_INLINE double expm1_poly(double r) {
        double p = 0x1.1f8b6240f38c4p-29;
        p = fma(p, r, 0x1.af4e09dd657e3p-26);
        p = fma(p, r, 0x1.27e4ccc0fd68fp-22);
        p = fma(p, r, 0x1.71de0221fb21bp-19);
        p = fma(p, r, 0x1.a01a01ad0027ap-16);
        p = fma(p, r, 0x1.a01a01abecee9p-13);
        p = fma(p, r, 0x1.6c16c16c151eep-10);
        p = fma(p, r, 0x1.11111111100d2p-7);
        p = fma(p, r, 0x1.5555555555558p-5);
        p = fma(p, r, 0x1.5555555555557p-3);
        p = fma(p, r, 0x1p-1);
        return fma(r * r, p, r);
    }

    // tanh(a) = a + a^3 P(a^2) for |a| < TANH_SWITCH: minimax P of degree 10 in s = a^2,
    // max |P - (tanh(a) / a - 1) / s| = 7.1e-18 (relative error of tanh 2.1e-18).
    static XSEQ_VECMATH_INLINE double tanh_poly(double s) {
        double p = -0x1.5ac7049408950p-16;
        p = fma(p, s, 0x1.656743986e68dp-14);
        p = fma(p, s, -0x1.ec31ada2aa255p-13);
        p = fma(p, s, 0x1.34c8870f8e75dp-11);
        p = fma(p, s, -0x1.7d981cac88454p-10);
        p = fma(p, s, 0x1.d6d33e2cdaa99p-9);
        p = fma(p, s, -0x1.226e330921287p-7);
        p = fma(p, s, 0x1.664f4877a45a3p-6);
        p = fma(p, s, -0x1.ba1ba1ba00728p-5);
        p = fma(p, s, 0x1.1111111111041p-3);
        return fma(p, s, -0x1.5555555555555p-2);
    }
};

template <typename T> XSEQ_VECMATH_INLINE typename format<T>::uint bits(T x) {
    typename format<T>::uint u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

template <typename T> XSEQ_VECMATH_INLINE T from_bits(typename format<T>::uint u) {
    T x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

// c ? a : b on bit patterns, written without a conditional: GCC turns a ?: between two computed
// values into a branch with each computation moved into its arm, and a loop with branches does not
// vectorize. (Where GCC keeps ?: as a select, ?: is faster: exp uses it.)
template <typename U> XSEQ_VECMATH_INLINE U blend_bits(bool c, U a, U b) {
    const U mask = U(0) - static_cast<U>(c);
    return (a & mask) | (b & ~mask);
}

template <typename T> XSEQ_VECMATH_INLINE T blend(bool c, T a, T b) {
    return from_bits<T>(blend_bits(c, bits(a), bits(b)));
}

// round(v) as a floating-point number (vroundps/vrndscale on x86 with SSE4.1, which every FMA CPU has;
// frintx on aarch64: an instruction, not a call, under -fno-math-errno, which -ffast-math implies).
XSEQ_VECMATH_INLINE float round_nearest(float v) { return __builtin_rintf(v); }
XSEQ_VECMATH_INLINE double round_nearest(double v) { return __builtin_rint(v); }

// The integer kd (|kd| < 2^22), as a two's complement integer of the format's width: kd + 1.5 2^p is
// exact and its bit pattern is that of 1.5 2^p plus kd. (Nothing converts between integer widths, so
// every lane stays in one vector register width.)
template <typename T> XSEQ_VECMATH_INLINE typename format<T>::uint int_bits(T kd) {
    const T magic = T(1.5) * static_cast<T>(typename format<T>::uint(1) << format<T>::mantissa_bits);
    return bits(kd + magic) - bits(magic);
}

// r = x - k ln2, with k*LN2_HI exact and the rounding error of LN2_HI put back through LN2_LO.
template <typename T> XSEQ_VECMATH_INLINE T reduce(T x, T kd) {
    return fma(-kd, format<T>::ln2_lo, fma(-kd, format<T>::ln2_hi, x));
}

// 2^k for k = int_bits(kd) in [0, 57] (tanh's): a normal number.
template <typename T> XSEQ_VECMATH_INLINE T pow2(typename format<T>::uint k) {
    using U = typename format<T>::uint;
    return from_bits<T>((k + U(format<T>::exponent_bias)) << format<T>::mantissa_bits);
}

template <typename T> XSEQ_VECMATH_INLINE T exp(T x) {
    using F = format<T>;
    using U = typename F::uint;
    const U ix = bits(x);
    const bool nan = (ix & F::abs_mask) > F::inf_bits;
    T xs = from_bits<T>(nan ? U(0) : ix);
    xs = xs < F::exp_lo ? F::exp_lo : xs;
    xs = xs > F::exp_hi ? F::exp_hi : xs;
    const T kd = round_nearest(xs * F::log2e);
    const T p = T(1) + F::expm1_poly(reduce<T>(xs, kd));
    // p in [0.7, 1.5]: 2^k p = (2^(k - shift) p) * 2^shift with 2^(k - shift) p a normal number
    // (built exactly, by an integer add to the exponent field) and one rounding in the product.
    const bool negative = kd < T(0);
    const U shift = negative ? U(0) - U(F::neg_shift) : U(1);
    const U scaled = bits(p) + ((int_bits(kd) - shift) << F::mantissa_bits);
    const U factor = (shift + U(F::exponent_bias)) << F::mantissa_bits;
    const T y = from_bits<T>(scaled) * from_bits<T>(factor);
    return from_bits<T>(nan ? (ix | F::quiet_bit) : bits(y));
}

// tanh(+-inf) = +-1 by the clamp, NaN through its bit pattern, the sign copied back from x.
template <typename T> XSEQ_VECMATH_INLINE T tanh(T x);

template <> XSEQ_VECMATH_INLINE float tanh<float>(float x) {
    using F = format<float>;
    const uint32_t ix = bits(x);
    const uint32_t ia = ix & F::abs_mask;
    const bool nan = ia > F::inf_bits;
    // |x| clamped to TANH_HI on the bit pattern (an unsigned min): inf and NaN become TANH_HI too
    const uint32_t hi = bits(F::tanh_hi);
    const float a = from_bits<float>(ia < hi ? ia : hi);
    const bool small = a < F::tanh_switch;
    const float s = a * a;
    const float y = a + a;
    const float kd = round_nearest(y * F::log2e);
    const float r = fma(-kd, F::ln2, y);
    const float t = pow2<float>(int_bits(kd));
    const float e_plus_1 = fma(t, F::expm1_short(r), t + 1.0f);
    // one division for both corrections: a s M / Q below the switch, 2 / (e^2a + 1) from it on
    const float m = a * s * F::tanh_m(s);
    const float q = F::tanh_q(s);
    const float ratio = blend(small, m, 2.0f) / blend(small, q, e_plus_1);
    const float th = blend(small, a, 1.0f) - ratio;
    return from_bits<float>(blend_bits(nan, ix | F::quiet_bit, bits(th) | (ix & F::sign_mask)));
}

template <> XSEQ_VECMATH_INLINE double tanh<double>(double x) {
    using F = format<double>;
    const uint64_t ix = bits(x);
    const uint64_t ia = ix & F::abs_mask;
    const bool nan = ia > F::inf_bits;
    const uint64_t hi = bits(F::tanh_hi);
    const double a = from_bits<double>(ia < hi ? ia : hi);  // inf and NaN become TANH_HI too
    // |x| < TANH_SWITCH: tanh|x| = |x| + |x|^3 P(x^2), an odd minimax polynomial.
    const double s = a * a;
    const double small = fma(a * s, F::tanh_poly(s), a);
    // Above: tanh|x| = 1 - 2 / (e^2|x| + 1), e^2|x| = 2^k (1 + q): the result is >= 1/2 and the
    // error of 2 / (e^2|x| + 1) is scaled down by it. (Both are computed; one is selected.)
    const double y = 2.0 * a;
    const double kd = round_nearest(y * F::log2e);
    const double q = F::expm1_poly(reduce<double>(y, kd));
    const double t = pow2<double>(int_bits(kd));
    const double large = 1.0 - 2.0 / fma(t, q, t + 1.0);
    const double th = blend(a < F::tanh_switch, small, large);
    return from_bits<double>(blend_bits(nan, ix | F::quiet_bit, bits(th) | (ix & F::sign_mask)));
}

}  // namespace detail

/// e^x; exp(NaN) = NaN, exp(+inf) = +inf, exp(-inf) = +0; see the header comment for accuracy.
XSEQ_VECMATH_INLINE float exp(float x) { return detail::exp<float>(x); }
XSEQ_VECMATH_INLINE double exp(double x) { return detail::exp<double>(x); }

/// tanh(x), odd (tanh(-0) = -0), tanh(+-inf) = +-1, tanh(NaN) = NaN.
XSEQ_VECMATH_INLINE float tanh(float x) { return detail::tanh<float>(x); }
XSEQ_VECMATH_INLINE double tanh(double x) { return detail::tanh<double>(x); }

#else  // no fused multiply-add: the C library's functions

XSEQ_VECMATH_INLINE float exp(float x) { return std::exp(x); }
XSEQ_VECMATH_INLINE double exp(double x) { return std::exp(x); }
XSEQ_VECMATH_INLINE float tanh(float x) { return std::tanh(x); }
XSEQ_VECMATH_INLINE double tanh(double x) { return std::tanh(x); }

#endif  // XSEQ_VECMATH_VECTOR
}  // namespace xseq_vecmath
