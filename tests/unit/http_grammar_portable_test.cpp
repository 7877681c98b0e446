// The grammar suite (http_grammar_test.cpp) again, with the parser built on
// the portable scans (HTTPD_SCAN_PORTABLE).
#define HTTPD_SCAN_PORTABLE 1
#include "http_grammar_test.cpp"  // NOLINT(bugprone-suspicious-include)
