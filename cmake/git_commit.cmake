# Writes OUT, a header defining TLSPLANE_GIT_COMMIT: the commit of the git
# checkout at SRC (12 hex digits, "-modified" when tracked files differ
# from it), or "unknown" when SRC is not the top of a git checkout (a
# release tarball, even one unpacked inside another repository) or GIT is
# not found. Run at every build (common/CMakeLists.txt); OUT is rewritten
# only when it changes, so that nothing is rebuilt for nothing.
set(commit "unknown")
if(GIT)
  execute_process(COMMAND ${GIT} -C ${SRC} rev-parse --show-toplevel
                  OUTPUT_VARIABLE top RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE
                  ERROR_QUIET)
  if(rc EQUAL 0)
    file(REAL_PATH "${top}" top)
    file(REAL_PATH "${SRC}" src)
  endif()
  if(rc EQUAL 0 AND top STREQUAL src)
    execute_process(COMMAND ${GIT} -C ${SRC} rev-parse --short=12 HEAD
                    OUTPUT_VARIABLE head RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE
                    ERROR_QUIET)
    if(rc EQUAL 0 AND NOT head STREQUAL "")
      set(commit "${head}")
      # git diff compares without writing the index (git status may).
      execute_process(COMMAND ${GIT} -C ${SRC} diff --quiet HEAD -- RESULT_VARIABLE dirty
                      OUTPUT_QUIET ERROR_QUIET)
      if(dirty EQUAL 1)
        set(commit "${commit}-modified")
      endif()
    endif()
  endif()
endif()
set(text "/* Made by cmake/git_commit.cmake at build time. */\n#define TLSPLANE_GIT_COMMIT \"${commit}\"\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
