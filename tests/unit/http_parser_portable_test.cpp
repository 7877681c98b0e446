// The whole request-parser suite (http_parser_test.cpp) again, with the
// parser built on the portable scans (HTTPD_SCAN_PORTABLE): the path of
// non-x86 builds, tested on every machine.
#define HTTPD_SCAN_PORTABLE 1
#include "http_parser_test.cpp"  // NOLINT(bugprone-suspicious-include)
