// tests/mpi/main.cpp - the MPI tests' runner: MPI_Init, one seed for every rank (rank 0's,
// broadcast), the test cases in declaration order on every rank, and a failure on any rank
// failing all of them. (A file of its own, compiled at -O1: Catch2's implementation is most of
// its compile time, and its speed does not matter.)
#if __has_include(<catch2/catch_session.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include "../support.hpp"

#include <mpi.h>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char* argv[]) {
  MPI_Init(&argc, &argv);
  std::uint64_t seed = 0;
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == 0) {
    seed = sdpa_test::seed_from_environment();
    std::printf("sdpa MPI tests on %d ranks: random seed %llu (rerun with SDPA_TEST_SEED=%llu)\n", size,
                (unsigned long long)seed, (unsigned long long)seed);
  }
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  sdpa_test::set_seed(seed);
  std::vector<char*> args(argv, argv + argc);
  std::string order = "--order", decl = "decl";  // the same test cases in the same order on every rank
  args.push_back(order.data());
  args.push_back(decl.data());
  int failed = Catch::Session().run(int(args.size()), args.data());
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed ? 1 : 0;
}
