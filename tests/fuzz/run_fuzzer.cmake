# cmake -DFUZZER=<exe> -DCORPUS=<seed dir> -DWORK=<scratch dir> -DARTIFACTS=<dir> -DSECONDS=<n> -P run_fuzzer.cmake
#
# Fuzzes for SECONDS on a scratch copy of the seed corpus (libFuzzer writes new inputs into its
# corpus directory; the repository's seeds stay as they are), and fails on any finding.
foreach(variable FUZZER CORPUS WORK ARTIFACTS SECONDS)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "run_fuzzer.cmake needs -D${variable}=...")
  endif()
endforeach()

file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK} ${ARTIFACTS})
file(GLOB seeds ${CORPUS}/*)
file(COPY ${seeds} DESTINATION ${WORK})

execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
          -artifact_prefix=${ARTIFACTS}/ ${WORK}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "fuzz_attention found something (exit ${result}); the input is in ${ARTIFACTS}/")
endif()
