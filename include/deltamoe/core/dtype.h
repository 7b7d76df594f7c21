// Element types and scalar conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace deltamoe {

/// Element type of a Tensor. `int8` is a signed byte as a Tensor element; as the weight dtype of
/// a kernels::PackedLinear (and of the MoE layer and LM built on it) it means weights quantised
/// to int8, symmetric, with one f16 scale per 32 consecutive inputs (see PackedLinear).
enum class DType : uint8_t { f32, bf16, f16, i32, int8 };

/// Bytes per element.
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::i32:
      return 4;
    case DType::bf16:
      return 2;
    case DType::f16:
      return 2;
    case DType::int8:
      return 1;
  }
  return 0;
}

/// Lower-case name ("f32", "bf16", "f16", "i32", "int8").
std::string_view dtype_name(DType t);
/// Parses "f32" / "bf16" / "f16" / "i32" / "int8"; throws Error("dtype", ...) otherwise.
DType parse_dtype(std::string_view name);

/// bfloat16 bits from f32, round to nearest even (NaN stays NaN).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
/// f32 from bfloat16 bits (exact).
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
/// IEEE half bits from f32, round to nearest even, with overflow to inf and subnormals.
uint16_t f32_to_f16(float f);
/// f32 from IEEE half bits (exact).
float f16_to_f32(uint16_t h);

}  // namespace deltamoe
