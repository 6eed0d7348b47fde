/* Open MPI reference for bench/collectives.py: times MPI_Allreduce (float sum) of 4 KiB,
 * 1 MiB and 64 MiB, MPI_Bcast of 4 KiB and 64 MiB, MPI_Barrier, and the CPU time ranks
 * spend waiting in a barrier while rank 0 computes for argv[1] seconds; rank 0 prints one
 * JSON line. With argv[1] "start", it only starts MPI and meets every rank once (what a
 * launch of an MPI program costs, for bench/hosts.py). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median over `rounds` of the mean time of `iters` calls: robust to a noisy machine. */
/* what: 0 all-reduce, 1 broadcast, 2 barrier */
static double timed(int what, float *buf, int n, int rounds, int iters) {
    double t[64];
    for (int r = 0; r < rounds; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; i++) {
            if (what == 2) MPI_Barrier(MPI_COMM_WORLD);
            else if (what) MPI_Bcast(buf, n, MPI_FLOAT, 0, MPI_COMM_WORLD);
            else MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        }
        t[r] = (MPI_Wtime() - t0) / iters;
    }
    qsort(t, rounds, sizeof(double), cmp);
    return t[rounds / 2];
}

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc > 1 && strcmp(argv[1], "start") == 0) {
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_Finalize();
        return 0;
    }
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    double compute = argc > 1 ? atof(argv[1]) : 10.0;
    int scale = argc > 2 ? atoi(argv[2]) : 1; /* divides the iteration counts */
    int small = 1024, mid = 256 << 10, large = 16 << 20; /* floats: 4 KiB, 1 MiB, 64 MiB */
    float *s = malloc(small * sizeof(float)), *m = malloc(mid * sizeof(float)), *l = malloc((size_t)large * sizeof(float));
    for (int i = 0; i < small; i++) s[i] = 1.0f;
    for (int i = 0; i < mid; i++) m[i] = 1.0f;
    for (int i = 0; i < large; i++) l[i] = 1.0f;
    timed(0, s, small, 1, 100); /* warm up */
    timed(0, l, large, 1, 1);
    double t_small = timed(0, s, small, 5, 400 / scale);
    double t_mid = timed(0, m, mid, 11, 20 / scale);
    double t_large = timed(0, l, large, 21 / scale, 1);
    double t_bcast = timed(1, s, small, 5, 400 / scale);
    double t_bcast_large = timed(1, l, large, 21 / scale, 1);
    double t_barrier = timed(2, s, 0, 5, 400 / scale);
    /* Waiting: rank 0 computes, the others wait in a barrier; their CPU time per second. */
    MPI_Barrier(MPI_COMM_WORLD);
    double c0 = cpu_seconds(), w0 = MPI_Wtime();
    if (rank == 0) {
        volatile double x = 0;
        while (MPI_Wtime() - w0 < compute) x += 1.0;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double busy = rank == 0 ? 0 : (cpu_seconds() - c0) / (MPI_Wtime() - w0), most = 0;
    MPI_Reduce(&busy, &most, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("{\"allreduce_4k\": %g, \"allreduce_1m\": %g, \"allreduce_64m\": %g, \"bcast_4k\": %g, "
               "\"bcast_64m\": %g, \"barrier\": %g, \"waiting_cpu\": %g}\n",
               t_small, t_mid, t_large, t_bcast, t_bcast_large, t_barrier, most);
    MPI_Finalize();
    return 0;
}
