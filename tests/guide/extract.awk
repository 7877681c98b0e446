# tests/guide/extract.awk: the programs of docs/guide.md, for the Meson build
# (CMakeLists.txt in this folder applies the same rules in CMake).
#
#   awk -f extract.awk docs/guide.md               the program names, one a line
#   awk -v name=NAME -f extract.awk docs/guide.md  that program, after a #line
#
# A program is a ```cpp block with "<!-- snippet: NAME -->" on the line
# before it; "<!-- not compiled -->" there marks a block that is not one.
# Any other ```cpp block, a name used twice, or a NAME not found fails with
# the file and line, so no code in the guide goes untested by accident.

function fail(message) {
  print FILENAME ":" NR ": " message > "/dev/stderr"
  failed = 1
  exit 1
}

in_block {
  if ($0 == "```") {
    in_block = 0
    next
  }
  if (current != "" && current == name) print
  next
}

$0 == "```cpp" {
  marker = previous
  gsub(/^[ \t]+|[ \t\r]+$/, "", marker)
  current = ""
  if (marker ~ /^<!-- snippet: [a-z0-9_]+ -->$/) {
    current = marker
    sub(/^<!-- snippet: /, "", current)
    sub(/ -->$/, "", current)
    if (seen[current]++) fail("a second snippet named " current)
    if (name == "") print current
    if (current == name) {
      printf "#line %d \"%s\"\n", NR + 1, FILENAME
      found = 1
    }
  } else if (marker != "<!-- not compiled -->") {
    fail("a ```cpp block needs <!-- snippet: NAME --> (NAME: a-z, 0-9, _) or <!-- not compiled --> on the line before it")
  }
  in_block = 1
  next
}

{ previous = $0 }

END {
  if (failed) exit 1
  if (in_block) {
    print FILENAME ": a ```cpp block is never closed" > "/dev/stderr"
    exit 1
  }
  if (name != "" && !found) {
    print FILENAME ": no snippet named " name > "/dev/stderr"
    exit 1
  }
}
