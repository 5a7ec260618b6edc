# Sourced by the build scripts (e2e/controlplane/build.sh, e2e/kind/build.sh, e2e/kind/images.sh):
# reading the version a wrapper module pins, and the Go settings every build uses. The sourcing
# script defines die().

# pinned GO_MOD MODULE: the version GO_MOD requires of MODULE; the go.mod is the one place it is.
pinned() {
  local gomod="$1" module="$2" v
  v="$(sed -n -E "s#^[[:space:]]*(require[[:space:]]+)?${module//./\\.}[[:space:]]+(v[^[:space:]]+).*#\\2#p" "$gomod" | head -n1)"
  [[ -n "$v" ]] || die "$gomod does not require $module; regenerate it (see e2e/README.md)"
  echo "$v"
}

ensure_go() {
  command -v go >/dev/null || die "go is not on PATH; install Go 1.26 or newer and retry"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
  # The committed go.sum files are the pins; a build must never rewrite them.
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
}
