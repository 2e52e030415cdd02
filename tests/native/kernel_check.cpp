// Test driver for the host build's kernels on another target (used by tests/test_native_targets.py; runs
// natively or under qemu-user, e.g. an aarch64 build under qemu-aarch64).
//
// Build: compile the host build's translation unit (xseq.ops.native_source.host_source(), -I the native
// folder) to an object with the build's flags, compile this file, and link the two: the harness calls the
// library's own C entry points, the ones Python calls through ctypes. Link without -ffast-math (it would
// add crtfastmath.o: flush-to-zero for the whole process).
//
// Every array is read from stdin and written to stdout as raw native values of the given type (f32 or
// f64), C order, one after another in the order listed; sizes come from the command line.
//
// Usage:
//   kernel_check info
//       prints "vecmath_vector V" (XSEQ_VECMATH_VECTOR of the build) and "packed_vector_bytes B"
//   kernel_check step KIND DTYPE M N_A
//       one forward step kernel, then the backward step kernel on what it saved (KIND rnn, lstm, gru;
//       G = 1, 4, 3 gate blocks):
//       rnn:  in xw, hw (M, N_A), dh, dy (M, N_A);             out h, dz
//       lstm: in xw, hw (M, 4 N_A), c_prev, dh, dy, dc (M, N_A); out gates (M, 4 N_A), c, h, dz (M, 4 N_A), dc_prev
//       gru:  in xw, hw (M, 3 N_A), b_hn (N_A), h_prev, dh, dy (M, N_A);
//             out saved (M, 4 N_A), h, dxw (M, 3 N_A), dhw (M, 3 N_A), dh_direct (M, N_A)
//   kernel_check packed DTYPE M K N BETA
//       C = A @ B + BETA C (BETA 0 or 1) by the packed product (B packed by xseq_pack_*):
//       in A (M, K), B (K, N), C (M, N); out C
//   kernel_check loop KIND DTYPE T M N_A
//       the lanes' time loops (xseq_forward_loop_*, then xseq_backward_loop_*) with W_hh packed, one lane:
//       in xw (T, M, G N_A), h0, c0 (M, N_A), w_hhT (N_A, G N_A), b_hn (N_A), dy (T, M, N_A), dh_T, dc_T (M, N_A);
//       out s (T + 1, M, N_A), c (T + 1, M, N_A), saved (T, M, S N_A) with S = 0, 4, 4, dz (T, M, G N_A),
//       dhw (T, M, G N_A) (dz again but for the GRU), dh0, dc0 (M, N_A)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
int xseq_vecmath_vector();
int xseq_packed_vector_bytes();
}

// The library's entry points by element type: the generated step kernels (xseq.ops.kernel_source.KERNELS,
// parameters as cupy.ElementwiseKernel binds them) and exports.cpp's loops and packed product.
#define XSEQ_DECLARE(T)                                                                                           \
    extern "C" {                                                                                                  \
    void xseq_rnn_forward_##T(const T* xw, const T* hw, T* h, ptrdiff_t n);                                       \
    void xseq_rnn_backward_##T(const T* h, const T* dh, const T* dy, T* dz, ptrdiff_t n);                         \
    void xseq_lstm_forward_##T(const T* xw, const T* hw, const T* c_prev, int n_a, T* gates, T* c, T* h,          \
                               ptrdiff_t n);                                                                      \
    void xseq_lstm_backward_##T(const T* gates, const T* c_prev, const T* c, const T* dh, const T* dy,            \
                                const T* dc, int n_a, T* dz, T* dc_prev, ptrdiff_t n);                            \
    void xseq_gru_forward_##T(const T* xw, const T* hw, const T* b_hn, const T* h_prev, int n_a, T* saved, T* h, \
                              ptrdiff_t n);                                                                       \
    void xseq_gru_backward_##T(const T* saved, const T* h_prev, const T* dh, const T* dy, int n_a, T* dxw,       \
                               T* dhw, T* dh_direct, ptrdiff_t n);                                                \
    void xseq_pack_##T(const T* w, int64_t K, int64_t N, T* out);                                                 \
    int64_t xseq_packed_size_##T(int64_t K, int64_t N);                                                           \
    void xseq_packed_gemm_##T(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* packed, T beta,  \
                              T* c, int64_t ldc);                                                                 \
    void xseq_forward_loop_##T(int kind, void* gemm, int64_t Tn, int64_t m, int64_t n_a, const T* xw,             \
                               int64_t xw_step, T* s, int64_t s_step, T* c, int64_t c_step, T* g, int64_t g_step, \
                               const T* w_hhT, const T* b_hn, T* hw, const T* packed);                            \
    void xseq_backward_loop_##T(int kind, void* gemm, int64_t Tn, int64_t m, int64_t n_a, const T* g,             \
                                int64_t g_step, const T* s, int64_t s_step, const T* c, int64_t c_step,           \
                                const T* w_hh, const T* dy, int64_t dy_step, T* dz, int64_t z_step, T* dhw,       \
                                int64_t hw_step, T* dh, T* dc, T* work, const T* packed);                         \
    }                                                                                                             \
    template <>                                                                                                   \
    struct api<T> {                                                                                               \
        static constexpr auto& rnn_forward = xseq_rnn_forward_##T;                                                \
        static constexpr auto& rnn_backward = xseq_rnn_backward_##T;                                              \
        static constexpr auto& lstm_forward = xseq_lstm_forward_##T;                                              \
        static constexpr auto& lstm_backward = xseq_lstm_backward_##T;                                            \
        static constexpr auto& gru_forward = xseq_gru_forward_##T;                                                \
        static constexpr auto& gru_backward = xseq_gru_backward_##T;                                              \
        static constexpr auto& pack = xseq_pack_##T;                                                              \
        static constexpr auto& packed_size = xseq_packed_size_##T;                                                \
        static constexpr auto& packed_gemm = xseq_packed_gemm_##T;                                                \
        static constexpr auto& forward_loop = xseq_forward_loop_##T;                                              \
        static constexpr auto& backward_loop = xseq_backward_loop_##T;                                            \
    };

template <typename T>
struct api;
XSEQ_DECLARE(float)
XSEQ_DECLARE(double)

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "kernel_check: %s\n", what.c_str());
    std::exit(2);
}

int64_t positive(const char* text, const char* name) {
    char* end = nullptr;
    const long long v = std::strtoll(text, &end, 10);
    if (end == text || *end != '\0' || v <= 0) fail(std::string(name) + " must be a positive integer, got " + text);
    return v;
}

template <typename T>
std::vector<T> read(int64_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    if (n > 0 && std::fread(v.data(), sizeof(T), v.size(), stdin) != v.size()) fail("stdin ended early");
    return v;
}

template <typename T>
void write(const std::vector<T>& v) {
    if (!v.empty() && std::fwrite(v.data(), sizeof(T), v.size(), stdout) != v.size()) fail("write failed");
}

int gates_of(const std::string& kind) {
    if (kind == "rnn") return 1;
    if (kind == "lstm") return 4;
    if (kind == "gru") return 3;
    fail("KIND must be rnn, lstm or gru, got " + kind);
}

template <typename T>
int step(const std::string& kind, int64_t m, int64_t n_a) {
    typedef api<T> A;
    const int64_t n = m * n_a, G = gates_of(kind);
    if (kind == "rnn") {
        auto xw = read<T>(n), hw = read<T>(n), dh = read<T>(n), dy = read<T>(n);
        std::vector<T> h(n), dz(n);
        A::rnn_forward(xw.data(), hw.data(), h.data(), n);
        A::rnn_backward(h.data(), dh.data(), dy.data(), dz.data(), n);
        write(h), write(dz);
    } else if (kind == "lstm") {
        auto xw = read<T>(G * n), hw = read<T>(G * n), c_prev = read<T>(n), dh = read<T>(n), dy = read<T>(n),
             dc = read<T>(n);
        std::vector<T> gates(4 * n), c(n), h(n), dz(4 * n), dc_prev(n);
        A::lstm_forward(xw.data(), hw.data(), c_prev.data(), (int)n_a, gates.data(), c.data(), h.data(), n);
        A::lstm_backward(gates.data(), c_prev.data(), c.data(), dh.data(), dy.data(), dc.data(), (int)n_a,
                         dz.data(), dc_prev.data(), n);
        write(gates), write(c), write(h), write(dz), write(dc_prev);
    } else {
        auto xw = read<T>(G * n), hw = read<T>(G * n), b_hn = read<T>(n_a), h_prev = read<T>(n), dh = read<T>(n),
             dy = read<T>(n);
        std::vector<T> saved(4 * n), h(n), dxw(G * n), dhw(G * n), dh_direct(n);
        A::gru_forward(xw.data(), hw.data(), b_hn.data(), h_prev.data(), (int)n_a, saved.data(), h.data(), n);
        A::gru_backward(saved.data(), h_prev.data(), dh.data(), dy.data(), (int)n_a, dxw.data(), dhw.data(),
                        dh_direct.data(), n);
        write(saved), write(h), write(dxw), write(dhw), write(dh_direct);
    }
    return 0;
}

template <typename T>
int packed(int64_t M, int64_t K, int64_t N, int beta) {
    typedef api<T> A;
    auto a = read<T>(M * K), b = read<T>(K * N), c = read<T>(M * N);
    std::vector<T> panels(static_cast<size_t>(A::packed_size(K, N)));
    A::pack(b.data(), K, N, panels.data());
    A::packed_gemm(M, N, K, a.data(), K, panels.data(), T(beta), c.data(), N);
    write(c);
    return 0;
}

template <typename T>
int loop(const std::string& kind, int64_t Tn, int64_t m, int64_t n_a) {
    typedef api<T> A;
    const int64_t n = m * n_a, G = gates_of(kind), GN = G * n_a, S = kind == "rnn" ? 0 : 4;
    const int code = kind == "rnn" ? 0 : kind == "lstm" ? 1 : 2;
    auto xw = read<T>(Tn * m * GN), h0 = read<T>(n), c0 = read<T>(n), w_hhT = read<T>(n_a * GN),
         b_hn = read<T>(n_a), dy = read<T>(Tn * n), dh = read<T>(n), dc = read<T>(n);
    std::vector<T> s((Tn + 1) * n), c((Tn + 1) * n), saved(Tn * m * S * n_a + 1), hw(m * GN);
    std::memcpy(s.data(), h0.data(), n * sizeof(T));
    std::memcpy(c.data(), c0.data(), n * sizeof(T));
    // forward: h @ W_hh.T by W_hh.T (n_a, G n_a) packed; no BLAS function (the packed product serves)
    std::vector<T> packed_f(static_cast<size_t>(A::packed_size(n_a, GN)));
    A::pack(w_hhT.data(), n_a, GN, packed_f.data());
    A::forward_loop(code, nullptr, Tn, m, n_a, xw.data(), m * GN, s.data(), n, c.data(), n, saved.data(), m * S * n_a,
                    w_hhT.data(), b_hn.data(), hw.data(), packed_f.data());
    // backward: dz @ W_hh by W_hh (G n_a, n_a) packed
    std::vector<T> w_hh(GN * n_a);
    for (int64_t i = 0; i < n_a; ++i)
        for (int64_t j = 0; j < GN; ++j) w_hh[j * n_a + i] = w_hhT[i * GN + j];
    std::vector<T> packed_b(static_cast<size_t>(A::packed_size(GN, n_a)));
    A::pack(w_hh.data(), GN, n_a, packed_b.data());
    std::vector<T> dz(Tn * m * GN), dhw_gru(Tn * m * GN), work(4 * n);
    T* dhw = kind == "gru" ? dhw_gru.data() : dz.data();  // the product's left operand: dz but for the GRU
    A::backward_loop(code, nullptr, Tn, m, n_a, saved.data(), m * S * n_a, s.data(), n, c.data(), n, w_hh.data(),
                     dy.data(), n, dz.data(), m * GN, dhw, m * GN, dh.data(), dc.data(), work.data(), packed_b.data());
    saved.pop_back();
    write(s), write(c), write(saved), write(dz);
    write(kind == "gru" ? dhw_gru : dz);
    write(dh), write(dc);
    return 0;
}

template <typename T>
int run(int argc, char** argv) {
    const std::string mode = argv[1];
    if (mode == "step" && argc == 6) return step<T>(argv[2], positive(argv[4], "M"), positive(argv[5], "N_A"));
    if (mode == "packed" && argc == 7) {
        const std::string beta = argv[6];
        if (beta != "0" && beta != "1") fail("BETA must be 0 or 1, got " + beta);
        return packed<T>(positive(argv[3], "M"), positive(argv[4], "K"), positive(argv[5], "N"), beta == "1");
    }
    if (mode == "loop" && argc == 7)
        return loop<T>(argv[2], positive(argv[4], "T"), positive(argv[5], "M"), positive(argv[6], "N_A"));
    fail("usage: see the comment at the top of tests/native/kernel_check.cpp");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == "info") {
        std::printf("vecmath_vector %d\npacked_vector_bytes %d\n", xseq_vecmath_vector(), xseq_packed_vector_bytes());
        return 0;
    }
    if (argc < 3) fail("usage: see the comment at the top of tests/native/kernel_check.cpp");
    const std::string dtype = argv[1] == std::string("packed") ? argv[2] : argc > 3 ? argv[3] : "";
    if (dtype == "f32") return run<float>(argc, argv);
    if (dtype == "f64") return run<double>(argc, argv);
    fail("DTYPE must be f32 or f64, got " + dtype);
}
