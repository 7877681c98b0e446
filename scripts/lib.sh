# scripts/lib.sh: sourced by the other scripts. Installs missing Debian
# packages when it can (root, or sudo without a password) and otherwise says
# exactly what to install and exits non-zero.

# ensure_packages PACKAGE...
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "prefork needs these Debian packages: ${missing[*]}" >&2
      echo "install them with:  sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "installing ${missing[*]} ..." >&2
  # An update first: a fresh machine's package lists may be empty or stale.
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || {
    echo "apt-get install ${missing[*]} failed" >&2
    exit 1
  }
}

# The packages every build needs. liburing-dev gives prefork-httpd its
# io_uring mode (-m uring); without it the binary still builds and that mode
# falls back to evented at start.
BUILD_PACKAGES=(g++ cmake ninja-build meson pkg-config catch2 doctest-dev liburing-dev)
