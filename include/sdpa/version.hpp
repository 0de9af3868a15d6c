// sdpa/version.hpp
/// \file
/// The library's version, as macros.
#pragma once

/// Major version of sdpa (CMake reads the project version from these three lines).
#define SDPA_VERSION_MAJOR 0
/// Minor version of sdpa.
#define SDPA_VERSION_MINOR 1
/// Patch version of sdpa.
#define SDPA_VERSION_PATCH 0
