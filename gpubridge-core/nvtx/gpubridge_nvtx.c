/*
 * gpubridge's NVTX ranges: a thin C layer over NVIDIA's header-only NVTX 3 (vendored under
 * include/, Apache-2.0 WITH LLVM-exception, see LICENSE.txt). With no tool attached every call is
 * a no-op after the first; under Nsight Systems (or any NVTX injection) the ranges appear in the
 * "gpubridge" domain.
 */
#include <stdint.h>
#include "nvtx3/nvToolsExt.h"

void *gpubridge_nvtx_domain(const char *name) { return (void *)nvtxDomainCreateA(name); }

void *gpubridge_nvtx_register(void *domain, const char *s) {
    return (void *)nvtxDomainRegisterStringA((nvtxDomainHandle_t)domain, s);
}

void gpubridge_nvtx_name_category(void *domain, uint32_t category, const char *name) {
    nvtxDomainNameCategoryA((nvtxDomainHandle_t)domain, category, name);
}

uint64_t gpubridge_nvtx_start(void *domain, void *message, uint32_t argb, uint32_t category,
                              uint64_t payload) {
    nvtxEventAttributes_t a;
    memset(&a, 0, sizeof a);
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.category = category;
    a.colorType = NVTX_COLOR_ARGB;
    a.color = argb;
    a.payloadType = NVTX_PAYLOAD_TYPE_UNSIGNED_INT64;
    a.payload.ullValue = payload;
    a.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
    a.message.registered = (nvtxStringHandle_t)message;
    return nvtxDomainRangeStartEx((nvtxDomainHandle_t)domain, &a);
}

void gpubridge_nvtx_end(void *domain, uint64_t id) {
    nvtxDomainRangeEnd((nvtxDomainHandle_t)domain, (nvtxRangeId_t)id);
}
