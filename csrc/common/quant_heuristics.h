// Launch shapes for the quantize / dequantize kernels of every family (FP8, INT8) (kept apart from the launchers so
// the choices can be read and tuned in one place).
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/quant_launch.h"

namespace lowbit {
namespace quant {
namespace detail {

struct RowsLaunch {
  int team = 1;             // threads per row (power of two)
  int threads = 256;        // threads per CTA (a multiple of team)
  int64_t seg_chunks = 0;   // chunks of one row per CTA
  int64_t nsegs = 1;        // segments per row
  int64_t grid = 0;         // CTAs (the kernels grid-stride beyond it)
};

constexpr int64_t kMaxGrid = int64_t(1) << 30;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int pow2_at_least(int64_t v) {
  int p = 1;
  while (p < v && p < (1 << 30)) p <<= 1;
  return p;
}

// Streaming kernels (static scales, per-group scales, dequantization): a team wide enough
// that one batch of `cache` chunks per thread covers the row, between min_team and 256
// threads; a row longer than 4 batches of a 256-thread team is cut into segments, one CTA
// each, so a single long row (a flattened tensor) still fills the GPU.
inline RowsLaunch plan_streaming(int64_t rows, int64_t nchunks, int cache, int min_team) {
  RowsLaunch l;
  l.team = std::min(kStreamThreads, std::max(min_team, pow2_at_least(ceil_div(nchunks, cache))));
  l.threads = kStreamThreads;
  l.seg_chunks = int64_t(l.team) * cache * 4;
  l.nsegs = std::max<int64_t>(1, ceil_div(nchunks, l.seg_chunks));
  const int64_t rows_per_cta = l.threads / l.team;
  l.grid = std::min(kMaxGrid, ceil_div(rows, rows_per_cta) * l.nsegs);
  return l;
}

// Per-row dynamic scales: the team holds the whole row in registers (`cache` chunks per
// thread) when it fits in kDynRowMaxThreads = 256 threads (16384 bf16/fp16 or 8192 fp32
// elements; longer rows read the rest again, from L2); short rows share a 256-thread CTA.
inline RowsLaunch plan_dyn_row(int64_t rows, int64_t nchunks, int cache) {
  RowsLaunch l;
  l.team = std::min(kDynRowMaxThreads, std::max(4, pow2_at_least(ceil_div(nchunks, cache))));
  l.threads = std::max(l.team, kStreamThreads);
  l.seg_chunks = nchunks;
  l.nsegs = 1;
  l.grid = std::min(kMaxGrid, ceil_div(rows, l.threads / l.team));
  return l;
}

// Grid-stride kernels over all chunks (per-tensor amax): enough CTAs for every SM to keep
// its loads in flight, few enough that the per-CTA atomics stay negligible.
inline int64_t plan_amax_grid(int64_t total_chunks, int threads, int cache, int sms) {
  const int64_t want = ceil_div(total_chunks, int64_t(threads) * cache);
  return std::max<int64_t>(1, std::min<int64_t>(want, int64_t(sms) * 8));
}

}  // namespace detail
}  // namespace quant
}  // namespace lowbit
