// Test driver for the host build's kernels on another target (used by tests/test_native_targets.py; runs
// natively or under qemu-user, e.g. an aarch64 build under qemu-aarch64).
//
// Build: compile the host build's translation unit (xseq.ops.native_source.host_source(), -I the native
// folder) to an object with the build's flags, compile this file, and link the two: the harness calls the
// library's own C entry points, the ones Python calls through ctypes. Link without -ffast-math (it would
// add crtfastmath.o: flush-to-zero for the whole process), with -pthread (units mode runs lanes on threads).
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
//       the lanes' time loops (xseq_forward_loop_*, then xseq_backward_loop_*), one lane of rows, with the
//       weight packed and no BLAS function: the forward by W_hh.T packed (xseq_pack_* of W_hh.T, transposed
//       here), the backward by W_hh packed:
//       in xw (T, M, G N_A), h0, c0 (M, N_A), w_hh (G N_A, N_A), b_hn (N_A), dy (T, M, N_A), dh_T, dc_T (M, N_A);
//       out s (T + 1, M, N_A), c (T + 1, M, N_A), saved (T, M, S N_A) with S = 0, 4, 4, dz (T, M, G N_A),
//       dhw (T, M, G N_A) (dz again but for the GRU), dh0, dc0 (M, N_A)
//   kernel_check units KIND DTYPE T M N_A LANES
//       the same loops by LANES lanes of units (2 <= LANES <= N_A) on as many threads: lane k owns the hidden
//       units [k N_A / LANES, (k + 1) N_A / LANES) of every row, packs its own columns of the weight and meets
//       the others at one barrier each step (xseq_lane_* on each lane's job, the forward lanes, then the
//       backward ones); in and out as for loop
//   kernel_check units KIND DTYPE T M N_A LANES N_X
//       the same, the lanes making the products with W_ih too (lane_job's x1 and dx): each lane computes its
//       columns of xw = x1 @ [w_ih b]^T before its forward loop and columns [k N_X / LANES, (k + 1) N_X / LANES)
//       of dx = dz @ w_ih after its backward loop; in as for loop (xw is overwritten), then x1 (T M, N_X + 1),
//       w_ih (G N_A, N_X), b (G N_A); out as for loop, then xw (T, M, G N_A) and dx (T M, N_X)
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

extern "C" {
int xseq_vecmath_vector();
int xseq_packed_vector_bytes();
int64_t xseq_layout(const char* struct_name, int64_t i, const char** name, int64_t* offset, int64_t* size);
}

// xseq_loops::lane_job and lane_barrier (xseq/ops/native/loops.h) restated, field for field: the harness uses
// the library through its C entry points only, as Python does (xseq.ops.native_layout); units mode checks
// this layout against the one the library reports (xseq_layout) before it runs a lane.
struct lane_job {
    int64_t backward, kind, T, m, n_a;
    void *gemm, *xw, *s, *c, *g, *dy, *dz, *dhw, *w, *b_hn, *hw, *dh, *dc, *work, *packed;
    int64_t xw_step, s_step, c_step, g_step, dy_step, z_step, hw_step;
    int64_t u0, u1;
    void* barrier;
    void *x1, *w_ih, *b_in, *packed_in, *dx;
    int64_t n_x, i0, i1;
};
struct lane_barrier {
    int64_t parties, pad0[7], count, pad1[7];
    int32_t phase, sleepers;
    int64_t sleeps, slept_ns, pad2[5];
};
static_assert(sizeof(void*) == 8 && sizeof(lane_job) == 38 * 8, "lane_job: 38 fields of 8 bytes");
static_assert(sizeof(lane_barrier) == 24 * 8, "lane_barrier: three 64-byte cache lines");

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
                               const T* w_hh, const T* b_hn, T* hw, const T* packed);                             \
    void xseq_backward_loop_##T(int kind, void* gemm, int64_t Tn, int64_t m, int64_t n_a, const T* g,             \
                                int64_t g_step, const T* s, int64_t s_step, const T* c, int64_t c_step,           \
                                const T* w_hh, const T* dy, int64_t dy_step, T* dz, int64_t z_step, T* dhw,       \
                                int64_t hw_step, T* dh, T* dc, T* work, const T* packed);                         \
    void xseq_lane_##T(void* job);                                                                                \
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
        static constexpr auto& lane = xseq_lane_##T;                                                              \
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

// The time loops' arrays (loop and units modes): the inputs read from stdin in the order the usage lists,
// the outputs and the scratch the loops write.
template <typename T>
struct loop_data {
    const int64_t Tn, m, n_a, n, G, GN, S;
    const int code;  // 0 RNN, 1 LSTM, 2 GRU
    std::vector<T> xw, h0, c0, w_hh, b_hn, dy, dh, dc;
    // saved has one element more: the RNN saves nothing (S = 0) and a loop still gets a pointer
    std::vector<T> s, c, saved, hw, dz, dhw_gru, work;

    loop_data(const std::string& kind, int64_t Tn_, int64_t m_, int64_t n_a_)
        : Tn(Tn_), m(m_), n_a(n_a_), n(m_ * n_a_), G(gates_of(kind)), GN(G * n_a_), S(kind == "rnn" ? 0 : 4),
          code(kind == "rnn" ? 0 : kind == "lstm" ? 1 : 2) {
        xw = read<T>(Tn * m * GN), h0 = read<T>(n), c0 = read<T>(n), w_hh = read<T>(GN * n_a), b_hn = read<T>(n_a),
        dy = read<T>(Tn * n), dh = read<T>(n), dc = read<T>(n);
        s.assign((Tn + 1) * n, T(0)), c.assign((Tn + 1) * n, T(0)), saved.assign(Tn * m * S * n_a + 1, T(0));
        hw.assign(m * GN, T(0)), dz.assign(Tn * m * GN, T(0)), dhw_gru.assign(Tn * m * GN, T(0));
        work.assign(4 * n, T(0));
        std::memcpy(s.data(), h0.data(), n * sizeof(T));
        std::memcpy(c.data(), c0.data(), n * sizeof(T));
    }
    // the backward product's left operand: dz but for the GRU
    T* dhw() { return code == 2 ? dhw_gru.data() : dz.data(); }
    void write_outputs() {
        saved.pop_back();
        write(s), write(c), write(saved), write(dz);
        write(code == 2 ? dhw_gru : dz);
        write(dh), write(dc);
    }
};

template <typename T>
int loop(const std::string& kind, int64_t Tn, int64_t m, int64_t n_a) {
    typedef api<T> A;
    loop_data<T> d(kind, Tn, m, n_a);
    const int64_t n = d.n, GN = d.GN, S = d.S;
    // forward: h @ W_hh.T by W_hh.T (n_a, G n_a) packed; no BLAS function, so the loop never reads W_hh itself
    std::vector<T> w_hhT(n_a * GN);
    for (int64_t i = 0; i < GN; ++i)
        for (int64_t j = 0; j < n_a; ++j) w_hhT[j * GN + i] = d.w_hh[i * n_a + j];
    std::vector<T> packed_f(static_cast<size_t>(A::packed_size(n_a, GN)));
    A::pack(w_hhT.data(), n_a, GN, packed_f.data());
    A::forward_loop(d.code, nullptr, Tn, m, n_a, d.xw.data(), m * GN, d.s.data(), n, d.c.data(), n, d.saved.data(),
                    m * S * n_a, d.w_hh.data(), d.b_hn.data(), d.hw.data(), packed_f.data());
    // backward: dz @ W_hh by W_hh (G n_a, n_a) packed
    std::vector<T> packed_b(static_cast<size_t>(A::packed_size(GN, n_a)));
    A::pack(d.w_hh.data(), GN, n_a, packed_b.data());
    A::backward_loop(d.code, nullptr, Tn, m, n_a, d.saved.data(), m * S * n_a, d.s.data(), n, d.c.data(), n,
                     d.w_hh.data(), d.dy.data(), n, d.dz.data(), m * GN, d.dhw(), m * GN, d.dh.data(), d.dc.data(),
                     d.work.data(), packed_b.data());
    d.write_outputs();
    return 0;
}

struct field {
    const char* name;
    int64_t offset, size;
};
#define HARNESS_FIELD(S, f) field{#f, static_cast<int64_t>(offsetof(S, f)), static_cast<int64_t>(sizeof(S::f))}

// Fails unless the library's layout of struct_name (xseq_layout) is the harness's: the same size and fields.
template <size_t N>
void check_layout(const char* struct_name, const field (&fields)[N], int64_t size) {
    const char* name = nullptr;
    int64_t offset = 0, bytes = 0;
    for (size_t i = 0; i <= N; ++i) {
        const int64_t total = xseq_layout(struct_name, static_cast<int64_t>(i), &name, &offset, &bytes);
        const bool same = total == size && (i == N ? name == nullptr
                                                   : name != nullptr && std::strcmp(name, fields[i].name) == 0 &&
                                                         offset == fields[i].offset && bytes == fields[i].size);
        if (!same)
            fail(std::string("the library's ") + struct_name + " (xseq_layout) is not the harness's at field " +
                 std::to_string(i) + ": update the harness's copy from xseq/ops/native/loops.h");
    }
}

void check_layouts() {
    static constexpr field job[] = {
        HARNESS_FIELD(lane_job, backward), HARNESS_FIELD(lane_job, kind),    HARNESS_FIELD(lane_job, T),
        HARNESS_FIELD(lane_job, m),        HARNESS_FIELD(lane_job, n_a),     HARNESS_FIELD(lane_job, gemm),
        HARNESS_FIELD(lane_job, xw),       HARNESS_FIELD(lane_job, s),       HARNESS_FIELD(lane_job, c),
        HARNESS_FIELD(lane_job, g),        HARNESS_FIELD(lane_job, dy),      HARNESS_FIELD(lane_job, dz),
        HARNESS_FIELD(lane_job, dhw),      HARNESS_FIELD(lane_job, w),       HARNESS_FIELD(lane_job, b_hn),
        HARNESS_FIELD(lane_job, hw),       HARNESS_FIELD(lane_job, dh),      HARNESS_FIELD(lane_job, dc),
        HARNESS_FIELD(lane_job, work),     HARNESS_FIELD(lane_job, packed),  HARNESS_FIELD(lane_job, xw_step),
        HARNESS_FIELD(lane_job, s_step),   HARNESS_FIELD(lane_job, c_step),  HARNESS_FIELD(lane_job, g_step),
        HARNESS_FIELD(lane_job, dy_step),  HARNESS_FIELD(lane_job, z_step),  HARNESS_FIELD(lane_job, hw_step),
        HARNESS_FIELD(lane_job, u0),       HARNESS_FIELD(lane_job, u1),      HARNESS_FIELD(lane_job, barrier),
        HARNESS_FIELD(lane_job, x1),       HARNESS_FIELD(lane_job, w_ih),    HARNESS_FIELD(lane_job, b_in),
        HARNESS_FIELD(lane_job, packed_in), HARNESS_FIELD(lane_job, dx),      HARNESS_FIELD(lane_job, n_x),
        HARNESS_FIELD(lane_job, i0),       HARNESS_FIELD(lane_job, i1),
    };
    static constexpr field barrier[] = {
        HARNESS_FIELD(lane_barrier, parties), HARNESS_FIELD(lane_barrier, pad0),  HARNESS_FIELD(lane_barrier, count),
        HARNESS_FIELD(lane_barrier, pad1),    HARNESS_FIELD(lane_barrier, phase), HARNESS_FIELD(lane_barrier, sleepers),
        HARNESS_FIELD(lane_barrier, sleeps),  HARNESS_FIELD(lane_barrier, slept_ns),
        HARNESS_FIELD(lane_barrier, pad2),
    };
    check_layout("lane_job", job, sizeof(lane_job));
    check_layout("lane_barrier", barrier, sizeof(lane_barrier));
}

template <typename T>
int units(const std::string& kind, int64_t Tn, int64_t m, int64_t n_a, int64_t lanes, int64_t n_x) {
    typedef api<T> A;
    if (lanes < 2 || lanes > n_a)
        fail("LANES must be 2 .. N_A = " + std::to_string(n_a) + " (every lane at least one unit), got " +
             std::to_string(lanes));
    check_layouts();
    loop_data<T> d(kind, Tn, m, n_a);
    const int64_t n = d.n, GN = d.GN, S = d.S;
    // the input's products (n_x > 0): x1, w_ih, b read after the loop's inputs; dx written by the lanes
    std::vector<T> x1, w_ih, b, dx;
    if (n_x > 0) x1 = read<T>(Tn * m * (n_x + 1)), w_ih = read<T>(GN * n_x), b = read<T>(GN), dx.assign(Tn * m * n_x, T(0));
    std::vector<std::vector<T>> packed_in(static_cast<size_t>(lanes));
    lane_barrier barrier;
    std::vector<lane_job> jobs(static_cast<size_t>(lanes));
    std::vector<std::vector<T>> packed(static_cast<size_t>(lanes));
    // every lane on a thread of its own, meeting at a barrier zeroed for this loop (as Python makes one a loop)
    auto run_lanes = [&]() {
        std::memset(&barrier, 0, sizeof barrier);
        barrier.parties = lanes;
        std::vector<std::thread> threads;
        for (auto& job : jobs) threads.emplace_back(A::lane, static_cast<void*>(&job));
        for (auto& thread : threads) thread.join();
    };
    auto job_of = [&](int64_t backward, int64_t k) {
        lane_job j{};
        j.backward = backward, j.kind = d.code, j.T = Tn, j.m = m, j.n_a = n_a, j.gemm = nullptr;
        j.u0 = k * n_a / lanes, j.u1 = (k + 1) * n_a / lanes, j.barrier = &barrier;
        j.s = d.s.data(), j.c = d.c.data(), j.g = d.saved.data(), j.w = d.w_hh.data();  // W_hh (G n_a, n_a)
        j.s_step = n, j.c_step = n, j.g_step = m * S * n_a;
        // room for the lane's own packed columns: of W_hh.T, a block per gate forward; of W_hh backward
        const int64_t U = j.u1 - j.u0;
        packed[k].assign(static_cast<size_t>(backward ? A::packed_size(GN, U) : d.G * A::packed_size(n_a, U)), T(0));
        j.packed = packed[k].data();
        return j;
    };
    for (int64_t k = 0; k < lanes; ++k) {
        lane_job j = job_of(0, k);
        j.xw = d.xw.data(), j.xw_step = m * GN, j.b_hn = d.b_hn.data(), j.hw = d.hw.data();  // hw: (m, G n_a), shared
        if (n_x > 0) {  // G blocks of (n_x + 1, U) of [w_ih b]^T, packed by the lane
            packed_in[k].assign(static_cast<size_t>(d.G * A::packed_size(n_x + 1, j.u1 - j.u0)), T(0));
            j.x1 = x1.data(), j.w_ih = w_ih.data(), j.b_in = b.data(), j.packed_in = packed_in[k].data(), j.n_x = n_x;
        }
        jobs[k] = j;
    }
    run_lanes();
    for (int64_t k = 0; k < lanes; ++k) {
        lane_job j = job_of(1, k);
        j.dy = d.dy.data(), j.dy_step = n, j.dz = d.dz.data(), j.z_step = m * GN, j.dhw = d.dhw(), j.hw_step = m * GN;
        j.dh = d.dh.data(), j.dc = d.dc.data(), j.work = d.work.data();  // work: 4 (m, n_a), shared
        if (n_x > 0) {  // columns [i0, i1) of dx, by those columns of w_ih packed (at least one value of room)
            j.i0 = k * n_x / lanes, j.i1 = (k + 1) * n_x / lanes;
            packed_in[k].assign(static_cast<size_t>(A::packed_size(GN, j.i1 - j.i0)) + 1, T(0));
            j.dx = dx.data(), j.w_ih = w_ih.data(), j.packed_in = packed_in[k].data(), j.n_x = n_x;
        }
        jobs[k] = j;
    }
    run_lanes();
    d.write_outputs();
    if (n_x > 0) write(d.xw), write(dx);
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
    if (mode == "units" && (argc == 8 || argc == 9))
        return units<T>(argv[2], positive(argv[4], "T"), positive(argv[5], "M"), positive(argv[6], "N_A"),
                        positive(argv[7], "LANES"), argc == 9 ? positive(argv[8], "N_X") : 0);
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
