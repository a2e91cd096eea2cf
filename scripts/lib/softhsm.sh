# shellcheck shell=bash
# SoftHSM2 for the PKCS#11 tests (crates/kinko-signer/tests/pkcs11_*.rs). Each test makes its own
# SOFTHSM2_CONF and token directory; this only says where the module is and that it is required.

SOFTHSM_MODULE_DEFAULT=/usr/lib/softhsm/libsofthsm2.so

# Exports KINKO_SOFTHSM_MODULE (unless already set) and KINKO_TEST_REQUIRE_SOFTHSM=1, so a machine
# without SoftHSM2 fails the PKCS#11 tests instead of skipping them.
softhsm_env() {
    export KINKO_SOFTHSM_MODULE=${KINKO_SOFTHSM_MODULE:-$SOFTHSM_MODULE_DEFAULT}
    export KINKO_TEST_REQUIRE_SOFTHSM=1
    if [[ ! -f "$KINKO_SOFTHSM_MODULE" ]]; then
        echo "setup: SoftHSM2 module not found at $KINKO_SOFTHSM_MODULE (apt-get install -y softhsm2); the PKCS#11 tests will fail" >&2
    fi
}
