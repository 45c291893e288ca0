// Fault injection for smelt's own tests (docs/reliability.md, "how the promises are tested").
// Each named point of a merge calls reached(point), which costs one comparison unless armed from
// the environment:
// - SMELT_TEST_CRASH_AT=<point>: the process kills itself with SIGKILL there, as a power cut or
//   `kill -9` would;
// - SMELT_TEST_PAUSE_AT=<point> and SMELT_TEST_PAUSE_FILE=<file>: the first time the point is
//   reached, the process creates <file> and waits (at most 120 s) until the test deletes it, so
//   the test can act "during the merge" (modify an input, start a second merge, send a signal).
// Points: "first-chunk" (a tensor chunk written), "before-publish" (every file of the output
// complete under its temporary name), "after-swap" (--overwrite: the new folder in place, the
// old one not yet deleted).
#pragma once

#include <string_view>

namespace smelt::test_hooks {

void reached(std::string_view point);

}  // namespace smelt::test_hooks
