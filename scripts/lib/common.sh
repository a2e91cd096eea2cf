# shellcheck shell=bash
# Helpers shared by scripts/test, scripts/bench and .ci/run.

# The repository root (the directory holding the workspace Cargo.toml).
repo_root() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}

# Makes sure node_modules holds anvil (from package.json / package-lock.json) and prints its absolute path.
ensure_anvil() {
    local root=$1
    local anvil="$root/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    # The contract artifacts (ERC-20 and Safe tests) come from the same package.json: a node_modules made
    # before they were added lacks them.
    if [[ ! -x "$anvil" || ! -d "$root/node_modules/@openzeppelin/contracts" \
        || ! -d "$root/node_modules/@safe-global/safe-contracts" ]]; then
        echo "setup: installing npm test tools (anvil, contract artifacts) into $root/node_modules" >&2
        # Not `npm ci`: it refuses the lock file npm 11 writes (other platforms' optional packages absent).
        (cd "$root" && npm install --no-audit --no-fund >&2)
    fi
    if [[ ! -x "$anvil" ]]; then
        echo "setup: anvil not found at $anvil after npm install" >&2
        return 1
    fi
    echo "$anvil"
}
