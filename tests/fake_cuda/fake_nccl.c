/* A stand-in for NCCL (built as libnccl.so.2, NCCL's real file name, which cudarc does not
 * look for by itself): creating a unique id fails with ncclSystemError (2), so a test can
 * tell that ranks found and loaded it. */
int ncclGetUniqueId(void *id) { (void)id; return 2; }
const char *ncclGetErrorString(int result) { (void)result; return "fake NCCL"; }
