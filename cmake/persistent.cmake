# The persistent CUDA kernels' checks that need no GPU (included at the end
# of CMakeLists.txt):
#   persistent_emulation            their step code on the host context
#                                   (tests/cpp/persistent_emulation_test.cpp),
#                                   plain C++, no torch, built whatever
#                                   FUSEDLSTM_CUDA says
#   persistent_racecheck_detects    the same binary with one CTA barrier
#                                   dropped: the shared-memory race check
#                                   must report it
#   persistent_emulation_tsan       the emulation (a few cases of each tier)
#                                   under ThreadSanitizer with random yields
#                                   (when the compiler has it)
#   persistent_tsan_detects[_grid]  ... with the per-step cluster barrier (the
#                                   grid tier's counter wait) dropped:
#                                   ThreadSanitizer must report a race
#   persistent_tier                 the tier selection: which layers, which
#                                   tier and shape, the fallbacks
#                                   (tests/cpp/persistent_tier_test.cpp)
#   persistent_compile_gate         (CUDA builds) every kernel instantiation
#                                   compiled for sm_90: spills, registers,
#                                   shared memory, PTX and SASS instructions
#                                   (tests/cpp/persistent_compile_gate.py)
find_package(Threads REQUIRED)
include(CheckCXXSourceCompiles)

set(PERSISTENT_EMULATION_SOURCE ${CMAKE_CURRENT_LIST_DIR}/../tests/cpp/persistent_emulation_test.cpp)
set(PERSISTENT_INCLUDES ${CMAKE_CURRENT_LIST_DIR}/../csrc ${CMAKE_CURRENT_LIST_DIR}/../csrc/include)

add_executable(persistent_emulation_test ${PERSISTENT_EMULATION_SOURCE})
target_include_directories(persistent_emulation_test PRIVATE ${PERSISTENT_INCLUDES})
target_compile_options(persistent_emulation_test PRIVATE -O2)
target_link_libraries(persistent_emulation_test PRIVATE Threads::Threads)
add_test(NAME persistent_emulation COMMAND persistent_emulation_test)
add_test(NAME persistent_racecheck_detects COMMAND persistent_emulation_test --drop staged)
set_tests_properties(persistent_racecheck_detects PROPERTIES
                     PASS_REGULAR_EXPRESSION "racecheck: read of another thread's write")

add_executable(persistent_tier_test ${CMAKE_CURRENT_LIST_DIR}/../tests/cpp/persistent_tier_test.cpp)
target_include_directories(persistent_tier_test PRIVATE ${PERSISTENT_INCLUDES})
add_test(NAME persistent_tier COMMAND persistent_tier_test)

set(CMAKE_REQUIRED_FLAGS -fsanitize=thread)
set(CMAKE_REQUIRED_LINK_OPTIONS -fsanitize=thread)
check_cxx_source_compiles("int main() { return 0; }" FUSEDLSTM_HAVE_TSAN)
unset(CMAKE_REQUIRED_FLAGS)
unset(CMAKE_REQUIRED_LINK_OPTIONS)
if(FUSEDLSTM_HAVE_TSAN)
  add_executable(persistent_emulation_tsan ${PERSISTENT_EMULATION_SOURCE})
  target_include_directories(persistent_emulation_tsan PRIVATE ${PERSISTENT_INCLUDES})
  target_compile_options(persistent_emulation_tsan PRIVATE -O1 -g -fsanitize=thread)
  target_link_options(persistent_emulation_tsan PRIVATE -fsanitize=thread)
  target_link_libraries(persistent_emulation_tsan PRIVATE Threads::Threads)
  add_test(NAME persistent_emulation_tsan COMMAND persistent_emulation_tsan --quick --yields)
  set_tests_properties(persistent_emulation_tsan PROPERTIES ENVIRONMENT "TSAN_OPTIONS=halt_on_error=1")
  add_test(NAME persistent_tsan_detects COMMAND persistent_emulation_tsan --yields --drop step_end)
  set_tests_properties(persistent_tsan_detects PROPERTIES PASS_REGULAR_EXPRESSION "ThreadSanitizer: data race")
  add_test(NAME persistent_tsan_detects_grid COMMAND persistent_emulation_tsan --yields --drop step_end --grid)
  set_tests_properties(persistent_tsan_detects_grid PROPERTIES PASS_REGULAR_EXPRESSION "ThreadSanitizer: data race")
else()
  message(STATUS "fusedlstm: no -fsanitize=thread: the persistent kernels' ThreadSanitizer tests are left out")
endif()

if(FUSEDLSTM_CUDA)
  add_test(NAME persistent_compile_gate
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/../tests/cpp/persistent_compile_gate.py
                   --nvcc ${CMAKE_CUDA_COMPILER}
                   --source ${CMAKE_CURRENT_LIST_DIR}/../csrc/cuda/persistent_kernels.cu
                   -I ${CMAKE_CURRENT_LIST_DIR}/../csrc -I ${CMAKE_CURRENT_LIST_DIR}/../csrc/include)
endif()
