// tests/catch.hpp - the one place that knows which Catch2 is installed.
//
// Debian 12 ships Catch2 v2.13 (one header), newer systems v3 (split headers). The tests use
// only what both share: TEST_CASE, SECTION, GENERATE, REQUIRE/CHECK, INFO, CAPTURE,
// REQUIRE_THROWS_AS.
#pragma once

#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#define SDPA_CATCH_VERSION 3
#else
#include <catch2/catch.hpp>
#define SDPA_CATCH_VERSION 2
#endif
