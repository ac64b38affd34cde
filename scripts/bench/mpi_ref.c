/*
 * mpi_ref.c -- the plain C MPI reference for the cluster rows of make bench
 * (built by scripts/bench/run.lua when mpicc exists). Run on 2 ranks:
 *   mpirun -n 2 mpi_ref pingpong N   messages/s, rank 0 <-> rank 1 round trips
 *   mpirun -n 2 mpi_ref stream N     messages/s, rank 1 -> rank 0, one way
 * Small messages (8 bytes), blocking MPI_Send/MPI_Recv, as a C programmer
 * would write it. Rank 0 prints the rate.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 3 || size != 2) {
        if (rank == 0) fprintf(stderr, "usage: mpirun -n 2 mpi_ref pingpong|stream N\n");
        MPI_Finalize();
        return 2;
    }
    long n = atol(argv[2]);
    int pingpong = strcmp(argv[1], "pingpong") == 0;
    long long v = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (long i = 0; i < n; i++) {
        if (pingpong) {
            if (rank == 0) {
                v = i;
                MPI_Send(&v, 1, MPI_LONG_LONG, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(&v, 1, MPI_LONG_LONG, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(&v, 1, MPI_LONG_LONG, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(&v, 1, MPI_LONG_LONG, 0, 0, MPI_COMM_WORLD);
            }
        } else if (rank == 1) {
            v = i;
            MPI_Send(&v, 1, MPI_LONG_LONG, 0, 0, MPI_COMM_WORLD);
        } else {
            MPI_Recv(&v, 1, MPI_LONG_LONG, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double dt = MPI_Wtime() - t0;
    /* a round trip is two messages */
    if (rank == 0) printf("%.6g\n", (pingpong ? 2.0 : 1.0) * (double)n / dt);
    MPI_Finalize();
    return 0;
}
