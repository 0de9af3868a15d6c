# Flags for sdpa's own tests, examples and benchmarks (never for the sdpa::sdpa interface).

# sdpa_internal_target(<target>): ISA flags, warnings (-Wundef turns a misspelt SDPA_HAS_*
# macro into an error) and, when SDPA_SANITIZE is set, the sanitizers (less SDPA_SANITIZE_EXCLUDE).
function(sdpa_internal_target target)
  target_link_libraries(${target} PRIVATE sdpa::sdpa)
  if(SDPA_ARCH_FLAGS)
    separate_arguments(arch_flags UNIX_COMMAND "${SDPA_ARCH_FLAGS}")
    target_compile_options(${target} PRIVATE ${arch_flags})
  endif()
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wundef -Werror=undef)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      # GCC 12's AVX-512 intrinsics pass a deliberately undefined register through and then
      # warn about it wherever they are inlined (GCC bug 105593, fixed in GCC 13's headers).
      target_compile_options(${target} PRIVATE -Wno-uninitialized -Wno-maybe-uninitialized)
    endif()
  endif()
  if(SDPA_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${SDPA_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${SDPA_SANITIZE})
    if(SDPA_SANITIZE_EXCLUDE)
      target_compile_options(${target} PRIVATE -fno-sanitize=${SDPA_SANITIZE_EXCLUDE})
    endif()
  endif()
endfunction()

# The kernels, compiled once for all of sdpa's own programs (SDPA_KERNELS_ONCE) with the flags
# above; sdpa_link_kernels(<target>) links them into a program.
if(SDPA_KERNELS_ONCE)
  sdpa_add_kernels(sdpa_kernels)
  sdpa_internal_target(sdpa_kernels)
endif()
function(sdpa_link_kernels target)
  if(SDPA_KERNELS_ONCE)
    target_link_libraries(${target} PRIVATE sdpa_kernels)
  endif()
endfunction()

# How sdpa's tests run a program under mpirun: more ranks than cores (Open MPI's
# --oversubscribe), as root too (Open MPI refuses to start without its two variables), one
# thread per rank.
if(SDPA_WITH_MPI)
  set(SDPA_MPIEXEC_FLAGS ${MPIEXEC_PREFLAGS})
  execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE mpiexec_version ERROR_QUIET)
  if(mpiexec_version MATCHES "Open MPI|OpenRTE")
    list(APPEND SDPA_MPIEXEC_FLAGS --oversubscribe)
  endif()
  set(SDPA_MPI_ENVIRONMENT OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1)
endif()
