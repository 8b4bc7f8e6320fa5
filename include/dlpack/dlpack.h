/*
 * DLPack: the in-memory tensor descriptor shared by array libraries (PyTorch, JAX, CuPy, NumPy, ...).
 *
 * Written for unireward from the DLPack specification (https://dmlc.github.io/dlpack/latest/c_api.html), version
 * 0.8 (ABI version 1): the field order, field types and enumerator values below are the ABI and must not change.
 * Only the declarations unireward's C ABI needs are here (DLDevice, DLDataType, DLTensor, DLManagedTensor). The
 * include guard is DLPack's own, so a program that includes the upstream dlpack.h first gets that one, with the
 * same layout.
 */
#ifndef DLPACK_DLPACK_H_
#define DLPACK_DLPACK_H_

#include <stddef.h>
#include <stdint.h>

#define DLPACK_VERSION 80
#define DLPACK_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

/* Where a tensor's memory is. unireward accepts kDLCPU and kDLCUDA. */
typedef enum {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
} DLDeviceType;

/* A device: its type and its index among the devices of that type (the CUDA ordinal; 0 for the CPU). */
typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

/* The kind of an element. */
typedef enum {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U,
  kDLBool = 6U,
} DLDataTypeCode;

/* An element type: `code` (a DLDataTypeCode), `bits` per lane and `lanes` (1 for scalars). float32 is
 * {kDLFloat, 32, 1}, bfloat16 {kDLBfloat, 16, 1}, int64 {kDLInt, 64, 1}. */
typedef struct {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

/* A tensor descriptor; it does not own its memory. Element (i0, ..., in) is at byte
 * `(char*)data + byte_offset + sizeof(element) * sum_k ik * strides[k]`; `strides == NULL` means row-major
 * (compact). `shape` and `strides` point to `ndim` values each. */
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;

/* A DLTensor with its owner: the consumer calls `deleter(self)` when it is done with the memory. */
typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif  /* DLPACK_DLPACK_H_ */
