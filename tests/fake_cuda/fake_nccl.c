/* A stand-in for NCCL, built as libnccl.so.2 (NCCL's real file name, which cudarc does not
 * look for by itself), for machines without a GPU. Used with fake_cuda.c, whose "device"
 * memory is host memory.
 *
 * FAKE_NCCL unset: creating a unique id fails with ncclSystemError (2), so a test can tell
 * that ranks found and loaded the library.
 * FAKE_NCCL=works: communicators form, and each collective computes what it would if every
 * rank held the same data (a sum multiplies by the number of ranks, a gather repeats).
 * FAKE_NCCL=hang: collectives never complete, as when a peer died, until the communicator
 * is aborted (from another thread); they then return ncclRemoteError (6). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct { volatile int aborted; int rank; int n; } comm_t;
enum { ncclSuccess = 0, ncclSystemError = 2, ncclInvalidArgument = 4, ncclRemoteError = 6 };
enum { ncclFloat32 = 7, ncclSum = 0 };

static const char *mode(void) {
    const char *m = getenv("FAKE_NCCL");
    return m ? m : "";
}

int ncclGetUniqueId(ncclUniqueId *id) {
    if (strcmp(mode(), "") == 0) return ncclSystemError;
    memset(id->internal, 0, sizeof id->internal);
    strcpy(id->internal, "fake-nccl-id");
    return ncclSuccess;
}
const char *ncclGetErrorString(int result) { (void)result; return "fake NCCL"; }

int ncclCommInitRank(comm_t **comm, int n, ncclUniqueId id, int rank) {
    if (strcmp(id.internal, "fake-nccl-id") != 0) return ncclInvalidArgument;
    comm_t *c = calloc(1, sizeof *c);
    c->rank = rank;
    c->n = n;
    *comm = c;
    return ncclSuccess;
}

/* Never freed: another thread may still be inside a collective of an aborted communicator. */
int ncclCommAbort(comm_t *c) { c->aborted = 1; return ncclSuccess; }
int ncclCommDestroy(comm_t *c) { c->aborted = 1; return ncclSuccess; }
int ncclCommGetAsyncError(comm_t *c, int *e) { *e = c->aborted ? ncclRemoteError : ncclSuccess; return ncclSuccess; }

/* Blocks for ever in "hang" mode, until aborted; else says whether the call may go on. */
static int start(comm_t *c) {
    if (strcmp(mode(), "hang") == 0)
        while (!c->aborted) usleep(1000);
    return c->aborted ? ncclRemoteError : ncclSuccess;
}

static size_t size_of(int type) {
    static const size_t sizes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2};
    return type >= 0 && type < 10 ? sizes[type] : 1;
}

int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, comm_t *c, void *stream) {
    (void)stream;
    int r = start(c);
    if (r) return r;
    memmove(recv, send, count * size_of(type));
    if (type == ncclFloat32 && op == ncclSum)
        for (size_t i = 0; i < count; i++) ((float *)recv)[i] *= (float)c->n;
    return ncclSuccess;
}

int ncclBroadcast(const void *send, void *recv, size_t count, int type, int root, comm_t *c, void *stream) {
    (void)root; (void)stream;
    int r = start(c);
    if (r) return r;
    memmove(recv, send, count * size_of(type));
    return ncclSuccess;
}

int ncclAllGather(const void *send, void *recv, size_t count, int type, comm_t *c, void *stream) {
    (void)stream;
    int r = start(c);
    if (r) return r;
    size_t bytes = count * size_of(type);
    for (int i = 0; i < c->n; i++) memcpy((char *)recv + i * bytes, send, bytes);
    return ncclSuccess;
}

int ncclReduceScatter(const void *send, void *recv, size_t count, int type, int op, comm_t *c, void *stream) {
    (void)stream;
    int r = start(c);
    if (r) return r;
    size_t bytes = count * size_of(type);
    memmove(recv, (const char *)send + (size_t)c->rank * bytes, bytes);
    if (type == ncclFloat32 && op == ncclSum)
        for (size_t i = 0; i < count; i++) ((float *)recv)[i] *= (float)c->n;
    return ncclSuccess;
}
