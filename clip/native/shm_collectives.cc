// The train step's collectives through shared memory, for the ranks of one job on one host (CPU backend), built
// and attached by clip/native/shm_collectives.py and run as MindSpore's `ops.Custom(func_type="aot")`.
//
// The segment holds a header and two sets of W slots of kChunk floats. A call walks its buffer a chunk at a time:
// every rank copies its chunk into its slot; barrier; then for a sum, rank r adds slice r of all W slots, in rank
// order, into slot 0; barrier; every rank copies slot 0 out (for a gather, every rank copies all W slots out).
// Consecutive chunks alternate between the two sets, so a rank copying a chunk in never overwrites one another
// rank is still copying out. Every element of a sum is added once, by one rank, so every rank gets the same bits.
//
// Each call first posts (count of calls, kind, size) and checks that every rank posted the same: ranks that
// disagree get an error, never a wrong result. Waiting spins briefly and then sleeps on a futex; while asleep
// it checks that every peer process is still alive, so a rank that died is an error here rather than a hang,
// and it gives up after the attach-time timeout, naming the peer that has not arrived, so a rank that is alive
// but makes no progress (stopped, deadlocked) is an error too.
//
// The segment has no name: clip/native/shm_collectives.py creates it as a memfd in rank 0 and the other ranks
// open it through /proc/<pid of rank 0>/fd/<n>; rank 0 writes a random token into the header that the others
// check, so a rank that opened some other file fails to attach rather than sharing the wrong memory.
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace {

constexpr int kMaxRanks = 64;
constexpr int64_t kChunk = 512 * 1024;  // floats per slot (2 MiB): a segment of 4 W MiB
constexpr int64_t kAlign = 16;          // slices start on 64-byte lines, so two ranks never write one line
constexpr int kSpins = 4000;

inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Peer {
  std::atomic<int64_t> pid;
  std::atomic<int64_t> calls;     // calls made so far, posted at the start of each
  std::atomic<int64_t> kind;      // that call's collective
  std::atomic<int64_t> size;      // and its size
  std::atomic<int64_t> barriers;  // barriers entered so far: who is behind when a wait times out
  char pad[24];
};

struct alignas(64) Header {
  std::atomic<uint32_t> arrived;
  std::atomic<uint32_t> generation;
  std::atomic<uint32_t> sleepers;
  std::atomic<uint32_t> failed;  // set by a rank that gives up, so the others stop waiting for it
  std::atomic<uint64_t> token;   // rank 0's, checked by the others when they attach
  char pad[40];
  Peer peers[kMaxRanks];
};

constexpr int64_t kHeaderBytes = (sizeof(Header) + 4095) / 4096 * 4096;

struct State {
  Header *header = nullptr;
  float *slots = nullptr;  // [2][W][kChunk]
  int64_t bytes = 0;
  int rank = 0, world = 0;
  int64_t calls = 0;
  int64_t barriers = 0;
  int64_t chunks = 0;      // chunks reduced so far, which picks the set
  int64_t timeout_ns = 0;  // how long a barrier waits for a live peer
  std::mutex lock;     // one call at a time per process
};

State state;

long Futex(std::atomic<uint32_t> *word, int op, uint32_t value, const timespec *timeout) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), op, value, timeout, nullptr, 0);
}

// Whether process `pid` has exited: gone, or a zombie its parent has not reaped yet.
bool Exited(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE *stat = std::fopen(path, "r");
  if (stat == nullptr) return kill(pid, 0) != 0 && errno == ESRCH;
  char text[512];
  const size_t n = std::fread(text, 1, sizeof(text) - 1, stat);
  std::fclose(stat);
  text[n] = '\0';
  const char *paren = std::strrchr(text, ')');  // the state follows the command name, which may hold spaces
  return paren != nullptr && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

// The first peer that has exited, or -1.
int DeadPeer() {
  for (int r = 0; r < state.world; ++r) {
    if (r != state.rank && Exited(static_cast<pid_t>(state.header->peers[r].pid.load()))) return r;
  }
  return -1;
}

// What /proc says process `pid` is doing, in words.
const char *ProcessState(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE *stat = std::fopen(path, "r");
  if (stat == nullptr) return "unknown state";
  char text[512];
  const size_t n = std::fread(text, 1, sizeof(text) - 1, stat);
  std::fclose(stat);
  text[n] = '\0';
  const char *paren = std::strrchr(text, ')');
  if (paren == nullptr || paren[1] != ' ') return "unknown state";
  switch (paren[2]) {
    case 'R': return "running";
    case 'S': return "sleeping";
    case 'D': return "in an uninterruptible wait";
    case 'T': return "stopped";
    case 't': return "stopped by a debugger";
    default: return "unknown state";
  }
}

int64_t Now() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// Marks the segment failed, wakes every waiter and prints one line: `what`, and the peer it is about if any.
bool Fail(const char *what, int peer, const char *detail = nullptr) {
  state.header->failed.store(1);
  state.header->generation.fetch_add(1);
  Futex(&state.header->generation, FUTEX_WAKE, INT_MAX, nullptr);
  if (peer >= 0) {
    std::fprintf(stderr, "error: shared-memory collective on rank %d: %s (rank %d, pid %lld%s%s)\n", state.rank, what,
                 peer, static_cast<long long>(state.header->peers[peer].pid.load()), detail ? ", " : "",
                 detail ? detail : "");
  } else {
    std::fprintf(stderr, "error: shared-memory collective on rank %d: %s\n", state.rank, what);
  }
  return false;
}

// The first peer that has entered fewer barriers than this rank: the one everybody waits for.
int BehindPeer() {
  for (int r = 0; r < state.world; ++r) {
    if (r != state.rank && state.header->peers[r].barriers.load() < state.barriers) return r;
  }
  return -1;
}

bool Barrier() {
  Header *h = state.header;
  const uint32_t generation = h->generation.load();
  if (h->failed.load()) return Fail("another rank failed", -1);
  h->peers[state.rank].barriers.store(++state.barriers);
  if (h->arrived.fetch_add(1) + 1 == static_cast<uint32_t>(state.world)) {
    h->arrived.store(0);
    h->generation.fetch_add(1);
    if (h->sleepers.load() > 0) Futex(&h->generation, FUTEX_WAKE, INT_MAX, nullptr);
    return true;
  }
  for (int i = 0; i < kSpins && h->generation.load() == generation; ++i) Relax();
  const timespec tick = {0, 200 * 1000 * 1000};
  const int64_t deadline = Now() + state.timeout_ns;
  while (h->generation.load() == generation) {
    h->sleepers.fetch_add(1);
    Futex(&h->generation, FUTEX_WAIT, generation, &tick);
    h->sleepers.fetch_sub(1);
    if (h->generation.load() != generation) break;
    const int dead = DeadPeer();
    if (dead >= 0) return Fail("a peer process exited", dead);
    if (Now() >= deadline && h->generation.load() == generation) {
      const int behind = BehindPeer();
      char what[160];
      std::snprintf(what, sizeof(what), "a peer made no progress for %.6g s (CLIP_SHM_COLLECTIVES_TIMEOUT)",
                    static_cast<double>(state.timeout_ns) / 1e9);
      const pid_t pid = behind >= 0 ? static_cast<pid_t>(h->peers[behind].pid.load()) : 0;
      return Fail(what, behind, behind >= 0 ? ProcessState(pid) : nullptr);
    }
  }
  if (h->failed.load()) return Fail("another rank failed", -1);
  return true;
}

int64_t Count(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

int64_t ItemSize(const char *dtype) {
  const std::string name(dtype);
  if (name == "float64" || name == "int64" || name == "uint64") return 8;
  if (name == "float32" || name == "int32" || name == "uint32") return 4;
  if (name == "float16" || name == "bfloat16" || name == "int16" || name == "uint16") return 2;
  if (name == "int8" || name == "uint8" || name == "bool") return 1;
  return 0;
}

enum Kind : int64_t { kSum = 1, kGather = 2 };

// Posts this call, waits for every rank and checks that all make the same one: the same count of calls so far,
// the same kind and the same size. A mismatch is an error on every rank, never a wrong result.
bool Start(Kind kind, int64_t size) {
  if (state.header == nullptr) {
    std::fprintf(stderr, "error: shared-memory collective called before ShmAttach\n");
    return false;
  }
  Peer &self = state.header->peers[state.rank];
  self.calls.store(++state.calls);
  self.kind.store(kind);
  self.size.store(size);
  if (!Barrier()) return false;
  for (int r = 0; r < state.world; ++r) {
    const Peer &peer = state.header->peers[r];
    if (peer.calls.load() != state.calls || peer.kind.load() != kind || peer.size.load() != size) {
      return Fail("ranks disagree on the order, kind or sizes of their collectives", r);
    }
  }
  // the posts must stay until every rank has read them: a call without chunks waits here once more
  return size > 0 || Barrier();
}

// The set of slots for the next chunk: consecutive chunks alternate, across calls too.
char *NextSet() {
  const int64_t set_bytes = state.world * kChunk * static_cast<int64_t>(sizeof(float));
  return reinterpret_cast<char *>(state.slots) + (state.chunks++ % 2) * set_bytes;
}

}  // namespace

// Maps the segment at `path` (created and sized by clip/native/shm_collectives.py) for rank `rank` of `world`;
// rank 0 attaches first and writes `token`, which every other rank must find there. A barrier waits at most
// `timeout_seconds` for a live peer. Returns 0, EXDEV when the token differs (another file), or an errno code.
extern "C" int ShmAttach(const char *path, int rank, int world, uint64_t token, double timeout_seconds) {
  std::lock_guard<std::mutex> guard(state.lock);
  if (world < 2 || world > kMaxRanks || rank < 0 || rank >= world || !(timeout_seconds > 0)) return EINVAL;
  const int64_t bytes = kHeaderBytes + 2 * world * kChunk * static_cast<int64_t>(sizeof(float));
  const int fd = open(path, O_RDWR);
  if (fd < 0) return errno;
  struct stat info;
  if (fstat(fd, &info) != 0 || info.st_size != bytes) {
    close(fd);
    return EBADF;
  }
  void *base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (base == MAP_FAILED) return err;
  Header *header = static_cast<Header *>(base);
  if (rank == 0) {
    header->token.store(token);
  } else if (header->token.load() != token) {
    munmap(base, bytes);
    return EXDEV;
  }
  if (state.header != nullptr) munmap(state.header, state.bytes);
  state.header = static_cast<Header *>(base);
  state.slots = reinterpret_cast<float *>(static_cast<char *>(base) + kHeaderBytes);
  state.bytes = bytes;
  state.rank = rank;
  state.world = world;
  state.calls = 0;
  state.barriers = 0;
  state.chunks = 0;
  state.timeout_ns = timeout_seconds >= 9e9 ? INT64_MAX / 2 : static_cast<int64_t>(timeout_seconds * 1e9);
  state.header->peers[rank].pid.store(getpid());
  return 0;
}

// The segment size for `world` ranks, so Python can create the file at the right size.
extern "C" int64_t ShmBytes(int world) {
  return kHeaderBytes + 2 * static_cast<int64_t>(world) * kChunk * static_cast<int64_t>(sizeof(float));
}

// Sum over ranks. Input x (float32, any shape), output y (same shape); y is the same on every rank.
extern "C" int ShmAllReduce(int nparam, void **params, int *ndims, int64_t **shapes, const char **, void *,
                            void *) {
  if (nparam != 2) return 1;
  std::lock_guard<std::mutex> guard(state.lock);
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = Count(ndims[0], shapes[0]);
  if (!Start(kSum, n)) return 1;
  const int world = state.world, rank = state.rank;
  for (int64_t offset = 0; offset < n; offset += kChunk) {
    const int64_t len = n - offset < kChunk ? n - offset : kChunk;
    float *set = reinterpret_cast<float *>(NextSet());
    std::memcpy(set + rank * kChunk, x + offset, len * sizeof(float));
    if (!Barrier()) return 1;
    int64_t slice = (len + world - 1) / world;
    slice = (slice + kAlign - 1) / kAlign * kAlign;
    const int64_t lo = rank * slice < len ? rank * slice : len;
    const int64_t hi = lo + slice < len ? lo + slice : len;
    float *out = set;  // slot 0
    for (int r = 1; r < world; ++r) {
      const float *in = set + r * kChunk;
      for (int64_t i = lo; i < hi; ++i) out[i] += in[i];
    }
    if (!Barrier()) return 1;
    std::memcpy(y + offset, set, len * sizeof(float));
  }
  return 0;
}

// Concatenation over ranks along the first axis. Input x (any dtype and shape [B, ...]), output y [W B, ...]:
// rank r's x at rows r B ... (r + 1) B - 1, bit for bit.
extern "C" int ShmAllGather(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                            void *) {
  if (nparam != 2) return 1;
  std::lock_guard<std::mutex> guard(state.lock);
  const int64_t item = ItemSize(dtypes[0]);
  if (item == 0) {
    std::fprintf(stderr, "error: shared-memory all-gather: unsupported dtype %s\n", dtypes[0]);
    return 1;
  }
  const char *x = static_cast<const char *>(params[0]);
  char *y = static_cast<char *>(params[1]);
  const int64_t bytes = Count(ndims[0], shapes[0]) * item;
  const int64_t slot_bytes = kChunk * static_cast<int64_t>(sizeof(float));
  if (!Start(kGather, bytes)) return 1;
  for (int64_t offset = 0; offset < bytes; offset += slot_bytes) {
    const int64_t len = bytes - offset < slot_bytes ? bytes - offset : slot_bytes;
    char *set = NextSet();
    std::memcpy(set + state.rank * slot_bytes, x + offset, len);
    if (!Barrier()) return 1;
    for (int r = 0; r < state.world; ++r) std::memcpy(y + r * bytes + offset, set + r * slot_bytes, len);
  }
  return 0;
}
