/* Open MPI reference for bench/collectives.py: times MPI_Allreduce (float sum) of 4 KiB
 * and 64 MiB, MPI_Bcast of 4 KiB and MPI_Barrier; rank 0 prints one JSON line. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median over `rounds` of the mean time of `iters` calls: robust to a noisy machine. */
static double allreduce(float *buf, int n, int rounds, int iters) {
    double t[64];
    for (int r = 0; r < rounds; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int i = 0; i < iters; i++) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        t[r] = (MPI_Wtime() - t0) / iters;
    }
    qsort(t, rounds, sizeof(double), cmp);
    return t[rounds / 2];
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int small = 1024, large = 16 << 20; /* floats: 4 KiB, 64 MiB */
    float *s = malloc(small * sizeof(float)), *l = malloc((size_t)large * sizeof(float));
    for (int i = 0; i < small; i++) s[i] = 1.0f;
    for (int i = 0; i < large; i++) l[i] = 1.0f;
    allreduce(s, small, 1, 100); /* warm up */
    allreduce(l, large, 1, 1);
    double t_small = allreduce(s, small, 5, 400);
    double t_large = allreduce(l, large, 21, 1);
    MPI_Barrier(MPI_COMM_WORLD);
    double t = MPI_Wtime();
    for (int i = 0; i < 2000; i++) MPI_Bcast(s, small, MPI_FLOAT, 0, MPI_COMM_WORLD);
    double t_bcast = (MPI_Wtime() - t) / 2000;
    MPI_Barrier(MPI_COMM_WORLD);
    t = MPI_Wtime();
    for (int i = 0; i < 2000; i++) MPI_Barrier(MPI_COMM_WORLD);
    double t_barrier = (MPI_Wtime() - t) / 2000;
    if (rank == 0)
        printf("{\"allreduce_4k\": %g, \"allreduce_64m\": %g, \"bcast_4k\": %g, \"barrier\": %g}\n",
               t_small, t_large, t_bcast, t_barrier);
    MPI_Finalize();
    return 0;
}
