// Test and benchmark driver for xseq/ops/native/vecmath.h (used by tests/test_vecmath.py and
// benchmarks/bench_vecmath.py; runs natively or under qemu-user).
//
// Build it the way the host kernels are built: compile with the kernels' flags (-O3 -march=...
// -ffast-math -mrecip=none) and link WITHOUT -ffast-math (linking with it adds crtfastmath.o, which
// turns on flush-to-zero for the whole process and would hide subnormal results).
//   -DXSEQ_CHECK_PREAMBLE='"file"'  compiles xseq.ops.kernel_source.PREAMBLE (the kernels' sigmoid)
//                                   inside a namespace with vecmath's exp and tanh, as the host build does
//   -DXSEQ_CHECK_LIBM               adds the C library's exp/tanh as contender "libm" (for the benchmark)
//
// Usage:
//   vecmath_check map FUNC DTYPE [IMPL]  FUNC in exp, tanh, sigmoid; DTYPE in f32, f64: reads raw native
//                                      values from stdin to its end, writes FUNC of each to stdout;
//                                      IMPL xseq (default) or libm (with XSEQ_CHECK_LIBM)
//   vecmath_check exhaustive FUNC      every one of the 2^32 floats against the C library's double
//                                      FUNC; prints "max_ulp X at BITS" and the count of wrong non-finites
//   vecmath_check bench N REPS         ns per element of each contender, function and dtype on N
//                                      elements, median of REPS loops; one line each: "IMPL FUNC DTYPE NS"
#include "vecmath.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef XSEQ_CHECK_PREAMBLE
// The host build's arrangement (see vecmath.h): the using-declarations in the kernels' namespace.
namespace kernel_code {
#define __device__
#define __forceinline__ inline
using std::fabs;
using xseq_vecmath::exp;
using xseq_vecmath::tanh;
#include XSEQ_CHECK_PREAMBLE
}  // namespace kernel_code
#endif

namespace {

// One loop per function and type, never inlined, so that the object shows how each vectorizes.
#define XSEQ_LOOP(NAME, T, EXPR)                                                       \
    __attribute__((noinline)) void NAME(const T* __restrict x, T* __restrict y, long n) { \
        for (long i = 0; i < n; ++i) y[i] = EXPR(x[i]);                                 \
    }
XSEQ_LOOP(loop_exp_f32, float, xseq_vecmath::exp)
XSEQ_LOOP(loop_exp_f64, double, xseq_vecmath::exp)
XSEQ_LOOP(loop_tanh_f32, float, xseq_vecmath::tanh)
XSEQ_LOOP(loop_tanh_f64, double, xseq_vecmath::tanh)
#ifdef XSEQ_CHECK_PREAMBLE
XSEQ_LOOP(loop_sigmoid_f32, float, kernel_code::sigmoid<float>)
XSEQ_LOOP(loop_sigmoid_f64, double, kernel_code::sigmoid<double>)
#endif
#ifdef XSEQ_CHECK_LIBM
XSEQ_LOOP(libm_exp_f32, float, std::exp)
XSEQ_LOOP(libm_exp_f64, double, std::exp)
XSEQ_LOOP(libm_tanh_f32, float, std::tanh)
XSEQ_LOOP(libm_tanh_f64, double, std::tanh)
#endif

template <typename T> using Loop = void (*)(const T*, T*, long);

struct Contender {
    const char* impl;
    const char* func;
    Loop<float> f32;
    Loop<double> f64;
};

const Contender CONTENDERS[] = {
    {"xseq", "exp", loop_exp_f32, loop_exp_f64},
    {"xseq", "tanh", loop_tanh_f32, loop_tanh_f64},
#ifdef XSEQ_CHECK_PREAMBLE
    {"xseq", "sigmoid", loop_sigmoid_f32, loop_sigmoid_f64},
#endif
#ifdef XSEQ_CHECK_LIBM
    {"libm", "exp", libm_exp_f32, libm_exp_f64},
    {"libm", "tanh", libm_tanh_f32, libm_tanh_f64},
#endif
};

const Contender* find(const char* impl, const std::string& func) {
    for (const Contender& c : CONTENDERS)
        if (func == c.func && std::string(impl) == c.impl) return &c;
    std::fprintf(stderr, "unknown function %s %s (xseq: exp, tanh%s; libm with XSEQ_CHECK_LIBM: exp, tanh)\n", impl, func.c_str(),
#ifdef XSEQ_CHECK_PREAMBLE
                 ", sigmoid"
#else
                 ""
#endif
    );
    std::exit(2);
}

// Non-finite tests on the bit pattern: -ffast-math folds std::isnan and std::isinf to false.
bool nonfinite(double v) {
    uint64_t b;
    std::memcpy(&b, &v, 8);
    return (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}

template <typename T> int map(Loop<T> loop) {
    std::vector<T> x;
    T buf[4096];
    size_t got;
    while ((got = std::fread(buf, sizeof(T), 4096, stdin)) > 0) x.insert(x.end(), buf, buf + got);
    std::vector<T> y(x.size());
    loop(x.data(), y.data(), static_cast<long>(x.size()));
    return std::fwrite(y.data(), sizeof(T), y.size(), stdout) == y.size() ? 0 : 1;
}

// Every float, in chunks, against the C library's double function (correctly rounded to far
// below a float ulp). The error is |y - ref| / ulp(ref), ulp of the float binade of ref (2^-149
// below the normal range); a non-finite reference must be matched exactly.
int exhaustive(const std::string& func) {
    const Contender* c = find("xseq", func);
    const long chunk = 1 << 20;
    std::vector<float> x(chunk), y(chunk);
    double worst = 0;
    uint32_t worst_bits = 0;
    long bad_nonfinite = 0;
    for (uint64_t start = 0; start < (1ull << 32); start += chunk) {
        for (long i = 0; i < chunk; ++i) {
            const uint32_t b = static_cast<uint32_t>(start + i);
            std::memcpy(&x[i], &b, 4);
        }
        c->f32(x.data(), y.data(), chunk);
        for (long i = 0; i < chunk; ++i) {
            const double xd = x[i];
            double ref;
            if (func == "exp") ref = std::exp(xd);
            else if (func == "tanh") ref = std::tanh(xd);
            else ref = 1.0 / (1.0 + std::exp(-xd));
            const double yd = y[i];
            const double rf = static_cast<float>(ref);  // overflows to inf where the float result must
            if (nonfinite(rf) || nonfinite(yd)) {
                uint64_t rb, yb;
                std::memcpy(&rb, &rf, 8);
                std::memcpy(&yb, &yd, 8);
                const bool both_nan = (rb << 1) > (0x7ff0000000000000ull << 1) && (yb << 1) > (0x7ff0000000000000ull << 1);
                if (!both_nan && rb != yb) ++bad_nonfinite;
                continue;
            }
            int e;
            std::frexp(ref, &e);
            const double ulp = std::ldexp(1.0, (e - 1 < -126 ? -126 : e - 1) - 23);
            const double err = std::fabs(yd - ref) / ulp;
            if (err > worst) {
                worst = err;
                worst_bits = static_cast<uint32_t>(start + i);
            }
        }
    }
    float wx;
    std::memcpy(&wx, &worst_bits, 4);
    std::printf("max_ulp %.4f at 0x%08x (%.9g) nonfinite_mismatches %ld\n", worst, worst_bits, wx, bad_nonfinite);
    return bad_nonfinite == 0 ? 0 : 1;
}

// The median over REPS runs of the loop on n arguments in [-8, 8), in ns per element.
template <typename T> double time_loop(Loop<T> loop, long n, int reps) {
    std::vector<T> x(n), y(n);
    for (long i = 0; i < n; ++i) {
        const double golden = i * 0.6180339887498949;
        x[i] = static_cast<T>(-8.0 + 16.0 * (golden - static_cast<long>(golden)));
    }
    loop(x.data(), y.data(), n);  // warm-up
    std::vector<double> times(reps);
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        loop(x.data(), y.data(), n);
        const auto t1 = std::chrono::steady_clock::now();
        times[r] = std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
    }
    volatile T sink = y[n / 2];
    (void)sink;
    std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
    return times[reps / 2];
}

int bench(long n, int reps) {
    for (const Contender& c : CONTENDERS) {
        std::printf("%s %s f32 %.4f\n", c.impl, c.func, time_loop<float>(c.f32, n, reps));
        std::printf("%s %s f64 %.4f\n", c.impl, c.func, time_loop<double>(c.f64, n, reps));
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "map" && (argc == 4 || argc == 5)) {
        const Contender* c = find(argc == 5 ? argv[4] : "xseq", argv[2]);
        const std::string dtype = argv[3];
        if (dtype == "f32") return map<float>(c->f32);
        if (dtype == "f64") return map<double>(c->f64);
    } else if (mode == "exhaustive" && argc == 3) {
        return exhaustive(argv[2]);
    } else if (mode == "bench" && argc == 4 && std::atol(argv[2]) > 0 && std::atoi(argv[3]) > 0) {
        return bench(std::atol(argv[2]), std::atoi(argv[3]));
    }
    std::fprintf(stderr,
                 "usage: %s map FUNC f32|f64 [xseq|libm] < values | exhaustive FUNC | bench N REPS\n", argv[0]);
    return 2;
}
