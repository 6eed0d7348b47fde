/* A stand-in for NVML (libnvidia-ml.so.1) matching fake_cuda.c's devices: device i (found
 * by its UUID) has i + 1 GiB, half of it free, and is 10 * i percent busy. */
#include <stdlib.h>
#include <string.h>

typedef struct { unsigned version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
typedef int nvmlReturn_t;

static const char PREFIX[] = "GPU-fa4e0000-0000-0000-0000-0000000000";

nvmlReturn_t nvmlInit_v2(void) { return 0; }
nvmlReturn_t nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(nvmlReturn_t r) { (void)r; return "fake NVML error"; }

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device) {
    const char *n = getenv("FAKE_CUDA_DEVICES");
    int count = n ? atoi(n) : 0;
    if (strncmp(uuid, PREFIX, sizeof PREFIX - 1) != 0) return 6; /* NOT_FOUND */
    int i = (int)strtol(uuid + sizeof PREFIX - 1, NULL, 16);
    if (i < 0 || i >= count) return 6;
    *device = (void *)(long)(i + 1);
    return 0;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *device, nvmlMemory_v2_t *m) {
    unsigned long long total = (unsigned long long)(long)device << 30;
    m->total = total;
    m->free = total / 2;
    m->used = total - m->free;
    m->reserved = 0;
    return 0;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(void *device, nvmlUtilization_t *u) {
    u->gpu = 10 * (unsigned)((long)device - 1);
    u->memory = 0;
    return 0;
}
