// The machine's FP32 peak, measured: fused multiply-adds on registers only, on one thread and on N threads.
//
// Compiled by bench_flops.py at run time with the compiler and target flags of xseq's host build
// (xseq/ops/native_build.py: find_compiler, flag_sets; -O3 -march=native or -march=$XSEQ_HOST_MARCH), so the
// vector width is the build's: 16 floats where the target has AVX-512, 8 with AVX2 and FMA, 4 with NEON (or
// plain SSE). Each thread runs ACC independent accumulators, acc = acc * a + b, one FMA each per pass: more
// accumulators than the FMA units' latency times their count (AVX-512 on Zen 4/5 and Intel: 2 units x 4
// cycles = 8 in flight), and few enough to stay in the vector registers (32 with AVX-512 and NEON, 16 with
// AVX2) next to a and b. a = 1 - 1e-6 and b = 1e-6 keep every value near 1: no overflow, no denormals.
//
// Usage: peak_probe THREADS SECONDS REPEATS
//   One thread, then THREADS threads started together (each the same number of passes, chosen so that one
//   thread takes about SECONDS), REPEATS times each; prints one JSON line with the best GFLOP/s of each.
//   A pass is ACC FMAs of WIDTH lanes: 2 * ACC * WIDTH floating-point operations.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
constexpr int kWidth = 16;
constexpr int kAcc = 24;
static const char* const kIsa = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kWidth = 8;
constexpr int kAcc = 12;
static const char* const kIsa = "AVX2+FMA";
#elif defined(__ARM_NEON) || defined(__aarch64__)
constexpr int kWidth = 4;
constexpr int kAcc = 24;
static const char* const kIsa = "NEON";
#else
constexpr int kWidth = 4;
constexpr int kAcc = 12;
static const char* const kIsa = "128-bit vectors, no FMA in the target (multiply then add)";
#endif

typedef float vec __attribute__((vector_size(kWidth * sizeof(float))));

// Opaque to the optimizer: the loop cannot be folded into a closed form or skipped.
static volatile float g_a = 1.0f - 1e-6f;
static volatile float g_b = 1e-6f;
static volatile float g_sink = 0.0f;

__attribute__((noinline)) static float fma_passes(long passes, float seed) {
    const vec a = vec{} + static_cast<float>(g_a);
    const vec b = vec{} + static_cast<float>(g_b);
    vec acc[kAcc];
    for (int i = 0; i < kAcc; ++i) acc[i] = vec{} + (seed + 1e-3f * static_cast<float>(i));
    for (long n = 0; n < passes; ++n) {
#pragma GCC unroll 64
        for (int i = 0; i < kAcc; ++i) acc[i] = acc[i] * a + b;
    }
    vec sum = acc[0];
    for (int i = 1; i < kAcc; ++i) sum += acc[i];
    float total = 0.0f;
    for (int l = 0; l < kWidth; ++l) total += sum[l];
    return total;
}

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds from releasing `threads` waiting threads until the last has run `passes` passes.
static double timed_run(int threads, long passes) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<double> ends(threads, 0.0);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {
            }
            float r = fma_passes(passes, 1.0f + static_cast<float>(t));
            ends[t] = now();
            g_sink = g_sink + r;
        });
    }
    while (ready.load() < threads) {
    }
    double start = now();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
    double end = 0.0;
    for (double e : ends) end = e > end ? e : end;
    return end - start;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s THREADS SECONDS REPEATS\n", argv[0]);
        return 2;
    }
    int threads = std::atoi(argv[1]);
    double seconds = std::atof(argv[2]);
    int repeats = std::atoi(argv[3]);
    if (threads < 1 || seconds <= 0.0 || repeats < 1) {
        std::fprintf(stderr, "THREADS must be >= 1, SECONDS > 0 and REPEATS >= 1; got %s %s %s\n", argv[1], argv[2],
                     argv[3]);
        return 2;
    }
    // Calibrate on one thread: double the passes until a run takes 1/8 of SECONDS, then scale.
    long passes = 1 << 14;
    double t = timed_run(1, passes);
    while (t < seconds / 8) {
        passes *= 2;
        t = timed_run(1, passes);
    }
    passes = static_cast<long>(static_cast<double>(passes) * seconds / t) + 1;
    const double flops_per_pass = 2.0 * kAcc * kWidth;
    double best_one = 0.0, best_all = 0.0;
    for (int r = 0; r < repeats; ++r) {
        double one = flops_per_pass * passes / timed_run(1, passes) * 1e-9;
        double all = flops_per_pass * passes * threads / timed_run(threads, passes) * 1e-9;
        best_one = one > best_one ? one : best_one;
        best_all = all > best_all ? all : best_all;
    }
    std::printf("{\"isa\": \"%s\", \"width\": %d, \"accumulators\": %d, \"passes\": %ld, \"threads\": %d, "
                "\"one_thread_gflops\": %.3f, \"all_threads_gflops\": %.3f}\n",
                kIsa, kWidth, kAcc, passes, threads, best_one, best_all);
    return 0;
}
