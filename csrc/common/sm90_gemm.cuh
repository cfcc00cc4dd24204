// What the sm_90a GEMMs (wgmma, swapab) share beyond the generic sm_90a primitives: the
// cached TMA maps of their operands and the maps over block scales.
#pragma once
#include "common/epilogue.cuh"
#include "common/gemm_args.h"
#include "common/sm90.cuh"

namespace lowbit {
namespace sm90 {

// The cache slot of an operand's map, or null when the launch keeps no cache.
inline TensorMapCache::Slot* map_slot(const GemmArgs& p, TensorMapCache::Role role) {
  return p.map_cache != nullptr ? p.map_cache->slot(role) : nullptr;
}

// Maps over the block scales of a GEMM's block-scaled operands: a's [M, ceil(K/128)] in boxes
// of a_box_rows x 4 steps, b's [ceil(N/128), ceil(K/128)] in boxes of 1 x 4. False when TMA
// cannot address one of them (the kernel then loads them).
inline bool make_block_scale_maps(CUtensorMap* sa, CUtensorMap* sb, const GemmArgs& p,
                                  int a_box_rows) {
  const int kb = (p.K + 127) / 128;
  return (p.a_mode != ScaleMode::kBlock ||
          make_map_scales(sa, p.a_scale, p.M, kb, p.a_scale_ld, a_box_rows,
                          map_slot(p, TensorMapCache::kAScale))) &&
         (p.b_mode != ScaleMode::kBlock ||
          make_map_scales(sb, p.b_scale, (p.N + 127) / 128, kb, p.b_scale_ld, 1,
                          map_slot(p, TensorMapCache::kBScale)));
}

}  // namespace sm90
}  // namespace lowbit
