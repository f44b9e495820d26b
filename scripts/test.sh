#!/usr/bin/env bash
# The project's test command: formatting, lints, build, then every test of the workspace
# (unit tests and the end-to-end tests in tests/, which need the binaries built first).
set -euo pipefail

cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# The end-to-end tests start the local IdP (tests/idp), which needs its node modules.
if [ ! -d tests/idp/node_modules/oidc-provider ]; then
    step "npm ci --prefix tests/idp"
    npm ci --prefix tests/idp --no-audit --no-fund
fi

# The authorization-code login tests drive headless Chromium through tests/browser.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    step "npm ci --prefix tests/browser"
    npm ci --prefix tests/browser --no-audit --no-fund
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Licenses, banned/duplicate crates and sources (deny.toml). Not `advisories`: its database
# is on GitHub, which these machines cannot reach (see deny.toml). .ci/run installs
# cargo-deny; a developer machine without it skips the step.
if cargo deny --version >/dev/null 2>&1; then
    step "cargo deny check licenses bans sources"
    cargo deny --locked check licenses bans sources
else
    step "cargo deny not installed: skipping (cargo install --locked cargo-deny)"
fi

# The end-to-end tests run the binaries from target/<profile>/, and `cargo test` alone
# does not build the binaries of other packages. --all-targets, not --bins: it resolves
# features as the test build does (dev-dependencies included), so the test build below
# reuses every crate instead of compiling half the tree a second time.
step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace"
    cargo nextest run --workspace "$@"
else
    step "cargo test --workspace (cargo-nextest not installed)"
    cargo test --workspace "$@"
fi
