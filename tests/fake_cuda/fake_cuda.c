/* A stand-in for the CUDA driver (libcuda.so.1) for machines without a GPU: it describes
 * FAKE_CUDA_DEVICES devices (0 when unset) with the entry points ranch's discovery calls,
 * so the tests can check discovery, pinning and `ranch::gpu()` end to end. Device i is a
 * "Fake GPU i" with UUID GPU-fa4e0000-0000-0000-0000-00000000000<i>, PCI bus 0x10 + i and
 * (i + 1) * 1 GiB of memory. FAKE_CUDA_INIT_ERROR makes cuInit fail with that code.
 * Device memory is host memory and every stream runs synchronously, so that cudarc's
 * buffers, copies and stream waits work for the NCCL tests (with fake_nccl.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct { char bytes[16]; } CUuuid;

static int count(void) {
    const char *n = getenv("FAKE_CUDA_DEVICES");
    return n ? atoi(n) : 0;
}

static int bad(CUdevice d) { return d < 0 || d >= count(); }

CUresult cuInit(unsigned int flags) {
    (void)flags;
    const char *e = getenv("FAKE_CUDA_INIT_ERROR");
    return e ? atoi(e) : 0;
}

CUresult cuDriverGetVersion(int *v) { *v = 12080; return 0; }

CUresult cuDeviceGetCount(int *n) { *n = count(); return 0; }

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    if (bad(ordinal)) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    *d = ordinal;
    return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (bad(d)) return 101;
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return 0;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    if (bad(d)) return 101;
    *bytes = (size_t)(d + 1) << 30;
    return 0;
}

static CUresult uuid(CUuuid *u, CUdevice d) {
    if (bad(d)) return 101;
    memset(u->bytes, 0, 16);
    u->bytes[0] = (char)0xfa;
    u->bytes[1] = 0x4e;
    u->bytes[15] = (char)d;
    return 0;
}

CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) { return uuid(u, d); }
CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return uuid(u, d); }

CUresult cuDeviceGetAttribute(int *v, int attribute, CUdevice d) {
    if (bad(d)) return 101;
    switch (attribute) {
    case 33: *v = 0x10 + d; return 0; /* PCI_BUS_ID */
    case 34: *v = 0; return 0;        /* PCI_DEVICE_ID */
    case 50: *v = 0; return 0;        /* PCI_DOMAIN_ID */
    case 75: *v = 9; return 0;        /* COMPUTE_CAPABILITY_MAJOR */
    case 76: *v = 0; return 0;        /* COMPUTE_CAPABILITY_MINOR */
    default: *v = 0; return 0;
    }
}

CUresult cuDeviceGetPCIBusId(char *id, int len, CUdevice d) {
    if (bad(d)) return 101;
    snprintf(id, (size_t)len, "00000000:%02X:00.0", 0x10 + d);
    return 0;
}

CUresult cuGetErrorString(CUresult e, const char **s) { (void)e; *s = "fake CUDA error"; return 0; }
CUresult cuGetErrorName(CUresult e, const char **s) { (void)e; *s = "CUDA_ERROR_FAKE"; return 0; }

/* Contexts: one pretend primary context per device (no memory, nothing runs on it), so
 * that `ranch::cuda::context()` and what follows it can be reached without a GPU. */
typedef void *CUcontext;
static char contexts[64];
static __thread CUcontext current;

CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d) {
    if (bad(d) || d >= 64) return 101;
    *ctx = &contexts[d];
    return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return bad(d) ? 101 : 0; }
CUresult cuCtxGetCurrent(CUcontext *ctx) { *ctx = current; return 0; }
CUresult cuCtxSetCurrent(CUcontext ctx) { current = ctx; return 0; }

/* Memory and streams: "device" pointers are host pointers, work is done when enqueued. */
typedef unsigned long long CUdeviceptr;
typedef void *CUstream;
typedef void *CUevent;
static char the_event;

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) {
    void *m = calloc(1, bytes ? bytes : 1);
    if (!m) return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    *p = (CUdeviceptr)m;
    return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)p); return 0; }
CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) { (void)s; memset((void *)p, v, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *h, size_t n, CUstream s) { (void)s; memcpy((void *)d, h, n); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void *h, CUdeviceptr d, size_t n, CUstream s) { (void)s; memcpy(h, (void *)d, n); return 0; }
CUresult cuStreamSynchronize(CUstream s) { (void)s; return 0; }
CUresult cuStreamQuery(CUstream s) { (void)s; return 0; }
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { (void)s; (void)e; (void)f; return 0; }
CUresult cuEventCreate(CUevent *e, unsigned int f) { (void)f; *e = &the_event; return 0; }
CUresult cuEventRecord(CUevent e, CUstream s) { (void)e; (void)s; return 0; }
CUresult cuEventSynchronize(CUevent e) { (void)e; return 0; }
CUresult cuEventDestroy_v2(CUevent e) { (void)e; return 0; }
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuCtxPushCurrent_v2(CUcontext c) { current = c; return 0; }
CUresult cuCtxPopCurrent_v2(CUcontext *c) { if (c) *c = current; return 0; }
